import t from 'tap';
import { mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ExecRunner, CommandError, classifyFailure, resolveArgv, isCommandError } from '../../runner.js';
import { FakeRunner } from '../../fake-runner.js';
import { startDaemon, stopDaemon, isRunning, processStartTime } from '../../process.js';
import { ErrorCodes, isAppError } from '../../../core/errors.js';

const runner = new ExecRunner();

t.test('netns targeting rewrites argv the same way for real and fake runners', async (t) => {
  t.same(resolveArgv({ argv: ['ip', 'link', 'show'] }), ['ip', 'link', 'show']);
  t.same(resolveArgv({ argv: ['ip', '-j', 'link'], netns: { name: 'h1' } }), ['ip', '-n', 'h1', '-j', 'link']);
  t.same(resolveArgv({ argv: ['tc', 'qdisc'], netns: { name: 'h1' } }), ['tc', '-n', 'h1', 'qdisc']);
  t.same(resolveArgv({ argv: ['nft', 'list', 'tables'], netns: { name: 'h1' } }), [
    'nsenter',
    '--net=/run/netns/h1',
    '--',
    'nft',
    'list',
    'tables',
  ]);
  t.same(resolveArgv({ argv: ['ip', 'addr'], netns: { path: '/proc/42/ns/net' } }), [
    'nsenter',
    '--net=/proc/42/ns/net',
    '--',
    'ip',
    'addr',
  ]);
  t.same(
    resolveArgv({ argv: ['ip', 'addr'], netns: { path: '/run/netns/netns-1a2b' } }),
    ['ip', '-n', 'netns-1a2b', 'addr'],
    'a named netns path is a name',
  );
  t.same(resolveArgv({ argv: ['ip', 'addr'], netns: { path: '/var/run/netns/c1' } }), ['ip', '-n', 'c1', 'addr']);
  t.same(
    resolveArgv({ argv: ['ip', 'addr'], netns: { path: '/run/netns/..' } }),
    ['nsenter', '--net=/run/netns/..', '--', 'ip', 'addr'],
    'no dot names',
  );
  t.same(resolveArgv({ argv: ['nft', 'list'], netns: { path: '/run/netns/c1' } }), [
    'nsenter',
    '--net=/run/netns/c1',
    '--',
    'nft',
    'list',
  ]);
  t.throws(() => resolveArgv({ argv: [] }), { code: ErrorCodes.INTERNAL });
  const fake = new FakeRunner();
  await fake.run({ argv: ['bridge', 'fdb', 'show'], netns: { name: 'x' } });
  t.same(fake.commandLines(), ['bridge -n x fdb show']);
});

t.test('stdout, stdin and LC_ALL=C reach the process', async (t) => {
  const { stdout } = await runner.run({ argv: ['cat'], stdin: 'hello\nworld\n' });
  t.equal(stdout, 'hello\nworld\n');
  const env = await runner.run({ argv: ['sh', '-c', 'echo $LC_ALL'] });
  t.equal(env.stdout.trim(), 'C');
});

t.test('a failing command surfaces argv, exit code and stderr in a typed error', async (t) => {
  const err = await runner
    .run({ argv: ['sh', '-c', 'echo "RTNETLINK answers: File exists" >&2; exit 2'] })
    .catch((e: unknown) => e);
  t.ok(err instanceof CommandError);
  const e = err as CommandError;
  t.equal(e.code, ErrorCodes.COMMAND_FAILED);
  t.equal(e.exitCode, 2);
  t.same(e.argv, ['sh', '-c', 'echo "RTNETLINK answers: File exists" >&2; exit 2']);
  t.match(e.stderr, /File exists/);
  t.equal(e.kind, 'exists');
  t.match(e.message, /exited 2: RTNETLINK answers: File exists/);
});

t.test('timeouts kill the process and say so', async (t) => {
  const start = Date.now();
  const err = await runner.run({ argv: ['sleep', '10'], timeoutMs: 200 }).catch((e: unknown) => e);
  t.ok(isAppError(err, ErrorCodes.COMMAND_TIMEOUT), 'E_COMMAND_TIMEOUT');
  t.ok(Date.now() - start < 5000, 'killed promptly');
});

t.test('abort signals kill the process', async (t) => {
  const ac = new AbortController();
  const p = runner.run({ argv: ['sleep', '10'] }, ac.signal);
  setTimeout(() => ac.abort(), 100);
  const err = await p.catch((e: unknown) => e);
  t.ok(isAppError(err, ErrorCodes.ABORTED));
});

t.test('a missing tool is E_UNSUPPORTED, not a crash', async (t) => {
  const err = await runner.run({ argv: ['definitely-not-a-tool-xyz'] }).catch((e: unknown) => e);
  t.ok(isAppError(err, ErrorCodes.UNSUPPORTED));
  t.match((err as Error).message, /definitely-not-a-tool-xyz is not installed/);
});

t.test('stderr classification lets callers be idempotent', async (t) => {
  t.equal(classifyFailure('Cannot find device "veth9"'), 'not-found');
  t.equal(classifyFailure('RTNETLINK answers: No such process'), 'not-found');
  t.equal(classifyFailure('Error: Could not process rule: No such file or directory'), 'not-found');
  t.equal(classifyFailure('RTNETLINK answers: File exists'), 'exists');
  t.equal(classifyFailure('Error: Unknown device type.'), 'unsupported');
  t.equal(classifyFailure('volume create: v: failed: Another transaction is in progress for v'), 'busy');
  t.equal(classifyFailure('something else entirely'), 'other');
  const fake = new FakeRunner().failOn(['ip', 'link', 'del'], 'Cannot find device "x"', 1);
  const err = await fake.run({ argv: ['ip', 'link', 'del', 'x'] }).catch((e: unknown) => e);
  t.ok(isCommandError(err, 'not-found'));
});

t.test('daemons are started, identified by pid and start time, and stopped', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'proc-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'log');
  const h = startDaemon({ argv: ['sh', '-c', 'echo started; exec sleep 30'], logFile: log });
  t.ok(isRunning(h));
  while (!readFileSync(log, 'utf8').includes('started')) await new Promise((r) => setTimeout(r, 10));
  t.equal(processStartTime(h.pid), h.startTime);
  t.notOk(isRunning({ pid: h.pid, startTime: '1' }), 'same pid, other start time: not ours');
  await stopDaemon(h, 2000);
  t.notOk(isRunning(h));
  const exit = await h.exited;
  t.equal(exit.signal, 'SIGTERM');
  await stopDaemon(h); // twice is fine
});
