import t from 'tap';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster } from '../../harness.js';
import { teardownCluster } from '../../cluster.js';
import { findLeader } from '../../etcd.js';
import { EtcdStore } from '../../../store/etcd.js';

import { findLeaks } from '../../leaks.js';
import { eventually, requireRoot, scratchNetns, uniqueSuffix } from '../../testing.js';
import { pathsIntoCluster } from '../../exposure.js';
import { ExecRunner } from '../../../sys/runner.js';

const runner = new ExecRunner();

t.test('three hosts reach each other over the underlay, and nothing is left after', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `c${uniqueSuffix()}`;
  await withCluster({ prefix, hosts: 3 }, async ({ cluster, probe, residue }) => {
    const hosts = cluster.description.hosts;
    t.equal(hosts.length, 3);
    t.same(
      hosts.map((h) => h.underlayIp),
      ['10.77.0.11', '10.77.0.12', '10.77.0.13'],
    );
    for (const a of hosts) {
      for (const b of hosts) {
        if (a === b) continue;
        t.ok(await probe.ping(a.netns, b.underlayIp), `icmp ${a.name} -> ${b.name}`);
      }
    }
    const [h1, h2, h3] = hosts as [(typeof hosts)[0], (typeof hosts)[0], (typeof hosts)[0]];
    t.ok(
      await probe.delivered({ from: h1.netns, to: h2.netns, address: h2.underlayIp, protocol: 'tcp', port: 5001 }),
      'tcp h1 -> h2',
    );
    t.ok(
      await probe.delivered({ from: h3.netns, to: h1.netns, address: h1.underlayIp, protocol: 'udp', port: 5002 }),
      'udp h3 -> h1',
    );
    const out = cluster.description.outside;
    t.ok(await probe.ping(h2.netns, out.address), 'a host reaches the outside world');
    // Probes must be able to fail: nothing listens / nobody has this address.
    t.notOk(await probe.ping(h1.netns, '10.77.0.99', 500), 'an unused underlay address does not answer');
    t.notOk(await probe.connect(h1.netns, 'tcp', h2.underlayIp, 5999, 500), 'tcp to a closed port is not delivered');
    // The fabric is in its own namespace: the root namespace has no way into the underlay. Judged
    // from its tables (no packet: one from the root namespace to 10.77.x would leave the machine).
    t.same(await pathsIntoCluster(runner, cluster.description), [], 'the root namespace has no way into the underlay');
    // The check sees a way in where there is one: a scratch namespace (not the root one) wired
    // into the fabric, that really reaches a host through it.
    const control = await scratchNetns(t, runner);
    t.same(await pathsIntoCluster(runner, cluster.description, control), [], 'control: a fresh namespace has none');
    const fabric = { name: cluster.description.fabric.netns };
    await runner.run({
      argv: ['ip', 'link', 'add', 'ctl0', 'type', 'veth', 'peer', 'name', 'uplink', 'netns', control],
      netns: fabric,
    });
    await runner.run({
      argv: ['ip', 'link', 'set', 'ctl0', 'master', cluster.description.fabric.bridge, 'up'],
      netns: fabric,
    });
    await runner.run({ argv: ['ip', 'addr', 'add', '10.77.0.250/24', 'dev', 'uplink'], netns: { name: control } });
    await runner.run({ argv: ['ip', 'link', 'set', 'uplink', 'up'], netns: { name: control } });
    t.ok(await probe.ping(control, h1.underlayIp), 'control: the wired namespace reaches h1 through the fabric');
    const found = await pathsIntoCluster(runner, cluster.description, control);
    t.match(
      found,
      [
        `link uplink has its other end in ${cluster.description.fabric.netns}`,
        /^address 10\.77\.0\.250\/24 on uplink is in the underlay/,
      ],
      'control: the check finds the link and the address',
    );
    t.ok(
      found.some((f) => /^route 10\.77\.0\.0\/24 dev uplink goes through a link into the cluster/.test(f)),
      'control: and the route',
    );
    t.ok(
      found.includes(`a packet for ${h1.underlayIp} would leave through uplink, into the cluster`),
      'control: and where a packet for h1 would go',
    );
    await runner.run({ argv: ['ip', 'link', 'del', 'ctl0'], netns: fabric }); // takes both ends
    await runner.run({ argv: ['ip', 'netns', 'del', control] });
    t.same(await residue(), [], 'no residue while up');
  });
  t.same(await findLeaks({ prefix, runner }), [], 'down leaves nothing');
});

t.test('test containers get a namespace and a veth to their host', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `c${uniqueSuffix()}`;
  await withCluster({ prefix, hosts: 2 }, async ({ cluster, containers, probe, residue }) => {
    const h1 = cluster.host('h1');
    const a = await containers.add({
      host: 'h1',
      name: 'a',
      address: '10.9.0.2/24',
      hostAddress: '10.9.0.1/24',
      gateway: '10.9.0.1',
    });
    t.equal(a.netns, `tn-${prefix}-h1-a`);
    t.ok(await probe.ping(a.netns, '10.9.0.1'), 'container reaches its host');
    t.ok(
      await probe.delivered({ from: h1.netns, to: a.netns, address: '10.9.0.2', protocol: 'tcp', port: 80 }),
      'host reaches container over tcp',
    );
    const { stdout } = await containers.exec(a, ['ip', '-j', 'addr', 'show', 'dev', 'eth0']);
    t.match(stdout, /10\.9\.0\.2/);
    await containers.remove(a);
    const { stdout: links } = await runner.run({ argv: ['ip', '-j', 'link', 'show'], netns: { name: h1.netns } });
    t.notMatch(links, /c-a/, 'the host-side veth is gone with the container');
    t.same(await residue(), []);
  });
  t.same(await findLeaks({ prefix, runner }), []);
});

t.test('a container namespace that outlives its test is reported as residue', async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1 }, async ({ containers, residue }) => {
    const c = await containers.add({ host: 'h1', name: 'left' });
    const leaks = await residue();
    t.same(
      leaks.filter((l) => l.kind === 'netns').map((l) => l.what),
      [c.netns],
    );
  });
});

t.test(
  'etcdMembers: 3 runs three members on their own fabric addresses, data on disk; one killed, the rest serve; down removes the data',
  async (t) => {
    if (!requireRoot(t)) return;
    const prefix = `c${uniqueSuffix()}`;
    const dataDir = `/var/lib/test-netns/${prefix}`;
    await withCluster({ prefix, hosts: 1, etcdMembers: 3 }, async ({ cluster, residue }) => {
      const d = cluster.description;
      t.same(
        d.etcd.members.map((m) => [m.name, m.address, m.dataDir]),
        [
          ['m1', '10.77.0.1', `${dataDir}/m1`],
          ['m2', '10.77.0.2', `${dataDir}/m2`],
          ['m3', '10.77.0.3', `${dataDir}/m3`],
        ],
      );
      t.same(d.etcd.hostClient.endpoints, [
        'https://10.77.0.1:2379',
        'https://10.77.0.2:2379',
        'https://10.77.0.3:2379',
      ]);
      t.ok(existsSync(join(dataDir, 'm2', 'member')), 'member data is written under /var/lib/test-netns');
      t.throws(() => cluster.etcdServer(), { code: 'E_INVALID_INPUT' }, 'etcdServer() is for one member only');
      const members = cluster.etcdMembers();
      const leader = await findLeader(members);
      t.ok(leader !== undefined, 'the members agree on a leader');
      // Every member serves, from a host over the underlay, as netd.
      for (const [i, url] of d.etcd.hostClient.endpoints.entries()) {
        const tls = d.etcd.hostClient.tls;
        const { stdout } = await runner.run({
          argv: ['etcdctl', `--endpoints=${url}`, '--cacert', tls.ca, '--cert', tls.cert, '--key', tls.key].concat([
            'put',
            `/netd/probe${i}`,
            'ok',
          ]),
          netns: { name: d.hosts[0]!.netns },
        });
        t.match(stdout, /OK/, `member m${i + 1} takes a write at ${url}`);
      }
      const store = new EtcdStore({ ...d.etcd.client, callTimeoutMs: 3_000 });
      t.teardown(() => store.close());
      const follower = members.findIndex((_, i) => i !== leader);
      cluster.etcdMember(follower).kill();
      t.ok(await eventually(() => !cluster.etcdMember(follower).running(), 5_000), 'the member is gone');
      // A quorum is left: writes succeed (a call that hits the dead member moves on to the next one).
      for (let i = 0; i < 10; i++) await store.put(`/netd/after${i}`, 'x');
      t.equal((await store.list('/netd/after')).kvs.length, 10, 'all ten writes landed with one member down');
      await cluster.etcdMember(follower).restart();
      t.equal((await cluster.etcdMember(follower).status()).leaderId !== '0', true, 'the restarted member rejoined');
      await store.deletePrefix('/netd/');
      t.same(await residue(), [], 'no residue while up');
    });
    t.notOk(existsSync(dataDir), 'down removed the data dir');
    t.same(await findLeaks({ prefix, runner }), [], 'down leaves nothing');
  },
);

t.test('a data dir left behind is reported by the leak checker', async (t) => {
  if (!requireRoot(t)) return;
  const prefix = `c${uniqueSuffix()}`;
  const left = `/var/lib/test-netns/${prefix}`;
  mkdirSync(join(left, 'm1'), { recursive: true });
  t.teardown(() => rmSync(left, { recursive: true, force: true }));
  t.same(await findLeaks({ prefix, runner }), [{ kind: 'state', what: left }]);
  await teardownCluster(prefix, { runner });
  t.same(await findLeaks({ prefix, runner }), [], 'down removes it');
});
