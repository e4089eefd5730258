import { join } from 'node:path';
import type { CommandRunner } from '../../sys/runner.js';
import { IpClient } from '../../sys/ip.js';
import { quantile, describeRuns } from '../stats.js';
import type { Benchmark } from '../benchmark.js';
import type { EtcdMembers } from './bench-cluster.js';
import { NetdBenchHost, counterDelta } from './netd-host.js';

/**
 * CNI ADD and DEL latency of one VPC interface: netd (C shim plugin → daemon → ipam on etcd → veth,
 * bridge, vxlan) against the reference bridge + host-local chain, both invoked as a runtime would
 * (a process per call, in the host's namespace, sequentially), on the same virtual host.
 */

const CONTAINERS = 40;

/** What netd's VPC interface does that bridge + host-local do not, and the other way round. */
export const VPC_INTERFACE_SUBJECT_ONLY = [
  'cluster-wide addresses: per ADD one etcd transaction on the host’s address block that also writes the endpoint record ' +
    '(other hosts program their FDB and ARP entries from it); per DEL an etcd delete of the record and a release transaction',
  'a daemon (Node.js) that follows etcd; a record it did not write itself (or wrote before it noted it) makes it run a full ' +
    'reconcile, which lists every link of the host, beside the next call',
  'no IPv6 link-local on either end of the veth (addrgenmode none): no DAD, router solicitations or MLD',
  'a VXLAN device on the VPC’s bridge; bridges without multicast snooping, removed when their last local container goes',
  'the container’s MAC follows its address (set before the link comes up)',
];

export const VPC_INTERFACE_PEER_ONLY = [
  'a Go plugin process per call plus a host-local process (netd: a small static C plugin and a socket call)',
  'sysctls per ADD: accept_ra=0 on bridge and host end, accept_dad=0 and arp_notify=1 in the container ' +
    '(the container keeps an IPv6 link-local address; arp_notify sends a gratuitous ARP)',
  'host-local: a lock file and one file per address (plus last_reserved_ip) in a directory, no fsync',
  'bridges with multicast snooping on (the kernel default)',
];

/** routed mode against the reference plugin that wires a container the same way (ptp: a veth, routes). */
const ROUTED_SUBJECT_ONLY = [
  'cluster-wide addresses: per ADD one etcd transaction on the host’s address block that also writes the endpoint record ' +
    '(other hosts route to the block from it); per DEL an etcd delete of the record and a release transaction',
  'a daemon (Node.js) that follows etcd and converges routes and rules',
  'the VPC’s policy rules and routing table (put in place by the first ADD into the VPC on the host, removed with its last ' +
    'container), a /32 in that table per container, strict rp_filter on the host end',
  'no IPv6 link-local on either end of the veth (addrgenmode none): no DAD, router solicitations or MLD',
];
const ROUTED_PEER_ONLY = [
  'a Go plugin process per call plus a host-local process (netd: a small static C plugin and a socket call)',
  'an address on every host end (the gateway), sysctls per ADD, IPv6 link-local addresses on both ends',
  'host-local: a lock file and one file per address in a directory, no fsync',
];

/**
 * vlan mode against bridge + host-local: the reference `vlan` plugin needs the 8021q module and
 * the `bridge` plugin's `vlan` option needs bridge VLAN filtering, neither of which this kernel
 * has; an untagged bridge port is the nearest job a reference plugin can do here.
 */
const VLAN_SUBJECT_ONLY = [
  'cluster-wide addresses: per ADD one etcd transaction on the host’s address block that also writes the endpoint record; ' +
    'per DEL an etcd delete of the record and a release transaction',
  'a daemon (Node.js) that follows etcd and reconciles the Open vSwitch bridge’s ports',
  'an Open vSwitch access port per container with its VPC’s VLAN tag: one OVSDB transaction per ADD (JSON-RPC on a kept ' +
    'connection) and polling until ovs-vswitchd (userspace datapath here) applied it; one transaction per DEL',
  'checksum offload off on both ends of the veth and on the OVS end of its shaper pair (three ethtool processes ' +
    'per ADD, side by side: the userspace datapath needs it)',
  'a second veth pair per container (the shaper: OVS reads its far end; egress limits are its qdisc) and one tc ' +
    'process for the redirects between it and the port, beside the container side (the userspace datapath only); ' +
    'a DEL leaves the pair to the reconciler, which deletes it right after (one more RCU wait, off the DEL)',
  'no IPv6 link-local on either end of the veth (addrgenmode none): no DAD, router solicitations or MLD',
];

export function netdCniLatencyBenchmark(
  runner: CommandRunner,
  opts: { etcdMembers: EtcdMembers; suffix: string; mode?: 'vxlan' | 'routed' | 'vlan' },
): Benchmark {
  const mode = opts.mode ?? 'vxlan';
  const routed = mode === 'routed';
  const peerLabel = routed ? 'ptp + host-local' : 'bridge + host-local';
  const host = new NetdBenchHost(runner);
  let trial = 0;
  const rss: number[] = [];
  const reconcilesPerAdd: number[] = [];
  const reconcilesPerDel: number[] = [];
  const daemonDel: number[] = [];
  // The first ADD of a trial is the one that finds no bridge on netd's side (netd removes a VPC's
  // bridge with its last container; the reference bridge stays), so it is what ADD p99 mostly shows.
  const firstAdd = { subject: [] as number[], peer: [] as number[] };
  const slowestOtherAdd = { subject: [] as number[], peer: [] as number[] };
  const invoke = async (
    plugin: string,
    command: 'ADD' | 'DEL',
    config: object,
    containerId: string,
    netnsPath: string,
  ) => (await host.invoke({ plugin, command, config, containerId, ifname: 'eth1', netnsPath })).ms;

  return {
    name: `netd-cni-latency${mode === 'vxlan' ? '' : `-${mode}`}${opts.suffix}`,
    title: `netd: CNI ADD/DEL latency of one ${mode} VPC interface vs ${peerLabel} (${CONTAINERS} containers, sequential, ${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `${CONTAINERS} containers get one VPC interface each, one ADD after another, then are deleted one after another, on one ` +
      'virtual host. Subject: the netd plugin (a static C shim to the host daemon, which allocates from the cluster IPAM on ' +
      (routed
        ? 'etcd, wires the veth and routes: the VPC is in routed mode). Peer: the reference `ptp` plugin (a veth and routes, ' +
          'the same job) with `host-local` IPAM. '
        : mode === 'vlan'
          ? 'etcd, wires the veth and plugs it into Open vSwitch as an access port of the VPC’s VLAN). Peer: the reference ' +
            '`bridge` plugin with `host-local` IPAM (the reference `vlan` plugin needs 8021q, absent here). '
          : 'etcd, wires the veth and converges bridge + vxlan). Peer: the reference `bridge` plugin with `host-local` IPAM. ') +
      'Latency per call, lower is better.',
    subjectLabel: `netd (${mode})`,
    peerLabel,
    subjectOnly: routed ? ROUTED_SUBJECT_ONLY : mode === 'vlan' ? VLAN_SUBJECT_ONLY : VPC_INTERFACE_SUBJECT_ONLY,
    peerOnly: routed ? ROUTED_PEER_ONLY : VPC_INTERFACE_PEER_ONLY,
    store: () => host.describeStore(),
    metrics: [
      { name: 'ADD p50', unit: 'ms', better: 'lower' },
      { name: 'ADD p99', unit: 'ms', better: 'lower' },
      { name: 'DEL p50', unit: 'ms', better: 'lower' },
      { name: 'DEL p99', unit: 'ms', better: 'lower' },
    ],
    runs: 3,
    needsRoot: true,
    async setup() {
      await host.setup({ vpcs: [{ name: 'bench', cidr: '10.128.0.0/16', mode }], etcdMembers: opts.etcdMembers });
    },
    async trial(side, ctx) {
      const n = trial++;
      const recording = !ctx.warmup;
      const ip = new IpClient(runner);
      const names = Array.from({ length: CONTAINERS }, (_, i) => `tn-bcc${process.pid}-${n}-${i}`);
      await ip.addNetns(names);
      const config =
        side === 'subject'
          ? { cniVersion: '1.0.0', name: 'bench', type: 'netd', vpc: 'bench' }
          : {
              cniVersion: '1.0.0',
              name: 'bench',
              ...(routed ? { type: 'ptp' } : { type: 'bridge', bridge: 'cni-bench' }),
              ipam: {
                type: 'host-local',
                ranges: [[{ subnet: '10.129.0.0/16' }]],
                dataDir: join(host.dir, 'host-local'),
              },
            };
      const plugin = side === 'subject' ? 'netd' : routed ? 'ptp' : 'bridge';
      const add: number[] = [];
      const del: number[] = [];
      try {
        const c0 = side === 'subject' ? await host.counters() : undefined;
        for (const [i, ns] of names.entries())
          add.push(await invoke(plugin, 'ADD', config, `c${n}-${i}`, `/run/netns/${ns}`));
        const c1 = side === 'subject' ? await host.counters() : undefined;
        if (recording) {
          firstAdd[side].push(add[0]!);
          slowestOtherAdd[side].push(Math.max(...add.slice(1)));
        }
        if (side === 'subject' && recording) rss.push(host.rssKb());
        for (const [i, ns] of names.entries())
          del.push(await invoke(plugin, 'DEL', config, `c${n}-${i}`, `/run/netns/${ns}`));
        if (side === 'subject' && recording) {
          const c2 = await host.counters();
          const inAdd = counterDelta(c0!, c1!);
          const inDel = counterDelta(c1!, c2);
          reconcilesPerAdd.push(inAdd.reconciles / CONTAINERS);
          reconcilesPerDel.push(inDel.reconciles / CONTAINERS);
          daemonDel.push((inDel.cni.DEL!.seconds / inDel.cni.DEL!.count) * 1000);
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
    notes() {
      if (!rss.length) return [];
      const firstAddDoes = routed
        ? 'puts the VPC’s rules and table in place: netd removed them with the previous trial’s last container'
        : mode === 'vlan'
          ? 'nothing per VPC to create: the bridge and trunk stay'
          : 'creates the VPC’s bridge and VXLAN device: netd removed them with the previous trial’s last container';
      return [
        ...(mode === 'vlan'
          ? [
              'Before the shaper pair, which makes egress limits work on the userspace datapath: ADD p50 1.31 and ' +
                'DEL p50 1.3–1.4 of the reference. The pair costs a link pair, a tc and an ethtool process per ADD, ' +
                'and its deletion (right after the DEL, by the reconciler).',
            ]
          : []),
        `netd RSS with ${CONTAINERS} endpoints: ${(Math.max(...rss) / 1024) | 0} MiB.`,
        `Full reconciles netd ran per ADD: ${describeRuns(reconcilesPerAdd, 2)}; per DEL: ${describeRuns(reconcilesPerDel, 2)} ` +
          '(each lists every link of the host; it runs beside the next call).',
        `Time netd spent on a DEL (mean, from its /metrics: request received to reply): ${describeRuns(daemonDel, 1, ' ms')}; ` +
          'the rest of the DEL latency above is the plugin process and its socket round trip (see netd-del).',
        `First ADD of a trial: netd ${describeRuns(firstAdd.subject, 1, ' ms')} (${firstAddDoes}), reference ${describeRuns(firstAdd.peer, 1, ' ms')} ` +
          `(${routed ? 'ptp has no per-network state to create' : 'its bridge stays from the previous trial'}); slowest of the other ADDs: netd ${describeRuns(slowestOtherAdd.subject, 1, ' ms')}, ` +
          `reference ${describeRuns(slowestOtherAdd.peer, 1, ' ms')}. With ${CONTAINERS} calls, ADD p99 is mostly the slowest one.`,
      ];
    },
  };
}
