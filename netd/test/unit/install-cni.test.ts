import t from 'tap';
import { linkSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installNetdPlugin, patchSocketDir, PLUGIN_BINARY } from '../../install-cni.js';
import { ownSocketPath } from '../../cni/server.js';
import { ExecRunner, isCommandError } from '../../../sys/runner.js';
import { ErrorCodes } from '../../../core/errors.js';

const MARKER = '@@NETD_SOCKET_DIR@@';

t.test('the socket directory is patched into the fixed-size field after the marker', async (t) => {
  const bin = Buffer.concat([
    Buffer.from('head'),
    Buffer.from(MARKER + '/run/netd'),
    Buffer.alloc(256 - MARKER.length - 9),
    Buffer.from('tail'),
  ]);
  const out = patchSocketDir(bin, '/tmp/x/sock');
  t.equal(out.length, bin.length, 'same size');
  const at = out.indexOf(MARKER) + MARKER.length;
  t.equal(out.subarray(at, at + 12).toString(), '/tmp/x/sock\0');
  t.ok(
    out.subarray(at + 11, at + 256 - MARKER.length).every((b) => b === 0),
    'the rest of the old path is zeroed',
  );
  t.equal(out.subarray(out.length - 4).toString(), 'tail', 'nothing after the field moves');
  t.throws(() => patchSocketDir(bin, 'relative/dir'), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => patchSocketDir(bin, '/' + 'x'.repeat(300)), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => patchSocketDir(Buffer.from('no marker'), '/run/netd'), { code: ErrorCodes.INTERNAL });
});

t.test('the built plugin: VERSION without a daemon, code 11 when no daemon listens', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netd-plugin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const plugin = installNetdPlugin(join(dir, 'bin'), join(dir, 'sock'));
  t.equal(statSync(plugin).mode & 0o777, 0o755);
  t.ok(readFileSync(plugin).includes(Buffer.from(MARKER + join(dir, 'sock'))), 'installed copy carries the socket dir');
  t.notOk(readFileSync(PLUGIN_BINARY).includes(Buffer.from(join(dir, 'sock'))), 'the source binary is left alone');
  const runner = new ExecRunner();
  const version = await runner.run({
    argv: [plugin],
    env: { CNI_COMMAND: 'VERSION' },
    stdin: '{"cniVersion":"1.1.0"}',
  });
  t.same(JSON.parse(version.stdout).supportedVersions, ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0']);
  const add = await runner
    .run({
      argv: [plugin],
      env: { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c', CNI_NETNS: '/x', CNI_IFNAME: 'eth0' },
      stdin: '{}',
    })
    .then(
      () => undefined,
      (err: unknown) => (isCommandError(err) ? err : undefined),
    );
  t.equal(add?.exitCode, 1, 'non-zero exit');
  t.match(
    JSON.parse(add?.stdout || '{}'),
    { code: 11, msg: /not running/ },
    'a spec error with code 11 (try again later)',
  );
});

t.test(
  "the built plugin without a daemon: STATUS answers 50, other verbs 11, each in the request's cniVersion",
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'netd-plugin-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const socketDir = join(dir, 'sock');
    const plugin = installNetdPlugin(join(dir, 'bin'), socketDir);
    const runner = new ExecRunner();
    const call = async (command: string, stdin: string) => {
      const err = await runner
        .run({
          argv: [plugin],
          env: { CNI_COMMAND: command, CNI_CONTAINERID: 'c', CNI_NETNS: '/x', CNI_IFNAME: 'eth0' },
          stdin,
        })
        .then(
          () => undefined,
          (e: unknown) => (isCommandError(e) ? e : Promise.reject(e)),
        );
      t.equal(err?.exitCode, 1, `${command}: non-zero exit`);
      return JSON.parse(err?.stdout || '{}') as { cniVersion?: string; code?: number; msg?: string };
    };
    const expectations = async (why: string) => {
      t.match(
        await call('STATUS', '{"cniVersion":"1.1.0","name":"n","type":"netd"}'),
        { cniVersion: '1.1.0', code: 50, msg: /not running/ },
        `${why}: STATUS answers 50 (plugin not available)`,
      );
      t.match(
        await call('ADD', '{\n  "name": "n",\n  "cniVersion" :\t"1.0.0",\n  "type": "netd"\n}'),
        { cniVersion: '1.0.0', code: 11 },
        `${why}: ADD answers 11 (try again later) in its version`,
      );
      t.match(
        await call('DEL', '{"prevResult":{"cniVersion":"0.3.1"},"cniVersion":"0.4.0"}'),
        { cniVersion: '0.4.0', code: 11 },
        `${why}: the top-level version counts, not prevResult's`,
      );
      t.match(
        await call('ADD', '{"cniVersion":"1.0.0","pad":"' + 'x'.repeat(2 * 1024 * 1024) + '"}'),
        { cniVersion: '1.0.0', code: 11 },
        `${why}: an oversized request answers in its version`,
      );
      t.match(await call('ADD', '{oops'), { cniVersion: '1.1.0', code: 11 }, `${why}: no version: 1.1.0`);
      t.match(
        await call('STATUS', '{"cniVersion":"1.1.0\\"; x"}'),
        { cniVersion: '1.1.0', code: 50 },
        `${why}: an unreadable version is not echoed`,
      );
    };
    await expectations('no socket');

    // A socket file nobody listens on (what a SIGKILLed daemon leaves): connection refused.
    const path = ownSocketPath(socketDir);
    mkdirSync(socketDir, { recursive: true });
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(path, resolve));
    linkSync(path, `${path}.kept`);
    await new Promise<void>((resolve) => server.close(() => resolve())); // unlinks `path`
    renameSync(`${path}.kept`, path);
    await expectations('connection refused');
  },
);
