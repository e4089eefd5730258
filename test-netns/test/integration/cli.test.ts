import t from 'tap';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { ExecRunner, isCommandError } from '../../../sys/runner.js';
import { teardownCluster, type ClusterDescription } from '../../cluster.js';
import { requireRoot, uniqueSuffix } from '../../testing.js';
import { statSync } from 'node:fs';
import { EtcdStore } from '../../../store/etcd.js';

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
  t.same(
    d.etcd.members.map((m) => [m.name, m.clientUrl]),
    [['m1', 'https://10.77.0.1:2379']],
  );
  t.same(d.etcd.hostClient.endpoints, ['https://10.77.0.1:2379'], 'hosts reach etcd over the underlay, with TLS');
  t.match(d.etcd.client.endpoints, [`unix:///run/test-netns/${prefix}/etcd-m1/etcd.sock:0`]);
  t.equal(d.etcd.members[0]!.dataDir, `/var/lib/test-netns/${prefix}/m1`, 'etcd data on disk, not under /run');
  for (const pair of Object.values(d.etcd.users))
    t.equal(statSync(pair.key).mode & 0o777, 0o600, `${pair.key} is 0600`);
  t.ok(d.adminToken.length >= 24, 'an admin token');

  // etcd answers from the root namespace (TLS on the unix socket) as root...
  const store = new EtcdStore(d.etcd.client);
  await store.put('/probe', 'ok');
  t.equal((await store.get('/probe'))?.value, 'ok');
  await store.delete('/probe');
  await store.close();
  // ...and from a host over the underlay, to etcdctl with the host files: as netd, inside /netd/ only.
  const tls = d.etcd.hostClient.tls;
  const etcdctl = (...args: string[]) =>
    runner.run({
      argv: [
        'etcdctl',
        `--endpoints=${d.etcd.hostClient.endpoints[0]}`,
        '--dial-timeout=2s',
        '--command-timeout=3s',
        ...args,
      ],
      netns: { name: d.hosts[1]!.netns },
    });
  const withCert = ['--cacert', tls.ca, '--cert', tls.cert, '--key', tls.key];
  t.match((await etcdctl(...withCert, 'put', '/netd/probe', 'ok')).stdout, /OK/, 'netd writes under /netd/');
  await t.rejects(etcdctl(...withCert, 'put', '/probe', 'x'), /permission denied/, 'and nowhere else');
  await t.rejects(etcdctl('--cacert', tls.ca, 'get', '/netd/probe'), /exited 1/, 'no certificate: refused');
  await etcdctl(...withCert, 'del', '/netd/probe');

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
