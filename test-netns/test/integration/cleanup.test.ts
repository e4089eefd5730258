import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { findLeaks } from '../../leaks.js';
import { teardownCluster } from '../../cluster.js';
import { eventually, requireRoot, uniqueSuffix } from '../../testing.js';
import { ExecRunner } from '../../../sys/runner.js';
import { startDaemon, type DaemonHandle } from '../../../sys/process.js';

const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'session.js');
const runner = new ExecRunner();

interface Session {
  handle: DaemonHandle;
  log: string;
}

/** Runs the fixture as a separate process, the way a test runner runs a test file. */
function startSession(t: Test, prefix: string, mode: 'throw' | 'wait'): Session {
  const dir = mkdtempSync(join(tmpdir(), 'tn-cleanup-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = join(dir, 'log');
  return { handle: startDaemon({ argv: [process.execPath, FIXTURE, prefix, mode], logFile: log }), log };
}

async function waitForLine(session: Session, line: string): Promise<void> {
  if (!(await eventually(() => readFileSync(session.log, 'utf8').includes(line), 30_000, 20)))
    throw new Error(`session did not print "${line}"`);
}

t.test('a session that throws mid-test leaves nothing behind', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `x${uniqueSuffix()}`;
  t.teardown(() => teardownCluster(prefix, { runner }));
  const session = startSession(t, prefix, 'throw');
  const { code } = await session.handle.exited;
  t.not(code, 0, 'the session failed as it should');
  t.same(await findLeaks({ prefix, runner }), []);
});

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`a session interrupted by ${sig} tears its cluster down`, async (t) => {
    if (!requireRoot(t)) return;
    const prefix = `x${uniqueSuffix()}`;
    t.teardown(() => teardownCluster(prefix, { runner }));
    const session = startSession(t, prefix, 'wait');
    await waitForLine(session, 'up');
    t.ok((await findLeaks({ prefix, runner })).length > 0, 'the cluster is really up');
    process.kill(session.handle.pid, sig);
    const { code } = await session.handle.exited;
    t.equal(code, sig === 'SIGINT' ? 130 : 143);
    t.same(await findLeaks({ prefix, runner }), []);
  });
}

t.test('after SIGKILL, down removes everything from the state left on disk', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `x${uniqueSuffix()}`;
  t.teardown(() => teardownCluster(prefix, { runner }));
  const session = startSession(t, prefix, 'wait');
  await waitForLine(session, 'up');
  process.kill(session.handle.pid, 'SIGKILL');
  await session.handle.exited;
  const left = await findLeaks({ prefix, runner });
  t.ok(
    left.some((l) => l.kind === 'process' && l.what.includes('etcd')),
    'etcd survived the crash',
  );
  t.ok(
    left.some((l) => l.kind === 'netns'),
    'namespaces survived the crash',
  );
  await teardownCluster(prefix, { runner });
  t.same(await findLeaks({ prefix, runner }), []);
});
