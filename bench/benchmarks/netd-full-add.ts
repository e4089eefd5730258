import { join } from 'node:path';
import type { CommandRunner } from '../../sys/runner.js';
import { IpClient } from '../../sys/ip.js';
import { quantile } from '../stats.js';
import type { Benchmark } from '../benchmark.js';
import type { EtcdMembers } from './bench-cluster.js';
import { NetdBenchHost } from './netd-host.js';

/**
 * A whole container: eth0 (external) and eth1 (its VPC), both rate-limited in both directions by
 * the CNI bandwidth capability, as podman attaches two networks (one after the other). netd: two
 * single-plugin network lists. Reference: the chain that does the same, twice (bridge + host-local
 * + bandwidth for eth0 with a default route, and again for eth1), run as libcni runs a list.
 */

const CONTAINERS = 30;
const BANDWIDTH = {
  ingressRate: 100_000_000,
  ingressBurst: 1_000_000,
  egressRate: 100_000_000,
  egressBurst: 1_000_000,
};

export function netdFullAddBenchmark(
  runner: CommandRunner,
  opts: { etcdMembers: EtcdMembers; suffix: string },
): Benchmark {
  const host = new NetdBenchHost(runner);
  let trial = 0;
  const lists = (side: 'subject' | 'peer') => {
    if (side === 'subject') {
      return [
        {
          ifname: 'eth0',
          list: {
            cniVersion: '1.0.0',
            name: 'external',
            plugins: [{ type: 'netd', external: true, capabilities: { bandwidth: true } }],
          },
        },
        {
          ifname: 'eth1',
          list: {
            cniVersion: '1.0.0',
            name: 'vpc-bench',
            plugins: [{ type: 'netd', vpc: 'bench', capabilities: { bandwidth: true } }],
          },
        },
      ];
    }
    const chain = (name: string, bridge: string, subnet: string, gateway: boolean) => ({
      cniVersion: '1.0.0',
      name,
      plugins: [
        {
          type: 'bridge',
          bridge,
          isGateway: gateway,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet }]],
            dataDir: join(host.dir, 'host-local'),
            ...(gateway && { routes: [{ dst: '0.0.0.0/0' }] }),
          },
        },
        { type: 'bandwidth', capabilities: { bandwidth: true } },
      ],
    });
    return [
      { ifname: 'eth0', list: chain('ref-external', 'cni-ext', '10.130.0.0/16', true) },
      { ifname: 'eth1', list: chain('ref-vpc', 'cni-vpc', '10.129.0.0/16', false) },
    ];
  };

  return {
    name: `netd-full-add${opts.suffix}`,
    title: `netd: a whole container (eth0 external + eth1 VPC, QoS both ways on both) vs bridge + host-local + bandwidth, twice (${CONTAINERS} containers, sequential, ${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `${CONTAINERS} containers are attached one after another to two networks each, as podman does with ` +
      '`--network external --network vpc`, with the bandwidth capability (100 Mbit/s each way) on both, then detached. ' +
      'Subject: netd (two single-plugin network lists). Peer: the reference chain `bridge` + `host-local` + `bandwidth`, ' +
      'once per network, each plugin a process given the previous result as libcni does. Time per container, both ' +
      'interfaces; lower is better.',
    subjectLabel: 'netd',
    peerLabel: '(bridge + host-local + bandwidth) × 2',
    subjectOnly: [
      'cluster-wide addresses for both interfaces (external pool and VPC): one etcd transaction per interface on ADD ' +
        '(address + record), a record delete and a release transaction per interface on DEL',
      'eth0: a /32 with a default route via a link-local gateway the host answers by proxy ARP, a /32 host route, ' +
        'and SNAT out of the uplink (nft table made once)',
      'eth1: a VXLAN device on the VPC bridge; bridges without multicast snooping; no IPv6 link-local on any veth end',
      'a daemon (Node.js) that follows etcd and reconciles the host',
      'on DEL of a limited interface, the ifb is deleted in the same `ip` process as the veth (two unregistrations)',
    ],
    peerOnly: [
      'three Go processes per network and call (bridge, the host-local it runs, bandwidth), six per container ADD ' +
        'and six per DEL (netd: one small static C plugin process and a socket call per network)',
      'a gateway address on each bridge (isGateway) and IP forwarding switched on; sysctls per ADD (accept_ra, ' +
        'accept_dad, arp_notify); the containers keep IPv6 link-local addresses',
      'host-local: a lock file and one file per address in a directory, no fsync',
      'no NAT (ipMasq off): the peer does less than netd on eth0',
    ],
    store: () => host.describeStore(),
    metrics: [
      { name: 'ADD p50', unit: 'ms', better: 'lower' },
      { name: 'ADD p99', unit: 'ms', better: 'lower' },
      { name: 'DEL p50', unit: 'ms', better: 'lower' },
      { name: 'DEL p99', unit: 'ms', better: 'lower' },
    ],
    runs: 3,
    needsRoot: true,
    setup: () =>
      host.setup({
        vpcs: [{ name: 'bench', cidr: '10.128.0.0/16' }],
        externalCidr: '100.64.0.0/16',
        etcdMembers: opts.etcdMembers,
      }),
    async trial(side) {
      const n = trial++;
      const ip = new IpClient(runner);
      const names = Array.from({ length: CONTAINERS }, (_, i) => `tn-bcf${process.pid}-${n}-${i}`);
      await ip.addNetns(names);
      const networks = lists(side);
      const add: number[] = [];
      const del: number[] = [];
      try {
        for (const [i, ns] of names.entries()) {
          let ms = 0;
          for (const { ifname, list } of networks)
            ms += await host.invokeList(
              list,
              'ADD',
              { containerId: `f${n}-${i}`, ifname, netnsPath: `/run/netns/${ns}` },
              { bandwidth: BANDWIDTH },
            );
          add.push(ms);
        }
        for (const [i, ns] of names.entries()) {
          let ms = 0;
          for (const { ifname, list } of [...networks].reverse())
            ms += await host.invokeList(
              list,
              'DEL',
              { containerId: `f${n}-${i}`, ifname, netnsPath: `/run/netns/${ns}` },
              { bandwidth: BANDWIDTH },
            );
          del.push(ms);
        }
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
  };
}
