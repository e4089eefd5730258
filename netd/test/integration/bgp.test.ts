import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { killDaemon, startDaemon, stopDaemon, type DaemonHandle } from '../../../sys/process.js';
import { IpClient } from '../../../sys/ip.js';
import { netdTestbed } from '../netd-hosts.js';
import { routedTable } from '../../modes/routed.js';
import { contains, parseCidr, parseIp } from '../../../core/cidr.js';

/**
 * A routed VPC on an L3 fabric: h1 and h2 each reach a BIRD "top-of-rack" router over their own
 * subnet (10.80.1.0/24, 10.80.2.0/24) and register those addresses as their underlay. Each host's
 * netd announces its blocks to the ToR through the host's BIRD; containers reach each other only
 * through the ToR (counted there); a dead host's routes leave the ToR.
 */

const TOR_ASN = 65000;
const HOST_ASN = 64512;

t.test(
  'routed VPC over an L3 fabric: blocks announced over BGP to a BIRD ToR, traffic through it, a dead host withdrawn',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const dir = mkdtempSync(join(tmpdir(), 'netd-bgp-'));
      const birds = new Map<string, DaemonHandle>();
      const tor = `tn-${d.prefix}-tor`;
      const ip = new IpClient(s.runner);
      const run = (netns: string, argv: string[]) => s.runner.run({ argv, netns: { name: netns } });
      const startBird = (name: string, netns: string, config: string) => {
        const conf = join(dir, `bird-${name}.conf`);
        writeFileSync(conf, config);
        birds.set(
          name,
          startDaemon({
            argv: ['bird', '-f', '-c', conf, '-s', join(dir, `bird-${name}.ctl`), '-P', join(dir, `bird-${name}.pid`)],
            netns: { name: netns },
            logFile: join(dir, `bird-${name}.log`),
          }),
        );
        return { conf, socket: join(dir, `bird-${name}.ctl`) };
      };
      try {
        // The fabric: a ToR namespace with one routed link per host.
        await ip.addNetns([tor]);
        await run(tor, ['ip', 'link', 'set', 'lo', 'up']);
        await run(tor, ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1']);
        const torPeers: string[] = [];
        for (const [i, host] of ['h1', 'h2'].entries()) {
          const h = s.cluster.host(host);
          const n = i + 1;
          await s.runner.run({
            argv: [
              'ip',
              'link',
              'add',
              'tor0',
              'netns',
              h.netns,
              'type',
              'veth',
              'peer',
              'name',
              `p${n}`,
              'netns',
              tor,
            ],
          });
          await run(h.netns, ['ip', 'addr', 'add', `10.80.${n}.2/24`, 'dev', 'tor0']);
          await run(h.netns, ['ip', 'addr', 'add', `fd80:${n}::2/64`, 'dev', 'tor0', 'nodad']);
          await run(h.netns, ['ip', 'link', 'set', 'tor0', 'up']);
          await run(tor, ['ip', 'addr', 'add', `10.80.${n}.1/24`, 'dev', `p${n}`]);
          await run(tor, ['ip', 'addr', 'add', `fd80:${n}::1/64`, 'dev', `p${n}`, 'nodad']);
          await run(tor, ['ip', 'link', 'set', `p${n}`, 'up']);
          // One IPv4 session per host, carrying both address families.
          torPeers.push(
            `protocol bgp ${host} { local 10.80.${n}.1 as ${TOR_ASN}; neighbor 10.80.${n}.2 as ${HOST_ASN}; hold time 9;`,
            '  ipv4 { import all; export none; }; ipv6 { import all; export none; }; }',
          );
        }
        startBird(
          'tor',
          tor,
          [
            'router id 10.80.1.1;',
            'protocol device { scan time 10; }',
            'protocol kernel { ipv4 { import none; export all; }; }',
            'protocol kernel { ipv6 { import none; export all; }; }',
            ...torPeers,
            '',
          ].join('\n'),
        );
        // Each host's BIRD starts with a bare configuration; netd writes the real one.
        const hostBird = new Map<string, { conf: string; socket: string }>();
        for (const [i, host] of ['h1', 'h2'].entries()) {
          hostBird.set(
            host,
            startBird(host, s.cluster.host(host).netns, `router id 10.80.${i + 1}.2;\nprotocol device {}\n`),
          );
        }

        const ra = { name: 'ra', tenant: 't1', mode: 'routed' as const, cidr: '10.60.0.0/24', vni: 660 };
        const rs = { name: 'rs', tenant: 't1', mode: 'routed' as const, cidr: 'fd10:70::/64', vni: 661 };
        const tb = await netdTestbed(t, s, {
          label: 'bgp',
          vpcs: [ra, rs],
          externalPool: { name: 'ext', cidr: '100.64.9.0/24' },
          netd: (host) => {
            const n = host === 'h1' ? 1 : 2;
            return {
              leaseTtl: 3,
              externalMode: 'routed',
              extraArgs: [
                '--sweep-interval',
                '3600',
                '--underlay-ip',
                `10.80.${n}.2`,
                '--uplink',
                'tor0',
                '--fabric-gateway',
                `10.80.${n}.1`,
                '--underlay-ip6',
                `fd80:${n}::2`,
                '--fabric-gateway6',
                `fd80:${n}::1`,
                '--bgp-asn',
                String(HOST_ASN),
                '--bgp-peer',
                `10.80.${n}.1:${TOR_ASN}`,
                '--bgp-config',
                hostBird.get(host)!.conf,
                '--bgp-socket',
                hostBird.get(host)!.socket,
                // What the operator lets hosts announce (BIRD checks it too).
                '--bgp-export',
                '10.60.0.0/16',
                '--bgp-export',
                '100.64.9.0/24',
                '--bgp-export',
                'fd10:70::/48',
              ],
            };
          },
        });
        const made = new Map<string, { netns: string; ip: string }>();
        for (const vpc of ['ra', 'rs']) {
          for (const host of ['h1', 'h2']) {
            const c = await s.containers.add({ host, name: `${vpc}${host}` });
            const add = await tb.plugin(
              host,
              'ADD',
              { cniVersion: '1.0.0', name: vpc, type: 'netd', vpc },
              { CNI_CONTAINERID: `${vpc}${host}`, CNI_NETNS: c.netnsPath, CNI_IFNAME: 'eth1' },
            );
            t.ok(add.ok, `ADD ${vpc} on ${host}: ${JSON.stringify(add.out)}`);
            made.set(`${vpc}${host}`, {
              netns: c.netns,
              ip: ((add.out.ips as Array<{ address: string }>)[0]?.address ?? '').split('/')[0]!,
            });
          }
        }
        const c1 = made.get('rah1')!;
        const c2 = made.get('rah2')!;
        const s1 = made.get('rsh1')!;
        const s2 = made.get('rsh2')!;
        const torRoutes = async () => [
          ...(await new IpClient(s.runner, { name: tor }).routes()),
          ...(await new IpClient(s.runner, { name: tor }).routes({ family: 6 })),
        ];
        const torRoutesTo = async (ipAddr: string, via: string) =>
          (await torRoutes()).some(
            (r) =>
              r.gateway === via &&
              r.dst.includes('/') &&
              parseCidr(r.dst).family === parseIp(ipAddr).family &&
              contains(parseCidr(r.dst), parseIp(ipAddr)),
          );
        t.ok(await eventually(() => torRoutesTo(c1.ip, '10.80.1.2'), 20_000), "the ToR learnt h1's block, via h1");
        t.ok(await eventually(() => torRoutesTo(c2.ip, '10.80.2.2'), 20_000), "the ToR learnt h2's block, via h2");
        t.ok(
          await eventually(() => torRoutesTo(s1.ip, 'fd80:1::2'), 20_000),
          "the ToR learnt h1's IPv6 block over the same session, via h1's IPv6 address",
        );
        t.ok(await eventually(() => torRoutesTo(s2.ip, 'fd80:2::2'), 20_000), "the ToR learnt h2's IPv6 block, via h2");
        const h1Table = await new IpClient(s.runner, { name: s.cluster.host('h1').netns }).routes({
          table: routedTable(ra),
        });
        t.ok(
          h1Table.some((r) => r.gateway === '10.80.1.1' && r.dev === 'tor0'),
          "h1 routes h2's block through the ToR",
        );

        // A routed eth0 address is announced too (a /32 from the external pool).

        {
          const c = await s.containers.add({ host: 'h1', name: 'exth1' });

          const add = await tb.plugin(
            'h1',

            'ADD',

            { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true },

            { CNI_CONTAINERID: 'exth1', CNI_NETNS: c.netnsPath, CNI_IFNAME: 'ext0' },
          );

          t.ok(add.ok, `eth0 ADD on h1: ${JSON.stringify(add.out)}`);

          const ext = ((add.out.ips as Array<{ address: string }>)[0]?.address ?? '').split('/')[0]!;

          t.ok(
            await eventually(
              async () => (await torRoutes()).some((r) => r.dst === ext && r.gateway === '10.80.1.2'),
              20_000,
            ),

            `the ToR learnt h1's eth0 address ${ext}/32, via h1`,
          );
        }

        // Traffic between the containers crosses the ToR: counted in its forward path.
        await run(tor, ['nft', 'add', 'table', 'ip', 'tn_c_tor']);
        await run(tor, [
          'nft',
          'add chain ip tn_c_tor fwd_count { type filter hook forward priority 0 ; policy accept ; }',
        ]);
        await run(tor, ['nft', 'add', 'rule', 'ip', 'tn_c_tor', 'fwd_count', 'ip', 'daddr', c2.ip, 'counter']);
        const forwarded = async () => {
          const { stdout } = await run(tor, ['nft', '-j', 'list', 'chain', 'ip', 'tn_c_tor', 'fwd_count']);
          const counter = (
            JSON.parse(stdout) as { nftables: Array<{ rule?: { expr: Array<{ counter?: { packets: number } }> } }> }
          ).nftables
            .flatMap((x) => x.rule?.expr ?? [])
            .find((e) => e.counter);
          return counter?.counter?.packets ?? 0;
        };
        t.ok(await eventually(() => s.probe.ping(c1.netns, c2.ip, 500), 20_000), 'the h1 container reaches the h2 one');
        t.ok(
          await s.probe.delivered({ from: c1.netns, to: c2.netns, address: c2.ip, protocol: 'tcp', port: 7400 }),
          'and opens a TCP connection to it',
        );
        t.ok((await forwarded()) > 0, `the ToR forwarded the packets (${await forwarded()})`);
        // IPv6: the same, counted in the ToR's IPv6 forward path.
        await run(tor, ['nft', 'add', 'table', 'ip6', 'tn_c_tor6']);
        await run(tor, [
          'nft',
          'add chain ip6 tn_c_tor6 fwd_count { type filter hook forward priority 0 ; policy accept ; }',
        ]);
        await run(tor, ['nft', 'add', 'rule', 'ip6', 'tn_c_tor6', 'fwd_count', 'ip6', 'daddr', s2.ip, 'counter']);
        const forwarded6 = async () => {
          const { stdout } = await run(tor, ['nft', '-j', 'list', 'chain', 'ip6', 'tn_c_tor6', 'fwd_count']);
          return Number(/"packets":\s*(\d+)/.exec(stdout)?.[1] ?? 0);
        };
        t.ok(
          await eventually(() => s.probe.ping(s1.netns, s2.ip, 500), 20_000),
          'the h1 IPv6 container reaches the h2 one',
        );
        t.ok(
          await s.probe.delivered({ from: s1.netns, to: s2.netns, address: s2.ip, protocol: 'tcp', port: 7401 }),
          'and opens a TCP connection to it',
        );
        t.ok((await forwarded6()) > 0, `the ToR forwarded the IPv6 packets (${await forwarded6()})`);

        // h2 dies (netd and its BIRD): the ToR drops h2's block once the BGP session is gone.
        killDaemon(tb.daemons.get('h2')!.handle, 'SIGKILL');
        killDaemon(birds.get('h2')!, 'SIGKILL');
        await birds.get('h2')!.exited;
        birds.delete('h2');
        t.ok(
          await eventually(
            async () => !(await torRoutesTo(c2.ip, '10.80.2.2')) && !(await torRoutesTo(s2.ip, 'fd80:2::2')),
            15_000,
          ),
          "h2's routes (both families) left the ToR",
        );
        t.ok((await torRoutesTo(c1.ip, '10.80.1.2')) && (await torRoutesTo(s1.ip, 'fd80:1::2')), "h1's stay");
      } finally {
        for (const b of birds.values()) await stopDaemon(b, 2000).catch(() => undefined);
        await ip.deleteNetns([tor]).catch(() => undefined);
        rmSync(dir, { recursive: true, force: true });
      }
    });
  },
);
