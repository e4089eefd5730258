import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { findLeaks } from '../../leaks.js';
import { teardownCluster } from '../../cluster.js';
import { requireRoot, uniqueSuffix } from '../../testing.js';
import { ExecRunner } from '../../../sys/runner.js';

// This test drives child processes the way a test runner would; it does not spawn tools itself.
const FIXTURE = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'session.js');
const runner = new ExecRunner();

function startSession(prefix: string, mode: 'throw' | 'wait') {
  return spawn(process.execPath, [FIXTURE, prefix, mode], { stdio: ['ignore', 'pipe', 'pipe'] });
}

async function waitForLine(child: ReturnType<typeof startSession>, line: string): Promise<void> {
  let buf = '';
  for await (const chunk of child.stdout!) {
    buf += String(chunk);
    if (buf.includes(line)) return;
  }
  throw new Error(`child ended before printing "${line}"`);
}

t.test('a session that throws mid-test leaves nothing behind', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `x${uniqueSuffix()}`;
  t.teardown(() => teardownCluster(prefix, { runner }));
  const child = startSession(prefix, 'throw');
  const [code] = await once(child, 'exit');
  t.not(code, 0, 'the session failed as it should');
  t.same(await findLeaks({ prefix, runner }), []);
});

for (const sig of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`a session interrupted by ${sig} tears its cluster down`, async (t) => {
    if (!requireRoot(t)) return;
    const prefix = `x${uniqueSuffix()}`;
    t.teardown(() => teardownCluster(prefix, { runner }));
    const child = startSession(prefix, 'wait');
    await waitForLine(child, 'up');
    t.ok((await findLeaks({ prefix, runner })).length > 0, 'the cluster is really up');
    child.kill(sig);
    const [code] = await once(child, 'exit');
    t.equal(code, sig === 'SIGINT' ? 130 : 143);
    t.same(await findLeaks({ prefix, runner }), []);
  });
}

t.test('after SIGKILL, down removes everything from the state left on disk', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `x${uniqueSuffix()}`;
  t.teardown(() => teardownCluster(prefix, { runner }));
  const child = startSession(prefix, 'wait');
  await waitForLine(child, 'up');
  child.kill('SIGKILL');
  await once(child, 'exit');
  const left = await findLeaks({ prefix, runner });
  t.ok(left.some((l) => l.kind === 'process' && l.what.includes('etcd')), 'etcd survived the crash');
  t.ok(left.some((l) => l.kind === 'netns'), 'namespaces survived the crash');
  await teardownCluster(prefix, { runner });
  t.same(await findLeaks({ prefix, runner }), []);
});
