import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { TcClient } from '../../../sys/tc.js';
import { attachInternal } from '../direct-attach.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { netdTestbed, vlanOf } from '../netd-hosts.js';
import { iperf } from '../iperf.js';

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

for (const mode of ['vxlan', 'routed', 'vlan'] as const) {
  // Every mode shapes both directions (vlan on Open vSwitch's userspace datapath, this machine's,
  // through each port's shaper veth instead of an ifb: vlan-host.ts).
  const shapesEgress = true;
  // Rates are IP-layer rates. On the userspace datapath every frame OVS hands on is one 1448-byte
  // segment with its 52 bytes of IP and TCP headers, each counted by the shaper: iperf3's goodput is
  // 1448/1500 of the rate into the container. Out of it, the container's segments may reach the
  // shaper still merged into one GSO packet (headers counted once, as in the other modes) or one by
  // one: between 1448/1500 and all of the rate. And that datapath is a process copying every
  // frame: on this 2-core machine beside another test file it carried as little as 255 Mbit/s
  // (CI), so vlan is measured up to 200, where the shaper and not the datapath sets the rate.
  // In the kernel modes a shaped direction may see the container's segments merged into GSO packets
  // (headers counted once: goodput ~ the rate) or, at low rates where TCP's autosizing sends one
  // segment per packet, one by one, each counted with its headers (52 bytes of IP and TCP, 66 with Ethernet)
  // (CI measured 9.4 of 10 out of a routed container): between 1448/1514 and all of the rate.
  const goodputShare = (reverse: boolean) =>
    mode !== 'vlan' ? { low: 1448 / 1514, high: 1 } : { low: 1448 / 1500, high: reverse ? 1448 / 1500 : 1 };
  const rates = mode === 'vlan' ? [10, 100, 200] : [10, 100, 500];
  t.test(
    `QoS (${mode}): ${rates.join(', ')} Mbit/s ${shapesEgress ? 'in each direction' : 'into the container'} within 5%, and a change through etcd takes effect on a running flow`,
    async (t) => {
      if (!requireRoot(t)) return;
      await withCluster({ hosts: 1, vlan: mode === 'vlan' }, async (s) => {
        const tb = await netdTestbed(t, s, {
          label: 'qos',
          vpcs: [{ name: 'a', tenant: 't1', mode, cidr: '10.90.0.0/24', vni: 900, ...vlanOf(mode, 900) }],
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
          await store.put(
            key,
            JSON.stringify({ ...rec, qos: { ingressBps: mbit * 1e6, ...(shapesEgress && { egressBps: mbit * 1e6 }) } }),
          );
          // The daemon's watch and reconcile: done once tc shows the new rate (bytes/s) both ways.
          const bytes = (mbit * 1e6) / 8;
          t.ok(
            await eventually(
              async () =>
                (await rateOf(port)) === bytes && (!shapesEgress || (await rateOf(linkNames.ifbFor(port))) === bytes),
              10_000,
            ),
            `${mbit} Mbit/s is in place on ${port}${shapesEgress ? ' and its ifb' : ''}`,
          );
        };
        let iperfPort = 5201;
        for (const mbit of rates) {
          await setQos(mbit);
          for (const [direction, reverse] of [
            ['out of the container', false],
            ['into the container', true],
          ] as const) {
            if (!reverse && !shapesEgress) continue;
            const started = Date.now();
            // At 10 Mbit/s a 0.15 s scheduling hiccup of either iperf3 under a busy suite is 5% of a
            // 3 s run; a longer run keeps the same 5% bound about the shaper, not about the timer.
            const seconds = mbit === 10 ? 8 : 3;
            const measured =
              (await iperf(s, limited.netns, peer.netns, b.allocation.ip, seconds, reverse, iperfPort++)).received /
              1e6;
            t.comment(`iperf3 took ${Date.now() - started} ms`);
            const share = goodputShare(reverse);
            const [low, high] = [mbit * share.low, mbit * share.high];
            const error = measured < low ? (low - measured) / low : measured > high ? (measured - high) / high : 0;
            const expected = low === high ? low.toFixed(1) : `${low.toFixed(1)}..${high.toFixed(1)}`;
            t.ok(
              error <= 0.05,
              `${mbit} Mbit/s ${direction}: measured ${measured.toFixed(1)} Mbit/s of goodput (${(error * 100).toFixed(1)}% off ${expected})`,
            );
          }
        }

        // A running flow: 10 Mbit/s, then raised to 100 through etcd (what the API does) mid-flow.
        // (Raising, not lowering: iperf3's own control connection shares the shaped path, and a sudden
        // tenfold cut can starve its end-of-test exchange.)
        await setQos(10);
        const flow = iperf(s, limited.netns, peer.netns, b.allocation.ip, 7, !shapesEgress, iperfPort++);
        await sleep(3500); // the flow runs at 10 Mbit/s for a while
        await setQos(100);
        const { intervals } = await flow;
        t.comment(`per-second rates: ${intervals.map((i) => (i.bps / 1e6).toFixed(1)).join(', ')}`);
        // The second measured second is the steady 10 Mbit/s (the first may still carry the bucket's
        // burst: CI saw 12.9 and 15.2 there, then 10.3 and 10.4); the raise comes in the third.
        const before = mean(intervals.slice(1, 2).map((i) => i.bps)) / 1e6;
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
}
