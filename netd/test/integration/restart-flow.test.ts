import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { killDaemon } from '../../../sys/process.js';
import { netdTestbed } from '../netd-hosts.js';

const INTERVAL_MS = 10;
const PINGS = 1000;

/**
 * A cluster running vxlan, routed and vlan VPCs at once, containers of each on both hosts: no VPC
 * reaches another (judged at the receivers). Then netd restarts (SIGKILL, then a new daemon) on a
 * host while containers of each mode run there: a
 * running flow between hosts loses nothing (netd's start converges what it finds; it does not
 * rebuild). Measured at the sender as echo replies, i.e. delivered both ways.
 */
t.test(
  'all three modes at once on both hosts: each VPC isolated from the others, and a netd restart under running flows loses at most a few ms',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2, vlan: true }, async (s) => {
      const tb = await netdTestbed(t, s, {
        label: 'restart-flow',
        vpcs: [
          { name: 'fv', tenant: 't1', mode: 'vxlan', cidr: '10.62.0.0/24', vni: 620 },
          { name: 'fr', tenant: 't1', mode: 'routed', cidr: '10.63.0.0/24', vni: 621 },
          { name: 'fl', tenant: 't1', mode: 'vlan', cidr: '10.64.0.0/24', vni: 622, vlan: 622, physnet: 'physnet0' },
        ],
        // The host's registration must outlive the restart (as a graceful upgrade's does).
        netd: { leaseTtl: 15, extraArgs: ['--sweep-interval', '3600'] },
      });
      const pairs: Array<{ vpc: string; from: string; to: string; toNetns: string }> = [];
      for (const vpc of ['fv', 'fr', 'fl']) {
        const ends: Array<{ netns: string; ip: string }> = [];
        for (const host of ['h1', 'h2']) {
          const name = `${vpc}${host}`;
          const c = await s.containers.add({ host, name });
          const add = await tb.plugin(
            host,
            'ADD',
            { cniVersion: '1.0.0', name: vpc, type: 'netd', vpc },
            { CNI_CONTAINERID: name, CNI_NETNS: c.netnsPath, CNI_IFNAME: 'eth1' },
          );
          t.ok(add.ok, `ADD ${name}`);
          ends.push({
            netns: c.netns,
            ip: ((add.out.ips as Array<{ address: string }>)[0]?.address ?? '').split('/')[0]!,
          });
        }
        t.ok(
          await eventually(() => s.probe.ping(ends[0]!.netns, ends[1]!.ip, 500), 15_000),
          `${vpc}: the flow's path works`,
        );
        pairs.push({ vpc, from: ends[0]!.netns, to: ends[1]!.ip, toNetns: ends[1]!.netns });
      }
      // Isolation between modes: a container (root in it) routes every other VPC's CIDR out of its
      // eth1 and pings the other VPCs' containers on h2; nothing arrives there.
      for (const src of pairs) {
        const routed = src.vpc === 'fr';
        await s.runner.run({
          argv: [
            'ip',
            'route',
            'add',
            '10.0.0.0/8',
            'dev',
            'eth1',
            ...(routed ? ['via', '169.254.1.1', 'onlink'] : []),
          ],
          netns: { name: src.from },
        });
      }
      for (const src of pairs) {
        for (const dst of pairs) {
          if (dst === src) continue;
          const seen = await s.probe.countIn(dst.toNetns, 'meta l4proto icmp');
          try {
            t.notOk(await s.probe.ping(src.from, dst.to, 300), `${src.vpc} cannot reach ${dst.vpc}`);
            t.equal(await seen.read(), 0, `nothing from ${src.vpc} arrived in ${dst.vpc}`);
          } finally {
            await seen.remove();
          }
        }
      }
      // A flow per mode from h1 to h2, 10 ms apart for 10 s; netd on h1 is killed and restarted in the middle.
      const flows = pairs.map(async (p) => {
        const { stdout } = await s.runner
          .run({
            argv: ['ping', '-n', '-q', '-i', String(INTERVAL_MS / 1000), '-c', String(PINGS), '-W', '1', p.to],
            netns: { name: p.from },
            timeoutMs: 60_000,
          })
          .catch((err: { stdout?: string }) => ({ stdout: err.stdout ?? '' }));
        const m = /(\d+) packets transmitted, (\d+) received/.exec(stdout);
        return { vpc: p.vpc, sent: Number(m?.[1] ?? 0), received: Number(m?.[2] ?? 0) };
      });
      await new Promise((r) => setTimeout(r, 1000));
      const h1 = tb.daemons.get('h1')!;
      killDaemon(h1.handle, 'SIGKILL');
      await h1.handle.exited;
      await tb.start(['h1']); // asserts "netd on h1 ready"
      for (const f of await Promise.all(flows)) {
        const lostMs = (f.sent - f.received) * INTERVAL_MS;
        t.comment(`${f.vpc}: ${f.received}/${f.sent} echoes answered across the restart (${lostMs} ms lost)`);
        t.equal(f.sent, PINGS, `${f.vpc}: the flow ran throughout`);
        t.ok(lostMs <= 30, `${f.vpc}: at most 30 ms of the flow lost (${lostMs} ms)`);
      }
    });
  },
);
