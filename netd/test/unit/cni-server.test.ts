import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startCniServer } from '../../cni/server.js';
import { silentLogger } from '../../../sys/log.js';

/** Sends one request over the wire format and returns the reply's status line and body. */
function ask(path: string, request: string): Promise<{ status: string; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(path, () => sock.end(request));
    let reply = '';
    sock.on('data', (d: Buffer) => (reply += d.toString()));
    sock.on('error', reject);
    sock.on('end', () => {
      const nl = reply.indexOf('\n');
      resolve({ status: reply.slice(0, nl), body: JSON.parse(reply.slice(nl + 1)) as Record<string, unknown> });
    });
  });
}

t.test("the server's own error answers carry the request's cniVersion", async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netd-cni-server-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'net-test.sock');
  const server = await startCniServer({
    path,
    logger: silentLogger(),
    handle: (env) =>
      env.CNI_COMMAND === 'CRASH'
        ? Promise.reject(new Error('boom'))
        : Promise.resolve({ exitCode: 0, stdout: '{"ok":true}\n' }),
  });
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));

  t.same(await ask(path, 'CNI_COMMAND=ADD\n\n{"cniVersion":"1.0.0"}'), { status: '0', body: { ok: true } });
  t.same(
    await ask(path, 'CNI_COMMAND=CRASH\n\n{"name":"n", "cniVersion": "0.4.0"}'),
    { status: '1', body: { cniVersion: '0.4.0', code: 999, msg: 'netd internal error' } },
    'a handler crash answers 999 in the request version',
  );
  const big = `CNI_COMMAND=ADD\n\n{"cniVersion":"1.0.0","pad":"${'x'.repeat(1100 * 1024)}"}`;
  t.match(
    await ask(path, big),
    { status: '1', body: { cniVersion: '1.0.0', code: 6, msg: /request over/ } },
    'an oversized request answers 6 (decode failure) in its version',
  );
  t.match(
    await ask(path, `CNI_COMMAND=ADD\n\n${'x'.repeat(1100 * 1024)}`),
    { status: '1', body: { cniVersion: '1.1.0', code: 6 } },
    'without a readable version, 1.1.0',
  );
});
