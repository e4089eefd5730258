import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { withCluster, type ClusterSession } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { startDaemon, stopDaemon } from '../../../sys/process.js';
import { TcClient } from '../../../sys/tc.js';
import { attachInternal } from '../direct-attach.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { netdTestbed } from '../netd-hosts.js';

interface Interval {
  bps: number;
}

/** iperf3 from `from` to `server` (or the reverse direction with reverse=true), per-second rates. */
async function iperf(
  s: ClusterSession,
  from: string,
  serverNetns: string,
  serverIp: string,
  seconds: number,
  reverse: boolean,
  port: number,
): Promise<{ intervals: Interval[]; received: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'iperf-'));
  const server = startDaemon({
    argv: ['iperf3', '-s', '-1', '-B', serverIp, '-p', String(port)],
    netns: { name: serverNetns },
    logFile: join(dir, 'server.log'),
  });
  try {
    // iperf3 -s needs a moment to listen: wait for its socket, not for a fixed time.
    const listening = async () =>
      (
        await s.runner.run({ argv: ['ss', '-Htln', 'sport', '=', `:${port}`], netns: { name: serverNetns } })
      ).stdout.trim() !== '';
    if (!(await eventually(listening, 10_000, 20))) throw new Error(`iperf3 server on port ${port} did not listen`);
    const { stdout } = await s.runner.run({
      // -O 1: the first second (slow start, filling the bucket) is left out of the summary.
      argv: [
        'iperf3',
        '-c',
        serverIp,
        '-p',
        String(port),
        '-t',
        String(seconds),
        '-O',
        '1',
        '-i',
        '1',
        '-J',
        ...(reverse ? ['-R'] : []),
      ],
      netns: { name: from },
      timeoutMs: (seconds + 20) * 1000,
    });
    const report = JSON.parse(stdout) as {
      intervals: Array<{ sum: { bits_per_second: number; omitted: boolean } }>;
      end: { sum_received: { bits_per_second: number } };
    };
    return {
      intervals: report.intervals.filter((i) => !i.sum.omitted).map((i) => ({ bps: i.sum.bits_per_second })),
      received: report.end.sum_received.bits_per_second,
    };
  } finally {
    await stopDaemon(server, 1000);
    rmSync(dir, { recursive: true, force: true });
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

t.test(
  'QoS: 10, 100 and 500 Mbit/s in each direction within 5%, and a change through etcd takes effect on a running flow',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 1 }, async (s) => {
      const tb = await netdTestbed(t, s, {
        label: 'qos',
        vpcs: [{ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.90.0.0/24', vni: 900 }],
        start: false,
      });
      const { store } = tb;
      const deps = tb.attachDeps('h1');
      const limited = await s.containers.add({ host: 'h1', name: 'lim' });
      const peer = await s.containers.add({ host: 'h1', name: 'peer' });
      const a = await attachInternal(
        { containerId: 'lim', ifname: 'eth1', netnsPath: limited.netnsPath, vpc: 'a' },
        deps,
      );
      const b = await attachInternal(
        { containerId: 'peer', ifname: 'eth1', netnsPath: peer.netnsPath, vpc: 'a' },
        deps,
      );
      // netd starts after the CNI side (outside a daemon nothing claims a port while it is wired).
      await tb.start();
      t.ok(
        await eventually(() => s.probe.ping(limited.netns, b.allocation.ip, 500), 20_000),
        'the two containers talk',
      );

      const tc = new TcClient(s.runner, { name: s.cluster.host('h1').netns });
      const rateOf = async (dev: string) => (await tc.qdiscs(dev)).find((q) => q.kind === 'tbf')?.options?.rate;
      const port = linkNames.internalPort(a.endpoint.id);
      const setQos = async (mbit: number) => {
        const key = modelKeys.endpoint('a', a.endpoint.id);
        const rec = JSON.parse((await store.get(key))!.value) as EndpointRecord;
        await store.put(key, JSON.stringify({ ...rec, qos: { ingressBps: mbit * 1e6, egressBps: mbit * 1e6 } }));
        // The daemon's watch and reconcile: done once tc shows the new rate (bytes/s) both ways.
        const bytes = (mbit * 1e6) / 8;
        t.ok(
          await eventually(
            async () => (await rateOf(port)) === bytes && (await rateOf(linkNames.ifbFor(port))) === bytes,
            10_000,
          ),
          `${mbit} Mbit/s is in place on ${port} and its ifb`,
        );
      };
      let iperfPort = 5201;
      for (const mbit of [10, 100, 500]) {
        await setQos(mbit);
        for (const [direction, reverse] of [
          ['out of the container', false],
          ['into the container', true],
        ] as const) {
          const started = Date.now();
          const measured =
            (await iperf(s, limited.netns, peer.netns, b.allocation.ip, 3, reverse, iperfPort++)).received / 1e6;
          t.comment(`iperf3 took ${Date.now() - started} ms`);
          const error = Math.abs(measured - mbit) / mbit;
          t.ok(
            error <= 0.05,
            `${mbit} Mbit/s ${direction}: measured ${measured.toFixed(1)} Mbit/s (${(error * 100).toFixed(1)}% off)`,
          );
        }
      }

      // A running flow: 10 Mbit/s, then raised to 100 through etcd (what the API does) mid-flow.
      // (Raising, not lowering: iperf3's own control connection shares the shaped path, and a sudden
      // tenfold cut can starve its end-of-test exchange.)
      await setQos(10);
      const flow = iperf(s, limited.netns, peer.netns, b.allocation.ip, 7, false, iperfPort++);
      await sleep(3500); // the flow runs at 10 Mbit/s for a while
      await setQos(100);
      const { intervals } = await flow;
      t.comment(`per-second rates: ${intervals.map((i) => (i.bps / 1e6).toFixed(1)).join(', ')}`);
      const before = mean(intervals.slice(0, 1).map((i) => i.bps)) / 1e6;
      const after = mean(intervals.slice(-2).map((i) => i.bps)) / 1e6;
      t.ok(
        before > 6 && before < 14 && after > 85 && after < 106,
        `the same flow went from ${before.toFixed(1)} to ${after.toFixed(1)} Mbit/s without reconnecting`,
      );

      await tb.stopAll();
      await store.deletePrefix('/netd/v1/');
      await s.containers.remove(limited);
      await s.containers.remove(peer);
    });
  },
);
