import t from 'tap';
import { withCluster, type ClusterSession } from '../../../test-netns/harness.js';
import type { TestContainer } from '../../../test-netns/containers.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { BridgeClient } from '../../../sys/bridge.js';
import type { EndpointRecord, HostRecord, VpcRecord } from '../../../tenancy/records.js';
import type { HostSnapshot } from '../../model.js';
import { vxlanMode } from '../../modes/vxlan.js';
import { reconcile, isEmptyPlan } from '../../dataplane.js';
import { linkNames } from '../../names.js';

const vpcs = new Map<string, VpcRecord>([
  ['a', { name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 100 }],
  ['b', { name: 'b', tenant: 't2', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 200 }], // same CIDR, other tenant
]);

/** Wires a bare container's eth1 the way netd's CNI ADD will: a veth whose host end joins nothing yet. */
async function attach(
  s: ClusterSession,
  host: string,
  name: string,
  vpc: string,
  cidr: string,
): Promise<{ record: EndpointRecord; netns: string; container: TestContainer }> {
  const c = await s.containers.add({ host, name });
  const id = `${name}:eth1`;
  const hostIf = linkNames.internalPort(id);
  await new IpClient(s.runner, { name: s.cluster.host(host).netns }).apply(
    new IpBatch().linkAddVeth(hostIf, 'eth1', { peerNetns: c.netns, mtu: 1450 }).linkSet(hostIf, { up: true }),
  );
  const inside = new IpClient(s.runner, { name: c.netns });
  await inside.apply(new IpBatch().addrAdd(cidr, 'eth1').linkSet('eth1', { up: true }));
  const mac = (await inside.link('eth1'))!.address!;
  return { record: { vpc, id, host, ip: cidr.split('/')[0]!, mac, hostIf }, netns: c.netns, container: c };
}

t.test(
  'vxlan mode: same-VPC containers talk across hosts; equal CIDRs in two VPCs stay apart; orphans are removed',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const hosts = new Map<string, HostRecord>(
        d.hosts.map((h) => [
          h.name,
          { name: h.name, underlayIp: h.underlayIp, uplink: h.uplink, underlayMtu: d.underlay.mtu },
        ]),
      );
      const a1 = await attach(s, 'h1', 'a1', 'a', '10.0.0.11/24');
      const b1 = await attach(s, 'h1', 'b1', 'b', '10.0.0.11/24'); // the same address as a1, other VPC
      const a2 = await attach(s, 'h2', 'a2', 'a', '10.0.0.12/24');
      const b2 = await attach(s, 'h2', 'b2', 'b', '10.0.0.12/24');
      let endpoints = [a1, b1, a2, b2].map((x) => x.record);
      const converge = async (host: string) => {
        const view: HostSnapshot = { self: hosts.get(host)!, hosts, vpcs, endpoints };
        const netns = { name: s.cluster.host(host).netns };
        return reconcile(vxlanMode.render(view), {
          ip: new IpClient(s.runner, netns),
          bridge: new BridgeClient(s.runner, netns),
        });
      };
      for (const h of ['h1', 'h2'])
        t.notOk(isEmptyPlan(await converge(h)), `${h}: first reconcile changes the data path`);
      for (const h of ['h1', 'h2']) t.ok(isEmptyPlan(await converge(h)), `${h}: second reconcile sends nothing`);

      const h1 = new IpClient(s.runner, { name: s.cluster.host('h1').netns });
      const vx = await h1.link(linkNames.vxlan(100));
      t.equal(vx?.mtu, 1450, 'MTU = underlay - 50');
      t.equal(vx?.linkinfo?.info_data?.gbp, true);
      t.equal(vx?.linkinfo?.info_data?.learning, false);
      const routes = await h1.routes({ family: 4 });
      t.notOk(
        routes.some((r) => r.dst.startsWith('10.0.0.')),
        "the VPCs' CIDR is not in the host's routing table",
      );

      t.ok(await s.probe.ping(a1.netns, '10.0.0.12'), 'a1 -> a2 across hosts (icmp)');
      t.ok(
        await s.probe.delivered({ from: a1.netns, to: a2.netns, address: '10.0.0.12', protocol: 'tcp', port: 8080 }),
        'a1 -> a2 (tcp)',
      );
      t.ok(
        await s.probe.delivered({ from: b1.netns, to: b2.netns, address: '10.0.0.12', protocol: 'tcp', port: 8080 }),
        'b1 -> b2 (tcp), same addresses as VPC a',
      );
      // The server listens only in a2: from VPC b the same address must not reach it. Judged at the
      // receivers: b2 (VPC b's 10.0.0.12) refuses b1's connection, which must not count as "a2
      // dropped it" — so a2 must see none of b1's packets, and b2 must see them.
      const server = await s.probe.serve(a2.netns, 'tcp', '10.0.0.12', 9090);
      const inA2 = await s.probe.countIn(a2.netns, 'tcp dport 9090');
      const inB2 = await s.probe.countIn(b2.netns, 'tcp dport 9090');
      try {
        t.notOk(await s.probe.connect(b1.netns, 'tcp', '10.0.0.12', 9090, 800), 'b1 does not: another VPC');
        t.equal(await inA2.read(), 0, 'no packet of b1 reached a2');
        t.ok((await inB2.read()) > 0, "b1's packets stayed in VPC b: they reached b2, its holder of 10.0.0.12");
        t.ok(await s.probe.connect(a1.netns, 'tcp', '10.0.0.12', 9090), 'a1 reaches the server in a2');
        t.ok((await inA2.read()) > 0, "a2's counter sees a1's packets (the same check, able to fail)");
      } finally {
        await inA2.remove();
        await inB2.remove();
        await server.stop();
      }

      // a2 goes away: h2 drops VPC a's devices, h1 drops its FDB entries towards h2 for VPC a.
      endpoints = endpoints.filter((e) => e.id !== 'a2:eth1');
      await s.containers.remove(a2.container);
      await converge('h1');
      await converge('h2');
      const h2 = new IpClient(s.runner, { name: s.cluster.host('h2').netns });
      t.equal(await h2.link(linkNames.bridge(100)), undefined, 'h2 removed the bridge of a VPC it no longer hosts');
      t.equal(await h2.link(linkNames.vxlan(100)), undefined, 'and its vxlan device');
      const fdb = await new BridgeClient(s.runner, { name: s.cluster.host('h1').netns }).fdb({
        dev: linkNames.vxlan(100),
      });
      t.same(
        fdb.filter((e) => e.dst),
        [],
        'h1 has no FDB entry left for VPC a',
      );
      t.ok(await s.probe.ping(b1.netns, '10.0.0.12'), 'VPC b unaffected');

      // An orphan of ours (a bridge nobody wants) is removed; other links are left alone.
      await h1.apply(new IpBatch().linkAddBridge('nbfff').linkAddBridge('keepme'));
      await converge('h1');
      t.equal(await h1.link('nbfff'), undefined, 'orphan removed');
      t.ok(await h1.link('keepme'), "someone else's bridge untouched");
      await h1.deleteLinkIfExists('keepme');

      endpoints = [];
      for (const c of [a1, b1, b2]) await s.containers.remove(c.container);
      await converge('h1');
      await converge('h2');
      for (const h of [h1, h2])
        t.same(
          (await h.links()).filter((l) => /^n[bxie]/.test(l.ifname)).map((l) => l.ifname),
          [],
          'nothing of netd left',
        );
      t.same(await s.residue(), []);
    });
  },
);
