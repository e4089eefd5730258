import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { netdTestbed } from '../netd-hosts.js';
import { attachAll, deadHostThenCleanup } from '../routed-suite.js';
import { IpClient } from '../../../sys/ip.js';
import { ROUTED_GATEWAY, ROUTED_PROTO, routedTable } from '../../modes/routed.js';

/**
 * routed mode: /32s behind a link-local gateway, per-VPC tables reached by source rules, remote
 * blocks routed to their hosts over the underlay (no encapsulation). Beside them, a vxlan VPC with
 * the same CIDR as a routed one. Reachability and isolation are judged at the receivers.
 */
t.test(
  'routed VPCs: cross-host traffic without encapsulation, isolated from other VPCs, the underlay and forged sources; dead host routes withdrawn',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const ra = { name: 'ra', tenant: 't1', mode: 'routed' as const, cidr: '10.60.0.0/24', vni: 600 };
      const rb = { name: 'rb', tenant: 't2', mode: 'routed' as const, cidr: '10.61.0.0/24', vni: 601 };
      const vx = { name: 'vx', tenant: 't3', mode: 'vxlan' as const, cidr: '10.60.0.0/24', vni: 602 };
      const tb = await netdTestbed(t, s, {
        label: 'routed',
        vpcs: [ra, rb, vx],
        externalPool: { name: 'ext', cidr: '100.64.7.0/24' },
        netd: { leaseTtl: 2, extraArgs: ['--sweep-interval', '3600'] },
      });
      const hostIp = (h: string) => new IpClient(s.runner, { name: s.cluster.host(h).netns });

      const { made } = await attachAll(t, s, tb, [
        ['ra1', 'h1', 'ra'],
        ['ra2', 'h2', 'ra'],
        ['rb1', 'h1', 'rb'],
        ['rb2', 'h2', 'rb'],
        ['vx1', 'h1', 'vx'],
        ['vx2', 'h2', 'vx'],
      ]);
      const by = (n: string) => made.get(n)!;

      // The container's side: a /32 and the VPC's CIDR via the link-local gateway; underlay MTU.
      {
        const ra1 = new IpClient(s.runner, { name: by('ra1').c.netns });
        const [eth1] = await ra1.addresses('eth1');
        t.same(
          eth1?.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
          [`${by('ra1').ip}/32`],
          'ra1 holds a /32',
        );
        t.equal((await ra1.link('eth1'))?.mtu, d.underlay.mtu, 'no encapsulation: the underlay MTU');
        t.ok(
          (await ra1.routes()).some((r) => r.dst === ra.cidr && r.gateway === ROUTED_GATEWAY && r.dev === 'eth1'),
          `the VPC's CIDR via ${ROUTED_GATEWAY}`,
        );
      }
      // The host's side: a rule from the VPC's CIDR into its table; h2's block via h2's address.
      {
        const h1 = hostIp('h1');
        const table = String(routedTable(ra));
        t.ok(
          (await h1.rules()).some(
            (r) => r.src === '10.60.0.0' && r.srclen === 24 && r.table === table && r.protocol === String(ROUTED_PROTO),
          ),
          'h1 routes packets from ra by its own table',
        );
        const h2Underlay = s.cluster.host('h2').underlayIp;
        t.ok(
          await eventually(async () => (await h1.routes({ table })).some((r) => r.gateway === h2Underlay), 10_000),
          "h1's ra table sends h2's block to h2's underlay address",
        );
      }

      // Same VPC across hosts: ICMP, TCP and UDP, each answered by the receiver.
      t.ok(
        await eventually(() => s.probe.ping(by('ra1').c.netns, by('ra2').ip, 500), 15_000),
        'ra1 reaches ra2 (icmp)',
      );
      for (const protocol of ['tcp', 'udp'] as const) {
        t.ok(
          await s.probe.delivered({
            from: by('ra1').c.netns,
            to: by('ra2').c.netns,
            address: by('ra2').ip,
            protocol,
            port: 7200,
          }),
          `ra1 reaches ra2 (${protocol})`,
        );
      }
      t.ok(await eventually(() => s.probe.ping(by('rb2').c.netns, by('rb1').ip, 500), 15_000), 'rb2 reaches rb1');
      t.ok(
        await eventually(() => s.probe.ping(by('vx1').c.netns, by('vx2').ip, 500), 15_000),
        'the vxlan VPC with the same CIDR as ra works beside it',
      );

      // Packets a container sends to its gateway end at the host: none is forwarded (a route
      // through lo would loop each one until its TTL ran out).
      {
        const loTx = async () => {
          const { stdout } = await s.runner.run({
            argv: ['ip', '-s', '-j', 'link', 'show', 'lo'],
            netns: { name: s.cluster.host('h1').netns },
          });
          return (JSON.parse(stdout) as Array<{ stats64: { tx: { packets: number } } }>)[0]!.stats64.tx.packets;
        };
        const before = await loTx();
        for (let i = 0; i < 5; i++) await s.probe.ping(by('ra1').c.netns, ROUTED_GATEWAY, 200);
        t.equal((await loTx()) - before, 0, 'pings to the gateway are not looped through lo');
      }

      // Isolation, counted at the receivers. rb1 (root in its container) adds a route to ra's CIDR,
      // then also forges a source address of ra; ra2's server sees none of it.
      const ra2 = by('ra2');
      const server = await s.probe.serve(ra2.c.netns, 'tcp', ra2.ip, 7300);
      const inRa2 = await s.probe.countIn(ra2.c.netns, 'tcp dport 7300');
      const outside = await s.probe.countIn(d.outside.netns, 'tcp dport 7301');
      const outsideServer = await s.probe.serve(d.outside.netns, 'tcp', d.outside.address, 7301);
      try {
        const rb1ns = { name: by('rb1').c.netns };
        await s.runner.run({
          argv: ['ip', 'route', 'replace', ra.cidr, 'via', ROUTED_GATEWAY, 'dev', 'eth1', 'onlink'],
          netns: rb1ns,
        });
        t.notOk(await s.probe.connect(rb1ns.name, 'tcp', ra2.ip, 7300, 800), "rb cannot reach ra's server");
        const forged = '10.60.0.250';
        await s.runner.run({ argv: ['ip', 'addr', 'add', `${forged}/32`, 'dev', 'eth1'], netns: rb1ns });
        await s.runner.run({
          argv: ['ip', 'route', 'replace', ra.cidr, 'via', ROUTED_GATEWAY, 'dev', 'eth1', 'onlink', 'src', forged],
          netns: rb1ns,
        });
        t.notOk(
          await s.probe.connect(rb1ns.name, 'tcp', ra2.ip, 7300, 800),
          "rb cannot reach ra's server with a forged ra source either",
        );
        // An eth0 container on h2 (ra2's host) forges an ra source on its external interface.
        {
          const x = await s.containers.add({ host: 'h2', name: 'xh2' });
          const add = await tb.plugin(
            'h2',
            'ADD',
            { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true },
            { CNI_CONTAINERID: 'xh2', CNI_NETNS: x.netnsPath, CNI_IFNAME: 'ext0' },
          );
          t.ok(add.ok, `eth0 ADD: ${JSON.stringify(add.out)}`);
          const xns = { name: x.netns };
          await s.runner.run({ argv: ['ip', 'addr', 'add', `${forged}/32`, 'dev', 'ext0'], netns: xns });
          await s.runner.run({
            argv: ['ip', 'route', 'replace', ra.cidr, 'via', ROUTED_GATEWAY, 'dev', 'ext0', 'onlink', 'src', forged],
            netns: xns,
          });
          t.notOk(
            await s.probe.connect(xns.name, 'tcp', ra2.ip, 7300, 800),
            "an eth0 container with a forged ra source cannot reach ra's server",
          );
          const del = await tb.plugin(
            'h2',
            'DEL',
            { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true },
            { CNI_CONTAINERID: 'xh2', CNI_NETNS: x.netnsPath, CNI_IFNAME: 'ext0' },
          );
          t.ok(del.ok, 'eth0 DEL');
        }
        t.equal(await inRa2.read(), 0, 'no packet from rb, nor from the eth0 container, reached ra2');
        // ra1 tries the underlay's outside address through its eth1.
        await s.runner.run({
          argv: ['ip', 'route', 'replace', `${d.outside.address}/32`, 'via', ROUTED_GATEWAY, 'dev', 'eth1', 'onlink'],
          netns: { name: by('ra1').c.netns },
        });
        t.notOk(
          await s.probe.connect(by('ra1').c.netns, 'tcp', d.outside.address, 7301, 800),
          'ra1 cannot reach the underlay through its VPC interface',
        );
        t.equal(await outside.read(), 0, 'nothing from ra1 reached the outside namespace');
        t.ok(await s.probe.connect(by('ra1').c.netns, 'tcp', ra2.ip, 7300), "ra1, in ra, reaches ra2's server");
        t.ok((await inRa2.read()) > 0, "ra2's counter saw ra1's packets (the same check, able to fail)");
      } finally {
        await inRa2.remove();
        await outside.remove();
        await server.stop();
        await outsideServer.stop();
      }

      // h2's netd dies and comes back (its block withdrawn and restored on h1), then DEL everything.
      const table = routedTable(ra);
      const towardsH2 = async () =>
        (await hostIp('h1').routes({ table })).some((r) => r.gateway === s.cluster.host('h2').underlayIp);
      await deadHostThenCleanup(t, s, tb, {
        towardsH2,
        reachesAgain: () => s.probe.ping(by('ra1').c.netns, ra2.ip, 500),
        made,
      });
    });
  },
);
