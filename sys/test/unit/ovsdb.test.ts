import t from 'tap';
import { createServer, type Socket } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OvsdbClient } from '../../ovsdb.js';

/**
 * OvsdbClient against a small stand-in of ovsdb-server on a Unix socket: it answers `transact`
 * from a script, splits its answers at awkward places (messages are JSON objects back to back),
 * and sends an echo, which the client must answer.
 */
async function fakeServer(
  t: { teardown(fn: () => unknown): void },
  answer: (ops: Array<Record<string, unknown>>) => unknown[],
) {
  const dir = mkdtempSync(join(tmpdir(), 'ovsdb-'));
  const path = join(dir, 'db.sock');
  const seen: Array<Array<Record<string, unknown>>> = [];
  const echoes: unknown[] = [];
  const sockets: Socket[] = [];
  const server = createServer((s) => {
    sockets.push(s);
    s.setEncoding('utf8');
    // The server's keep-alive first: the client must answer it.
    s.write(JSON.stringify({ method: 'echo', params: ['ping'], id: 'echo' }));
    let buf = '';
    s.on('data', (chunk: string) => {
      buf += chunk;
      // One request per write from the client: parse whole objects.
      for (;;) {
        let depth = 0;
        let end = -1;
        for (let i = 0; i < buf.length; i++) {
          if (buf[i] === '{') depth++;
          else if (buf[i] === '}' && --depth === 0) {
            end = i;
            break;
          }
        }
        if (end < 0) return;
        const msg = JSON.parse(buf.slice(0, end + 1)) as {
          id: unknown;
          method?: string;
          params?: unknown[];
          result?: unknown;
        };
        buf = buf.slice(end + 1);
        if (msg.id === 'echo') {
          echoes.push(msg.result);
          continue;
        }
        const ops = (msg.params ?? []).slice(1) as Array<Record<string, unknown>>;
        seen.push(ops);
        const reply = JSON.stringify({ id: msg.id, result: answer(ops), error: null });
        // Split the answer in two writes, mid-string, to exercise the framing.
        const cut = Math.floor(reply.length / 2);
        s.write(reply.slice(0, cut));
        setImmediate(() => s.write(reply.slice(cut)));
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });
  return { path, seen, echoes };
}

t.test('bridgePorts: the bridge’s ports with their tags; a trunk has none', async (t) => {
  const srv = await fakeServer(t, (ops) =>
    ops[0]!.table === 'Bridge'
      ? [
          {
            rows: [
              {
                ports: [
                  'set',
                  [
                    ['uuid', 'u1'],
                    ['uuid', 'u2'],
                  ],
                ],
              },
            ],
          },
          {
            rows: [
              { _uuid: ['uuid', 'u1'], name: 'ni0a', tag: 101 },
              { _uuid: ['uuid', 'u2'], name: 'trunk', tag: ['set', []] },
              { _uuid: ['uuid', 'u3'], name: 'elsewhere', tag: 5 },
            ],
          },
        ]
      : [],
  );
  const db = new OvsdbClient(srv.path);
  t.teardown(() => db.close());
  t.same(
    [...(await db.bridgePorts('br-netd'))],
    [
      ['ni0a', 101],
      ['trunk', undefined],
    ],
    "another bridge's port is not listed",
  );
  t.same(srv.echoes, [['ping']], 'the echo was answered');
});

t.test('setAccessPort: inserts interface and port, bumps next_cfg and waits for cur_cfg', async (t) => {
  let curCfg = 4;
  const srv = await fakeServer(t, (ops) => {
    if (ops.length === 1 && ops[0]!.table === 'Port') return [{ rows: [] }]; // not there yet
    if (ops.length === 1 && ops[0]!.table === 'Open_vSwitch') {
      curCfg++; // ovs-vswitchd catches up one step per look
      return [{ rows: [{ cur_cfg: curCfg }] }];
    }
    return [...ops.slice(0, -1).map(() => ({})), { rows: [{ next_cfg: 7 }] }];
  });
  const db = new OvsdbClient(srv.path);
  t.teardown(() => db.close());
  await db.setAccessPort('br-netd', 'ni0a', 101, { wait: true });
  const commit = srv.seen[1]!;
  t.same(
    commit.map((o) => [o.op, o.table]),
    [
      ['insert', 'Interface'],
      ['insert', 'Port'],
      ['mutate', 'Bridge'],
      ['mutate', 'Open_vSwitch'],
      ['select', 'Open_vSwitch'],
    ],
  );
  t.same((commit[1]!.row as Record<string, unknown>).tag, 101);
  t.equal(curCfg, 7, 'it waited until cur_cfg reached the new next_cfg');
  await t.rejects(db.setAccessPort('br-netd', 'bad name;', 1, { wait: false }), { code: 'E_INVALID_INPUT' });
  await t.rejects(db.setAccessPort('br-netd', 'ni0a', 4095, { wait: false }), { code: 'E_INVALID_INPUT' });
});

t.test('an operation error rejects with its reason; a missing server is E_COMMAND_FAILED', async (t) => {
  const srv = await fakeServer(t, () => [{ error: 'constraint violation', details: 'duplicate name' }]);
  const db = new OvsdbClient(srv.path);
  t.teardown(() => db.close());
  await t.rejects(db.change('br-netd', { tags: new Map([['ni0a', 5]]) }), {
    code: 'E_COMMAND_FAILED',
    message: /constraint violation: duplicate name/,
  });
  await t.rejects(new OvsdbClient('/nonexistent/db.sock').bridgePorts('br-netd'), { code: 'E_COMMAND_FAILED' });
});
