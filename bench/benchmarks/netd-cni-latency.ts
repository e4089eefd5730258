import { join } from 'node:path';
import type { CommandRunner } from '../../sys/runner.js';
import { IpClient } from '../../sys/ip.js';
import { quantile } from '../stats.js';
import type { Benchmark } from '../benchmark.js';
import { NetdBenchHost } from './netd-host.js';

/**
 * CNI ADD and DEL latency of one VPC interface: netd (C shim plugin → daemon → ipam on etcd → veth,
 * bridge, vxlan) against the reference bridge + host-local chain, both invoked as a runtime would
 * (a process per call, in the host's namespace, sequentially), on the same virtual host.
 */

const CONTAINERS = 40;

export function netdCniLatencyBenchmark(runner: CommandRunner): Benchmark {
  const host = new NetdBenchHost(runner);
  let trial = 0;
  const rss: number[] = [];
  const invoke = async (
    plugin: string,
    command: 'ADD' | 'DEL',
    config: object,
    containerId: string,
    netnsPath: string,
  ) => (await host.invoke({ plugin, command, config, containerId, ifname: 'eth1', netnsPath })).ms;

  return {
    name: 'netd-cni-latency',
    title: `netd: CNI ADD/DEL latency of one VPC interface vs bridge + host-local (${CONTAINERS} containers, sequential)`,
    description:
      `${CONTAINERS} containers get one VPC interface each, one ADD after another, then are deleted one after another, on one ` +
      'virtual host. Subject: the netd plugin (a static C shim to the host daemon, which allocates from the cluster IPAM on ' +
      'etcd, fsync included, wires the veth and converges bridge + vxlan). Peer: the reference `bridge` plugin with `host-local` IPAM ' +
      '(node-local files, no cluster state). Latency per call, lower is better.',
    subjectLabel: 'netd',
    peerLabel: 'bridge + host-local',
    metrics: [
      { name: 'ADD p50', unit: 'ms', better: 'lower' },
      { name: 'ADD p99', unit: 'ms', better: 'lower' },
      { name: 'DEL p50', unit: 'ms', better: 'lower' },
      { name: 'DEL p99', unit: 'ms', better: 'lower' },
    ],
    runs: 3,
    needsRoot: true,
    async setup() {
      await host.setup({ vpcCidr: '10.128.0.0/16' });
    },
    async trial(side) {
      const n = trial++;
      const ip = new IpClient(runner);
      const names = Array.from({ length: CONTAINERS }, (_, i) => `tn-bcc${process.pid}-${n}-${i}`);
      await ip.addNetns(names);
      const config =
        side === 'subject'
          ? { cniVersion: '1.0.0', name: 'bench', type: 'netd', vpc: 'bench' }
          : {
              cniVersion: '1.0.0',
              name: 'bench',
              type: 'bridge',
              bridge: 'cni-bench',
              ipam: {
                type: 'host-local',
                ranges: [[{ subnet: '10.129.0.0/16' }]],
                dataDir: join(host.dir, 'host-local'),
              },
            };
      const plugin = side === 'subject' ? 'netd' : 'bridge';
      const add: number[] = [];
      const del: number[] = [];
      try {
        for (const [i, ns] of names.entries())
          add.push(await invoke(plugin, 'ADD', config, `c${n}-${i}`, `/run/netns/${ns}`));
        if (side === 'subject') rss.push(host.rssKb());
        for (const [i, ns] of names.entries())
          del.push(await invoke(plugin, 'DEL', config, `c${n}-${i}`, `/run/netns/${ns}`));
      } finally {
        await ip.deleteNetns(names);
      }
      return {
        'ADD p50': quantile(add, 0.5),
        'ADD p99': quantile(add, 0.99),
        'DEL p50': quantile(del, 0.5),
        'DEL p99': quantile(del, 0.99),
      };
    },
    teardown: () => host.teardown(),
    notes() {
      return rss.length ? [`netd RSS with ${CONTAINERS} endpoints: ${(Math.max(...rss) / 1024) | 0} MiB.`] : [];
    },
  };
}
