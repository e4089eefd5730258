import t from 'tap';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { ExecRunner, isCommandError } from '../../../sys/runner.js';
import { teardownCluster, type ClusterDescription } from '../../cluster.js';
import { requireRoot, uniqueSuffix } from '../../testing.js';
import { Etcd3 } from 'etcd3';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'cli.js');
const runner = new ExecRunner();
const cli = (...args: string[]) => runner.run({ argv: [process.execPath, CLI, ...args], timeoutMs: 60_000 });

t.test('up --json prints the cluster shape scripts rely on; leaks and down agree', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `k${uniqueSuffix()}`;
  t.teardown(() => teardownCluster(prefix, { runner }));
  const { stdout } = await cli('up', '--hosts', '2', '--prefix', prefix, '--json');
  const d = JSON.parse(stdout) as ClusterDescription;
  t.equal(d.prefix, prefix);
  t.same(
    d.hosts.map((h) => [h.name, h.netns, h.underlayIp]),
    [
      ['h1', `tn-${prefix}-h1`, '10.77.0.11'],
      ['h2', `tn-${prefix}-h2`, '10.77.0.12'],
    ],
  );
  t.same(d.hosts[0]?.daemons, {});
  t.equal(d.outside.netns, `tn-${prefix}-out`);
  t.equal(d.outside.address, '10.77.0.254');
  t.same(d.etcd.underlayEndpoints, ['http://10.77.0.1:2379']);
  t.ok(d.adminToken.length >= 24, 'an admin token');

  // etcd answers from the root namespace (unix socket) and from a host over the underlay.
  const client = new Etcd3({ hosts: d.etcd.endpoints });
  await client.put('/probe').value('ok');
  t.equal(await client.get('/probe').string(), 'ok');
  await client.delete().key('/probe');
  client.close();
  const health = await runner.run({
    argv: ['etcdctl', `--endpoints=${d.etcd.underlayEndpoints[0]}`, 'endpoint', 'health'],
    netns: { name: d.hosts[1]!.netns },
  });
  t.match(health.stdout + health.stderr, /is healthy/);

  const described = JSON.parse((await cli('describe', '--prefix', prefix)).stdout) as ClusterDescription;
  t.same(described, d, 'describe repeats what up printed');

  const leaksWhileUp = await cli('leaks', '--prefix', prefix).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(isCommandError(leaksWhileUp) && leaksWhileUp.exitCode === 1, 'leaks exits 1 while the cluster is up');
  t.match(isCommandError(leaksWhileUp) ? leaksWhileUp.stdout : '', new RegExp(`netns\\ttn-${prefix}-h1`));

  await t.rejects(
    cli('up', '--hosts', '1', '--prefix', prefix),
    /exists already/,
    'a second up with the same prefix is refused',
  );

  await cli('down', '--prefix', prefix);
  t.equal((await cli('leaks', '--prefix', prefix)).stdout, 'no leaks\n');
  await cli('down', '--prefix', prefix); // twice is fine
});

t.test('bad input gets a clear error and exit code 2, creating nothing', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `k${uniqueSuffix()}`;
  for (const args of [
    ['up', '--hosts', '0', '--prefix', prefix],
    ['up', '--hosts', 'three', '--prefix', prefix],
    ['up', '--hosts', '2', '--prefix', 'Bad Prefix'],
    ['up', '--hosts', '2', '--prefix', prefix, '--with', 'nosuch'],
    ['frobnicate'],
  ]) {
    const err = await cli(...args).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(isCommandError(err) && err.exitCode === 2, `${args.join(' ')} exits 2`);
    t.match(isCommandError(err) ? err.stderr : '', /E_INVALID_INPUT/);
  }
  const unsupported = await cli('up', '--hosts', '1', '--prefix', prefix, '--with', 'storaged').then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(
    isCommandError(unsupported) ? unsupported.stderr : '',
    /E_UNSUPPORTED.*not built yet/,
    'components not built yet say so',
  );
  t.equal((await cli('leaks', '--prefix', prefix)).stdout, 'no leaks\n');
});
