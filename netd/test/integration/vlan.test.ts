import t from 'tap';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster } from '../../../test-netns/harness.js';
import type { TestContainer } from '../../../test-netns/containers.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { startDaemon, stopDaemon } from '../../../sys/process.js';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { OvsClient, OvsTransaction } from '../../../sys/ovs.js';
import { EthtoolClient } from '../../../sys/ethtool.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { endpointId, type HostRecord, type VpcRecord } from '../../../tenancy/records.js';
import { TcClient } from '../../../sys/tc.js';
import { linkNames } from '../../names.js';
import { DEFAULT_OVS_BRIDGE } from '../../vlan-host.js';
import { netdTestbed } from '../netd-hosts.js';

/**
 * Sends one raw Ethernet frame out of eth1: to MAC argv[1], IPv4/UDP to argv[2]:7600, with an
 * 802.1Q tag argv[3] when it is not 0 (what root in a container can do with a packet socket).
 */
const RAW_FRAME = `
import socket, struct, sys
mac = bytes.fromhex(sys.argv[1].replace(':', ''))
dst = socket.inet_aton(sys.argv[2]); tag = int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(('eth1', 0))
src_mac = s.getsockname()[4]
payload = b'vlan-hop'
udp = struct.pack('!HHHH', 40000, 7600, 8 + len(payload), 0) + payload
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton('10.70.0.250'), dst)
c = sum(struct.unpack('!10H', ip)); c = (c & 0xffff) + (c >> 16); c = (c & 0xffff) + (c >> 16)
ip = ip[:10] + struct.pack('!H', ~c & 0xffff) + ip[12:]
vlan = struct.pack('!HH', 0x8100, tag) if tag else b''
for _ in range(3): s.send(mac + src_mac + vlan + struct.pack('!H', 0x0800) + ip + udp)
`;

/**
 * vlan mode on Open vSwitch's userspace datapath (this kernel has neither 802.1Q nor the OVS
 * module): containers are access ports of their VPC's VLAN, hosts meet through a trunk segment of
 * the fabric that carries real 802.1Q frames (captured there). Two vlan VPCs with the same CIDR are
 * isolated by their tags alone; judged at the receivers.
 */
t.test(
  'vlan VPCs: 802.1Q between hosts, same CIDR isolated by tag, offloads off, OVS ports reconciled, refusals before wiring',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2, vlan: true }, async (s) => {
      const d = s.cluster.description;
      const va: VpcRecord = {
        name: 't1.va',
        tenant: 't1',
        mode: 'vlan',
        cidr: '10.70.0.0/24',
        vni: 700,
        vlan: 101,
        physnet: 'physnet0',
      };
      const vb: VpcRecord = { ...va, name: 't2.vb', tenant: 't2', vni: 701, vlan: 102 };
      const far: VpcRecord = { ...va, name: 't3.far', tenant: 't3', vni: 702, vlan: 103, physnet: 'elsewhere' };
      const tb = await netdTestbed(t, s, { label: 'vlan', vpcs: [va, vb, far] });

      // Each host found Open vSwitch and its trunk, and says so in its record.
      for (const h of ['h1', 'h2']) {
        const rec = JSON.parse((await tb.store.get(modelKeys.host(h)))!.value) as HostRecord;
        t.same(
          { modes: rec.modes, vlan: rec.vlan },
          {
            modes: ['vxlan', 'routed', 'vlan'],
            vlan: { physnet: 'physnet0', datapath: 'netdev', mtu: d.underlay.mtu },
          },
          `${h}'s record: vlan on physnet0, userspace datapath`,
        );
      }

      const made = new Map<string, { c: TestContainer; host: string; vpc: string; ip: string }>();
      const conf = (vpc: string) => ({ cniVersion: '1.0.0', name: `vpc-${vpc}`, type: 'netd', vpc });
      for (const [name, host, vpc] of [
        ['va1', 'h1', va.name],
        ['va2', 'h2', va.name],
        ['vb1', 'h1', vb.name],
        ['vb2', 'h2', vb.name],
      ] as const) {
        const c = await s.containers.add({ host, name });
        const add = await tb.plugin(host, 'ADD', conf(vpc), {
          CNI_CONTAINERID: name,
          CNI_NETNS: c.netnsPath,
          CNI_IFNAME: 'eth1',
        });
        t.ok(add.ok, `ADD ${name}: ${JSON.stringify(add.out)}`);
        const ip = ((add.out.ips as Array<{ address: string }>)[0]?.address ?? '').split('/')[0]!;
        made.set(name, { c, host, vpc, ip });
      }
      const by = (n: string) => made.get(n)!;
      const ovs = (h: string) => new OvsClient(s.runner, { dbSocket: s.cluster.host(h).vlan!.ovsDb });
      const portOf = async (name: string) =>
        ((await tb.store.list(modelKeys.vpcEndpoints(by(name).vpc))).kvs
          .map((kv) => JSON.parse(kv.value) as { containerId: string; hostIf: string })
          .find((e) => e.containerId === name)?.hostIf ?? '') as string;
      // On the userspace datapath (this machine) OVS knows a port by its shaper's peer (vlan-host.ts).
      const h1Record = JSON.parse((await tb.store.get(modelKeys.host('h1')))!.value) as HostRecord;
      const shaped = h1Record.vlan?.datapath === 'netdev';
      const ovsPortOf = async (name: string) => {
        const port = await portOf(name);
        return shaped ? linkNames.ovsPeerFor(port) : port;
      };

      // Each port is an access port of its VPC's VLAN; the trunk carries all of them.
      const h1Ports = await ovs('h1').bridgePorts(DEFAULT_OVS_BRIDGE);
      t.equal(h1Ports.get(await ovsPortOf('va1')), 101, "va1's port is an access port of VLAN 101");
      t.equal(h1Ports.get(await ovsPortOf('vb1')), 102, "vb1's port is an access port of VLAN 102");
      if (shaped) {
        t.notOk(h1Ports.has(await portOf('va1')), "on the userspace datapath, va1's own port is not on OVS…");
        const filters = await new TcClient(s.runner, { name: s.cluster.host('h1').netns }).filters(
          await portOf('va1'),
          'ffff:',
        );
        t.match(
          JSON.stringify(filters),
          new RegExp(linkNames.ifbFor(await portOf('va1'))),
          '…it reaches OVS through its shaper (an ingress redirect to it)',
        );
      }
      t.ok(
        h1Ports.has('trunk') && h1Ports.get('trunk') === undefined,
        'the trunk is on the bridge, untagged (all VLANs)',
      );
      // The userspace datapath needs checksums computed by the senders: both ends of each pair.
      t.notOk(
        await new EthtoolClient(s.runner, { name: s.cluster.host('h1').netns }).txChecksumOn(await portOf('va1')),
        "va1's host end computes its own checksums",
      );
      t.notOk(
        await new EthtoolClient(s.runner, { name: s.cluster.host('h1').netns }).txChecksumOn(await ovsPortOf('va1')),
        'so does the port OVS reads',
      );
      t.notOk(
        await new EthtoolClient(s.runner, { name: by('va1').c.netns }).txChecksumOn('eth1'),
        "va1's eth1 computes its own checksums",
      );
      t.equal(
        (await new IpClient(s.runner, { name: by('va1').c.netns }).link('eth1'))?.mtu,
        d.underlay.mtu,
        "eth1's MTU is the trunk's (no encapsulation)",
      );

      // Same VPC across hosts: ICMP, TCP and UDP (TCP only works with the offloads off), and a
      // full-size frame with DF (the tag rides beside the MTU).
      t.ok(
        await eventually(() => s.probe.ping(by('va1').c.netns, by('va2').ip, 500), 15_000),
        'va1 reaches va2 (icmp)',
      );
      for (const protocol of ['tcp', 'udp'] as const) {
        t.ok(
          await s.probe.delivered({
            from: by('va1').c.netns,
            to: by('va2').c.netns,
            address: by('va2').ip,
            protocol,
            port: 7400,
          }),
          `va1 reaches va2 (${protocol})`,
        );
      }
      await s.runner
        .run({
          argv: ['ping', '-c', '1', '-W', '2', '-M', 'do', '-s', String(d.underlay.mtu - 28), by('va2').ip],
          netns: { name: by('va1').c.netns },
        })
        .then(
          () => t.pass('a full-MTU packet with DF crosses the trunk'),
          (err: unknown) => t.fail(`a full-MTU packet with DF crosses the trunk: ${String(err)}`),
        );
      t.ok(await eventually(() => s.probe.ping(by('vb2').c.netns, by('vb1').ip, 500), 15_000), 'vb2 reaches vb1');

      // The fabric sees 802.1Q frames tagged with va's VLAN.
      {
        const log = join(tb.dir, 'tcpdump.log');
        const dump = startDaemon({
          argv: ['tcpdump', '-i', 't-h1', '-e', '-nn', '-l', '-c', '2', 'vlan 101 and icmp'],
          netns: { name: d.fabric.netns },
          logFile: log,
        });
        try {
          t.ok(
            await eventually(() => readFileSync(log, 'utf8').includes('listening on'), 10_000),
            'tcpdump listens on the fabric',
          );
          await s.probe.ping(by('va1').c.netns, by('va2').ip, 1000);
          t.ok(
            await eventually(
              () => /ethertype 802\.1Q \(0x8100\).*vlan 101,.*ICMP echo/.test(readFileSync(log, 'utf8')),
              10_000,
            ),
            'a capture on the fabric shows va1→va2 ICMP in 802.1Q frames tagged 101',
          );
        } finally {
          await stopDaemon(dump, 2000);
          rmSync(log, { force: true });
        }
      }

      // Same CIDR, other VLAN: vb1 cannot reach va2's server, counted at va2.
      {
        const va2 = by('va2');
        const server = await s.probe.serve(va2.c.netns, 'tcp', va2.ip, 7500);
        const seen = await s.probe.countIn(va2.c.netns, 'tcp dport 7500');
        try {
          t.notOk(await s.probe.connect(by('vb1').c.netns, 'tcp', va2.ip, 7500, 800), "vb1 cannot reach va2's server");
          t.equal(await seen.read(), 0, 'not one packet from vb1 reached va2');
          t.ok(await s.probe.connect(by('va1').c.netns, 'tcp', va2.ip, 7500), "va1, in va, reaches va2's server");
          t.ok((await seen.read()) > 0, "va2's counter saw va1's packets (the same check, able to fail)");
        } finally {
          await seen.remove();
          await server.stop();
        }
      }

      // Root in a container cannot hop VLANs: a frame it sends already tagged with another VPC's
      // VLAN is dropped by its access port. The same frame untagged from a container of that VPC
      // arrives (the counter can count).
      {
        const vb1 = by('vb1');
        const vb1Mac = (await new IpClient(s.runner, { name: vb1.c.netns }).link('eth1'))?.address ?? '';
        const seen = await s.probe.countIn(vb1.c.netns, 'udp dport 7600');
        const send = (from: string, tag?: number) =>
          s.runner.run({
            argv: ['/usr/bin/python3', '-c', RAW_FRAME, vb1Mac, vb1.ip, String(tag ?? 0)],
            netns: { name: from },
          });
        try {
          await send(by('va1').c.netns, 102);
          await send(by('va1').c.netns, 101);
          t.equal(await seen.read(), 0, "frames va1 tagged 102 (vb's VLAN) or 101 itself did not reach vb1");
          await send(by('vb2').c.netns);
          t.ok(
            await eventually(async () => (await seen.read()) > 0, 5_000),
            'the same frame untagged from vb2 reached vb1 (the check can fail)',
          );
        } finally {
          await seen.remove();
        }
      }

      // OVS's ports are netd's to reconcile: a wrong tag is corrected, an orphan port removed.
      {
        const h1 = s.cluster.host('h1');
        const va1Port = await ovsPortOf('va1');
        const orphan = 'ni00deadbeef';
        await new IpClient(s.runner, { name: h1.netns }).apply(
          new IpBatch().linkAddVeth(orphan, 'nizzpeer', {}).linkSet(orphan, { up: true }),
        );
        await ovs('h1').apply(new OvsTransaction().addPort(DEFAULT_OVS_BRIDGE, orphan, 101).setTag(va1Port, 999));
        t.ok(
          await eventually(async () => {
            const ports = await ovs('h1').bridgePorts(DEFAULT_OVS_BRIDGE);
            return !ports.has(orphan) && ports.get(va1Port) === 101;
          }, 15_000),
          "the resync put va1's tag back and took the orphan port off the bridge",
        );
        t.ok(
          await eventually(async () => !(await new IpClient(s.runner, { name: h1.netns }).link(orphan)), 10_000),
          'and removed the orphan link',
        );
        t.ok(
          await eventually(() => s.probe.ping(by('va1').c.netns, by('va2').ip, 500), 10_000),
          'va1 reaches va2 again',
        );
      }

      // A VPC on a physical network this host's trunk is not on: refused before anything is wired.
      {
        const c = await s.containers.add({ host: 'h1', name: 'far1' });
        const add = await tb.plugin('h1', 'ADD', conf(far.name), {
          CNI_CONTAINERID: 'far1',
          CNI_NETNS: c.netnsPath,
          CNI_IFNAME: 'eth1',
        });
        t.notOk(add.ok, 'ADD into a VPC on another physical network fails');
        t.match(String(add.out.msg), /physical network elsewhere/, `it says why: ${String(add.out.msg)}`);
        t.notOk(await new IpClient(s.runner, { name: c.netns }).link('eth1'), 'and wired nothing');
        t.equal((await tb.store.list(modelKeys.vpcEndpoints(far.name))).kvs.length, 0, 'nor recorded anything');
        await s.containers.remove(c);
      }

      // An egress limit holds on the userspace datapath too: a tbf on the port's shaper.
      {
        const c = await s.containers.add({ host: 'h1', name: 'eg1' });
        const add = await tb.plugin(
          'h1',
          'ADD',
          {
            ...conf(va.name),
            capabilities: { bandwidth: true },
            runtimeConfig: { bandwidth: { egressRate: 10_000_000, egressBurst: 100_000 } },
          },
          { CNI_CONTAINERID: 'eg1', CNI_NETNS: c.netnsPath, CNI_IFNAME: 'eth1' },
        );
        t.ok(add.ok, `ADD with an egress limit into a vlan VPC: ${JSON.stringify(add.out)}`);
        const port = linkNames.internalPort(endpointId({ host: 'h1', containerId: 'eg1', ifname: 'eth1' }));
        const tbf = (
          await new TcClient(s.runner, { name: s.cluster.host('h1').netns }).qdiscs(linkNames.ifbFor(port))
        ).find((q) => q.kind === 'tbf');
        t.equal(tbf?.options?.rate, 10_000_000 / 8, `the limit is a tbf on ${linkNames.ifbFor(port)}`);
        const del = await tb.plugin('h1', 'DEL', conf(va.name), {
          CNI_CONTAINERID: 'eg1',
          CNI_NETNS: c.netnsPath,
          CNI_IFNAME: 'eth1',
        });
        t.ok(del.ok, 'DEL eg1');
        await s.containers.remove(c);
      }

      // DEL: the ports leave the bridge with their links.
      for (const [name, m] of made) {
        const port = await ovsPortOf(name);
        const del = await tb.plugin(m.host, 'DEL', conf(m.vpc), {
          CNI_CONTAINERID: name,
          CNI_NETNS: m.c.netnsPath,
          CNI_IFNAME: 'eth1',
        });
        t.ok(del.ok, `DEL ${name}`);
        t.notOk((await ovs(m.host).bridgePorts(DEFAULT_OVS_BRIDGE)).has(port), `${name}'s port left the bridge`);
        await s.containers.remove(m.c);
      }
      await tb.stopAll();
      await tb.store.deletePrefix('/netd/v1/');
      t.same(await s.residue(), [], 'nothing left behind');
    });
  },
);
