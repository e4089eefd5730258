import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { netdTestbed } from '../netd-hosts.js';
import { attachAll, deadHostThenCleanup } from '../routed-suite.js';
import { IpClient } from '../../../sys/ip.js';
import { NftClient } from '../../../sys/nft.js';
import { ROUTED_GATEWAY6, ROUTED_PROTO, routedTable } from '../../modes/routed.js';
import { GUARD_TABLE } from '../../source-guard.js';

/**
 * routed mode, IPv6: /128s behind fe80::1 on each host port, per-VPC tables reached by source rules,
 * remote blocks routed to their hosts' IPv6 underlay addresses (no encapsulation), and each port's
 * one source enforced by nftables. Reachability, isolation and forged sources are judged at the
 * receivers.
 */
t.test(
  'routed IPv6 VPCs: cross-host traffic without encapsulation, isolated from each other and the underlay, forged sources dropped; dead host routes withdrawn',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const sa = { name: 'sa', tenant: 't1', mode: 'routed' as const, cidr: 'fd10:60::/64', vni: 610 };
      const sb = { name: 'sb', tenant: 't2', mode: 'routed' as const, cidr: 'fd10:61::/64', vni: 611 };
      const tb = await netdTestbed(t, s, {
        label: 'routed6',
        vpcs: [sa, sb],
        externalPool: { name: 'ext', cidr: '100.64.8.0/24' },
        netd: { leaseTtl: 2, extraArgs: ['--sweep-interval', '3600'] },
      });
      const hostIp = (h: string) => new IpClient(s.runner, { name: s.cluster.host(h).netns });

      const { made, results } = await attachAll(t, s, tb, [
        ['sa1', 'h1', 'sa'],
        ['sa2', 'h2', 'sa'],
        ['sa3', 'h1', 'sa'],
        ['sb1', 'h1', 'sb'],
        ['sb2', 'h2', 'sb'],
      ]);
      {
        const ips = results.get('sa1')?.ips as Array<{ address: string; gateway?: string }> | undefined;
        t.match(ips?.[0]?.address, /^fd10:60::[0-9a-f:]+\/128$/, 'the result gives a /128');
        t.equal(ips?.[0]?.gateway, ROUTED_GATEWAY6, `and ${ROUTED_GATEWAY6} as its gateway`);
      }
      const by = (n: string) => made.get(n)!;

      // The container's side: a /128, no link-local address, the VPC's CIDR via fe80::1.
      {
        const sa1 = new IpClient(s.runner, { name: by('sa1').c.netns });
        const [eth1] = await sa1.addresses('eth1');
        t.same(
          eth1?.addr_info.filter((a) => a.family === 'inet6').map((a) => `${a.local}/${a.prefixlen}`),
          [`${by('sa1').ip}/128`],
          'sa1 holds a /128 and nothing else',
        );
        t.equal((await sa1.link('eth1'))?.mtu, d.underlay.mtu, 'no encapsulation: the underlay MTU');
        t.ok(
          (await sa1.routes({ family: 6 })).some((r) => r.dst === sa.cidr && r.gateway === ROUTED_GATEWAY6),
          `the VPC's CIDR via ${ROUTED_GATEWAY6}`,
        );
      }
      // The host's side: an IPv6 rule into the VPC's table; h2's block via h2's IPv6 underlay address.
      const table = String(routedTable(sa));
      {
        const h1 = hostIp('h1');
        t.ok(
          (await h1.rules(6)).some(
            (r) => r.src === 'fd10:60::' && r.srclen === 64 && r.table === table && r.protocol === String(ROUTED_PROTO),
          ),
          'h1 routes packets from sa by its own table',
        );
        const h2Underlay6 = s.cluster.host('h2').underlayIp6;
        t.ok(
          await eventually(
            async () => (await h1.routes({ family: 6, table })).some((r) => r.gateway === h2Underlay6),
            10_000,
          ),
          "h1's sa table sends h2's block to h2's IPv6 underlay address",
        );
      }

      // Same VPC across hosts and on one host: ICMPv6, TCP and UDP, each answered by the receiver.
      t.ok(
        await eventually(() => s.probe.ping(by('sa1').c.netns, by('sa2').ip, 500), 15_000),
        'sa1 reaches sa2 on the other host (icmp)',
      );
      t.ok(await s.probe.ping(by('sa1').c.netns, by('sa3').ip, 500), 'sa1 reaches sa3 on its own host');
      for (const protocol of ['tcp', 'udp'] as const) {
        t.ok(
          await s.probe.delivered({
            from: by('sa1').c.netns,
            to: by('sa2').c.netns,
            address: by('sa2').ip,
            protocol,
            port: 7200,
          }),
          `sa1 reaches sa2 (${protocol})`,
        );
      }
      t.ok(await eventually(() => s.probe.ping(by('sb2').c.netns, by('sb1').ip, 500), 15_000), 'sb2 reaches sb1');

      // Isolation, counted at the receivers. sb1 (root in its container) routes sa's CIDR through
      // its gateway, then forges a source of sa: sa2's server sees none of it, and h1's guard counts
      // the forged packets it dropped.
      const sa2 = by('sa2');
      const server = await s.probe.serve(sa2.c.netns, 'tcp', sa2.ip, 7300);
      const inSa2 = await s.probe.countIn(sa2.c.netns, 'tcp dport 7300');
      const outside = await s.probe.countIn(d.outside.netns, 'tcp dport 7301');
      const outsideServer = await s.probe.serve(d.outside.netns, 'tcp', d.outside.address6, 7301);
      const guardDrops = async () => {
        const table = await new NftClient(s.runner, { name: s.cluster.host('h1').netns }).table('ip6', GUARD_TABLE);
        const counter = JSON.stringify(table?.rules ?? []).match(/"counter":\{"packets":(\d+)/);
        return Number(counter?.[1] ?? -1);
      };
      try {
        const sb1ns = { name: by('sb1').c.netns };
        await s.runner.run({
          argv: ['ip', '-6', 'route', 'replace', sa.cidr, 'via', ROUTED_GATEWAY6, 'dev', 'eth1'],
          netns: sb1ns,
        });
        t.notOk(await s.probe.connect(sb1ns.name, 'tcp', sa2.ip, 7300, 800), "sb cannot reach sa's server");
        const dropsBefore = await guardDrops();
        t.ok(dropsBefore >= 0, "h1's guard table counts what it drops");
        const forged = 'fd10:60::ff:1';
        await s.runner.run({ argv: ['ip', 'addr', 'add', `${forged}/128`, 'dev', 'eth1', 'nodad'], netns: sb1ns });
        await s.runner.run({
          argv: ['ip', '-6', 'route', 'replace', sa.cidr, 'via', ROUTED_GATEWAY6, 'dev', 'eth1', 'src', forged],
          netns: sb1ns,
        });
        t.notOk(
          await s.probe.connect(sb1ns.name, 'tcp', sa2.ip, 7300, 800),
          "sb cannot reach sa's server with a forged sa source either",
        );
        t.ok((await guardDrops()) > dropsBefore, "h1's guard dropped sb1's forged packets");
        // sa3 forges sa1's address (a neighbour in its own VPC): dropped as well.
        const sa3ns = { name: by('sa3').c.netns };
        await s.runner.run({
          argv: ['ip', 'addr', 'add', `${by('sa1').ip}/128`, 'dev', 'eth1', 'nodad'],
          netns: sa3ns,
        });
        await s.runner.run({
          argv: ['ip', '-6', 'route', 'replace', sa.cidr, 'via', ROUTED_GATEWAY6, 'dev', 'eth1', 'src', by('sa1').ip],
          netns: sa3ns,
        });
        t.notOk(
          await s.probe.connect(sa3ns.name, 'tcp', sa2.ip, 7300, 800),
          'sa3 cannot send as sa1, its neighbour in the same VPC',
        );
        // An eth0 container on sa2's host sends IPv6 with an sa source to its host port's MAC (learnt
        // from its ARP for the IPv4 gateway): eth0 ports carry no IPv6, nothing is routed.
        {
          const x = await s.containers.add({ host: 'h2', name: 'xh2' });
          const conf = { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true };
          const env = { CNI_CONTAINERID: 'xh2', CNI_NETNS: x.netnsPath, CNI_IFNAME: 'ext0' };
          const add = await tb.plugin('h2', 'ADD', conf, env);
          t.ok(add.ok, `eth0 ADD: ${JSON.stringify(add.out)}`);
          const xns = { name: x.netns };
          await s.probe.ping(x.netns, '169.254.1.1', 500);
          const { stdout } = await s.runner.run({ argv: ['ip', '-j', 'neigh', 'show', 'dev', 'ext0'], netns: xns });
          const mac = (JSON.parse(stdout) as Array<{ dst: string; lladdr?: string }>).find(
            (n) => n.dst === '169.254.1.1',
          )?.lladdr;
          t.ok(mac, `the eth0 container learnt its host port's MAC (${mac})`);
          for (const argv of [
            ['ip', 'addr', 'add', 'fd10:60::ee:1/128', 'dev', 'ext0', 'nodad'],
            ['ip', '-6', 'neigh', 'replace', ROUTED_GATEWAY6, 'lladdr', mac ?? '00:00:00:00:00:01', 'dev', 'ext0'],
            ['ip', '-6', 'route', 'replace', sa.cidr, 'via', ROUTED_GATEWAY6, 'dev', 'ext0', 'src', 'fd10:60::ee:1'],
          ])
            await s.runner.run({ argv, netns: xns });
          t.notOk(
            await s.probe.connect(x.netns, 'tcp', sa2.ip, 7300, 800),
            "an eth0 container with a forged sa source cannot reach sa's server",
          );
          t.ok((await tb.plugin('h2', 'DEL', conf, env)).ok, 'eth0 DEL');
          await s.containers.remove(x);
        }
        t.equal(await inSa2.read(), 0, 'no packet from sb, nor sa3 posing as sa1, nor an eth0 container, reached sa2');
        // sa1 tries the outside world's IPv6 address through its eth1.
        await s.runner.run({
          argv: ['ip', '-6', 'route', 'replace', `${d.outside.address6}/128`, 'via', ROUTED_GATEWAY6, 'dev', 'eth1'],
          netns: { name: by('sa1').c.netns },
        });
        t.notOk(
          await s.probe.connect(by('sa1').c.netns, 'tcp', d.outside.address6, 7301, 800),
          'sa1 cannot reach the underlay through its VPC interface',
        );
        t.equal(await outside.read(), 0, 'nothing from sa1 reached the outside namespace');
        t.ok(await s.probe.connect(by('sa1').c.netns, 'tcp', sa2.ip, 7300), "sa1, in sa, reaches sa2's server");
        t.ok((await inSa2.read()) > 0, "sa2's counter saw sa1's packets (the same check, able to fail)");
      } finally {
        await inSa2.remove();
        await outside.remove();
        await server.stop();
        await outsideServer.stop();
      }

      // h2's netd dies and comes back (its block withdrawn and restored on h1), then DEL everything.
      const towardsH2 = async () =>
        (await hostIp('h1').routes({ family: 6, table })).some((r) => r.gateway === s.cluster.host('h2').underlayIp6);
      await deadHostThenCleanup(t, s, tb, {
        towardsH2,
        reachesAgain: () => s.probe.ping(by('sa1').c.netns, sa2.ip, 500),
        made,
      });
    });
  },
);
