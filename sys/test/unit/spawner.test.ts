import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { ExecRunner, SpawnerRunner, type CommandRunner } from '../../runner.js';

/**
 * The spawner helper must behave exactly like Node's spawn (ExecRunner): same results, same errors,
 * for every case the daemon meets. Real processes, no root needed.
 */

t.test('the helper binary is built', async (t) => {
  t.ok(SpawnerRunner.available(), 'dist/sys/netd-spawner exists (npm run build)');
});

const cases: Array<{ name: string; cmd: Parameters<CommandRunner['run']>[0] }> = [
  { name: 'stdout', cmd: { argv: ['echo', 'hello', 'world'] } },
  { name: 'stdin to stdout', cmd: { argv: ['cat'], stdin: 'line 1\nline 2\n' } },
  { name: 'extra env and LC_ALL', cmd: { argv: ['sh', '-c', 'echo "$FOO $LC_ALL"'], env: { FOO: 'bar' } } },
  { name: 'stderr and exit code', cmd: { argv: ['sh', '-c', 'echo oops >&2; echo partial; exit 3'] } },
  { name: 'killed by a signal', cmd: { argv: ['sh', '-c', 'kill -TERM $$'] } },
  { name: 'a tool that ignores its stdin', cmd: { argv: ['true'], stdin: 'x'.repeat(300_000) } },
];

async function outcome(r: CommandRunner, cmd: Parameters<CommandRunner['run']>[0]): Promise<unknown> {
  try {
    return { ok: await r.run(cmd) };
  } catch (err) {
    const e = err as { code?: string; exitCode?: number | null; stderr?: string; stdout?: string; message?: string };
    return { code: e.code, exitCode: e.exitCode, stderr: e.stderr, stdout: e.stdout, message: e.message };
  }
}

t.test('same results and errors as ExecRunner', async (t) => {
  const spawner = new SpawnerRunner();
  t.teardown(() => spawner.close());
  const exec = new ExecRunner();
  for (const c of cases) t.same(await outcome(spawner, c.cmd), await outcome(exec, c.cmd), c.name);
  t.match(
    await outcome(spawner, { argv: ['sh', '-c', 'echo "$FOO"'], env: { FOO: 'bar' } }),
    { ok: { stdout: 'bar\n' } },
    'env reaches the child',
  );
});

t.test('large input and output pass through whole', async (t) => {
  const spawner = new SpawnerRunner();
  t.teardown(() => spawner.close());
  const big = 'abcdefghij'.repeat(500_000);
  const { stdout } = await spawner.run({ argv: ['cat'], stdin: big });
  t.equal(stdout.length, big.length);
  t.equal(stdout, big);
});

t.test('missing program, timeout, abort', async (t) => {
  const spawner = new SpawnerRunner();
  t.teardown(() => spawner.close());
  await t.rejects(spawner.run({ argv: ['no-such-tool-xyz'] }), { code: ErrorCodes.UNSUPPORTED });
  const started = Date.now();
  await t.rejects(spawner.run({ argv: ['sleep', '10'], timeoutMs: 200 }), { code: ErrorCodes.COMMAND_TIMEOUT });
  t.ok(Date.now() - started < 3_000, 'killed at its timeout');
  const ac = new AbortController();
  const run = spawner.run({ argv: ['sleep', '10'] }, ac.signal);
  setTimeout(() => ac.abort(), 100);
  await t.rejects(run, { code: ErrorCodes.ABORTED });
  ac.abort();
  await t.rejects(
    spawner.run({ argv: ['true'] }, ac.signal),
    { code: ErrorCodes.ABORTED },
    'an aborted signal never starts',
  );
});

t.test('many at once, each gets its own answer', async (t) => {
  const spawner = new SpawnerRunner();
  t.teardown(() => spawner.close());
  const results = await Promise.all(
    Array.from({ length: 300 }, (_, i) =>
      spawner.run({ argv: ['sh', '-c', `echo ${i}; exit ${i % 2}`] }).then(
        (r) => r.stdout.trim(),
        (e: { exitCode: number; stdout: string }) => `fail ${e.exitCode} ${e.stdout.trim()}`,
      ),
    ),
  );
  t.same(
    results,
    Array.from({ length: 300 }, (_, i) => (i % 2 ? `fail 1 ${i}` : String(i))),
  );
});

t.test('a helper that dies fails what it ran, and the next command starts a new one', async (t) => {
  const spawner = new SpawnerRunner();
  t.teardown(() => spawner.close());
  const slow = spawner.run({ argv: ['sleep', '5'] });
  const pid = (spawner as unknown as { helper: { pid: number } }).helper.pid;
  process.kill(pid, 'SIGKILL');
  await t.rejects(slow, { code: ErrorCodes.COMMAND_FAILED });
  t.same(await spawner.run({ argv: ['echo', 'again'] }), { stdout: 'again\n', stderr: '' });
});
