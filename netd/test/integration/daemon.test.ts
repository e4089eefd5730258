import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import type { TestContainer } from '../../../test-netns/containers.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { netdTestbed } from '../netd-hosts.js';
import { stopDaemon, killDaemon } from '../../../sys/process.js';
import { IpClient } from '../../../sys/ip.js';
import { BridgeClient } from '../../../sys/bridge.js';
import { attachInternal, detachInternal } from '../direct-attach.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';

const LEASE_TTL = 2;
const H1_LEASE_TTL = 15;

t.test(
  'netd daemons converge the vxlan data path from etcd; a dead host is dropped, a restarted one comes back',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const tb = await netdTestbed(t, s, {
        label: 'daemon',
        vpcs: [
          { name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 300 },
          { name: 'b', tenant: 't2', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 301 },
        ],
        start: false,
        // h2's lease is short (its death is noticed quickly); h1's must outlast a graceful restart,
        // which takes several seconds on a loaded machine (node start-up, etcd, the first reconcile).
        netd: (host) => ({ leaseTtl: host === 'h1' ? H1_LEASE_TTL : LEASE_TTL }),
      });
      const { store } = tb;
      // The CNI side of ADD, done before the daemons run (outside a daemon nothing claims a port
      // while it is wired, so a running reconcile could take it for an orphan): one container per
      // VPC per host. Starting, the daemons find records and ports and converge the rest from etcd.
      const depsFor = tb.attachDeps;
      const containers: Array<{
        name: string;
        host: string;
        vpc: string;
        netns: string;
        ip: string;
        container: TestContainer;
      }> = [];
      for (const [name, host, vpc] of [
        ['a1', 'h1', 'a'],
        ['b1', 'h1', 'b'],
        ['a2', 'h2', 'a'],
        ['b2', 'h2', 'b'],
      ] as const) {
        const c = await s.containers.add({ host, name });
        const att = await attachInternal(
          { containerId: name, ifname: 'eth1', netnsPath: c.netnsPath, vpc },
          depsFor(host),
        );
        containers.push({ name, host, vpc, netns: c.netns, ip: att.allocation.ip, container: c });
      }
      const by = (n: string) => containers.find((c) => c.name === n)!;
      await tb.start(); // asserts "netd on hN ready"
      const daemons = tb.daemons;
      t.ok(
        await eventually(() => s.probe.ping(by('a1').netns, by('a2').ip, 500), 15_000),
        'a1 reaches a2 across hosts once the daemons converged',
      );
      t.ok(await eventually(() => s.probe.ping(by('b1').netns, by('b2').ip, 500), 15_000), 'b1 reaches b2 (icmp)');
      // ARP suppression: h1's VXLAN device answers for a2 itself; no ARP request crosses the underlay.
      {
        const h1 = new IpClient(s.runner, { name: s.cluster.host('h1').netns });
        const nx = linkNames.vxlan(300);
        t.equal((await h1.link(nx))?.linkinfo?.info_data?.proxy, true, `${nx} has proxy (ARP suppression) on`);
        const a2 = containers.find((c) => c.name === 'a2')!;
        const a2Mac = (await new IpClient(s.runner, { name: a2.netns }).link('eth1'))?.address;
        t.ok(
          (await h1.neighbours(nx)).some(
            (n) => n.dst === a2.ip && n.lladdr === a2Mac && (n.state ?? []).includes('PERMANENT'),
          ),
          `h1 holds a2's ${a2.ip} → ${a2Mac} on ${nx}`,
        );
      }
      t.ok(
        await s.probe.delivered({
          from: by('b1').netns,
          to: by('b2').netns,
          address: by('b2').ip,
          protocol: 'tcp',
          port: 7000,
        }),
        'b1 reaches b2 (tcp)',
      );
      // VPC b must not reach a2's server. Judged at the receivers: a2 counts what arrives for the
      // port (a refusal by VPC b's own holder of the address must not pass for isolation), and
      // that holder, when there is one, counts b1's packets: they stayed in VPC b.
      const a2 = by('a2');
      const server = await s.probe.serve(a2.netns, 'tcp', a2.ip, 7100);
      const inA2 = await s.probe.countIn(a2.netns, 'tcp dport 7100');
      const sameAddrInB = containers.find((c) => c.vpc === 'b' && c.ip === a2.ip);
      const inSameAddrInB = sameAddrInB && (await s.probe.countIn(sameAddrInB.netns, 'tcp dport 7100'));
      try {
        if (sameAddrInB) t.comment(`${sameAddrInB.name} in VPC b has a2's address too`);
        t.notOk(await s.probe.connect(by('b1').netns, 'tcp', a2.ip, 7100, 800), "VPC b cannot reach VPC a's server");
        t.equal(await inA2.read(), 0, 'no packet from VPC b reached a2');
        if (sameAddrInB && inSameAddrInB)
          t.ok((await inSameAddrInB.read()) > 0, `b1's packets stayed in VPC b: ${sameAddrInB.name} received them`);
        t.ok(await s.probe.connect(by('a1').netns, 'tcp', a2.ip, 7100), 'a1, in the same VPC, reaches the server');
        t.ok((await inA2.read()) > 0, "a2's counter saw a1's packets (the same check, able to fail)");
      } finally {
        await inA2.remove();
        await inSameAddrInB?.remove();
        await server.stop();
      }

      // h2's netd is SIGKILLed: its lease expires and h1 drops every FDB entry towards h2.
      const h1Fdb = () =>
        new BridgeClient(s.runner, { name: s.cluster.host('h1').netns }).fdb({ dev: linkNames.vxlan(300) });
      const towardsH2 = async () => (await h1Fdb()).some((e) => e.dst === s.cluster.host('h2').underlayIp);
      t.ok(await towardsH2(), 'h1 has FDB entries towards h2');
      killDaemon(daemons.get('h2')!.handle, 'SIGKILL');
      await daemons.get('h2')!.handle.exited;
      t.ok(await eventually(async () => !(await towardsH2()), 15_000), 'after the lease expired, h1 dropped h2');
      await tb.start(['h2']); // asserts "netd on h2 ready"
      t.ok(await eventually(() => s.probe.ping(by('a1').netns, by('a2').ip, 500), 15_000), 'a1 reaches a2 again');

      // A graceful restart of h1's netd does not disturb h2: its registration outlives the restart.
      // h2 is sampled from the stop until the old lease is really gone from etcd.
      const h2Fdb = () =>
        new BridgeClient(s.runner, { name: s.cluster.host('h2').netns }).fdb({ dev: linkNames.vxlan(300) });
      const towardsH1 = async () => (await h2Fdb()).some((e) => e.dst === s.cluster.host('h1').underlayIp);
      const oldLease = (await store.get(modelKeys.host('h1')))?.lease;
      t.ok(oldLease, "h1's registration is bound to a lease");
      // etcd answers TTL -1 for a lease that expired (or never was).
      const leaseAlive = async (id: string) =>
        Number((await store.client.leaseClient.leaseTimeToLive({ ID: id })).TTL) >= 0;
      let dropped = false;
      let sampling = true;
      const sampler = eventually(
        async () => {
          if (!(await towardsH1())) dropped = true;
          return !sampling;
        },
        120_000,
        100,
      );
      try {
        await stopDaemon(daemons.get('h1')!.handle);
        await tb.start(['h1']); // asserts "netd on h1 ready"
        t.ok(
          await eventually(async () => !(await leaseAlive(oldLease!)), (H1_LEASE_TTL + 10) * 1000),
          "h1's old lease expired in etcd",
        );
        const registration = await store.get(modelKeys.host('h1'));
        t.ok(registration?.lease && registration.lease !== oldLease, 'h1 is registered under a new lease');
      } finally {
        sampling = false;
        await sampler;
      }
      t.notOk(dropped, 'h2 never dropped h1 during the graceful restart, nor when the old lease expired');
      t.ok(await towardsH1(), 'and still has it after the old lease expired');

      // DEL everything: records, addresses and netd's links go.
      for (const c of containers)
        await detachInternal({ containerId: c.name, ifname: 'eth1', vpc: c.vpc }, depsFor(c.host));
      for (const h of ['h1', 'h2']) {
        const ip = new IpClient(s.runner, { name: s.cluster.host(h).netns });
        t.ok(
          await eventually(
            async () => (await ip.links()).filter((l) => /^n[bxie]/.test(l.ifname)).length === 0,
            10_000,
          ),
          `${h}: netd's links are gone`,
        );
      }
      t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record left');
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
      await tb.stopAll();
      await store.deletePrefix('/netd/v1/');
      for (const c of containers) await s.containers.remove(c.container);
      t.same(await s.residue(), []);
    });
  },
);
