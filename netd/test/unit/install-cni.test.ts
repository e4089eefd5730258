import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installNetdPlugin, patchSocketDir, PLUGIN_BINARY } from '../../install-cni.js';
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
