import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { SpawnerRunner, type CommandRunner } from '../../sys/runner.js';
import { IpBatch, IpClient } from '../../sys/ip.js';
import { EtcdStore } from '../../store/etcd.js';
import { modelKeys } from '../../tenancy/keys.js';
import { quantile } from '../stats.js';
import type { Benchmark } from '../benchmark.js';
import { NetdBenchHost, waitQuiet } from './netd-host.js';

/**
 * Scale on one host: N containers (1,000 by default; BENCH_SCALE_CONTAINERS) get a VPC interface
 * with 16 ADDs in flight, then are all deleted the same way. After each netd trial nothing may be
 * left: no port, no endpoint record, no address handle.
 */

const IN_FLIGHT = 16;

export function netdScaleBenchmark(runner: CommandRunner): Benchmark {
  const containers = Number(process.env.BENCH_SCALE_CONTAINERS ?? 1000);
  const host = new NetdBenchHost(runner);
  let trial = 0;
  const rss: number[] = [];
  const cpu: number[] = [];
  const leftovers: string[] = [];
  let floorSeconds: number | undefined;

  /**
   * The same kernel work with nothing else: per container one `ip` batch on the host (veth, peer
   * created in the container's netns, host end on the bridge, no IPv6 link-local, up) and one
   * `ip -n` batch inside (no IPv6 link-local, up, address), 16 in flight, no IPAM, no plugin
   * processes, no daemon. What this machine's kernel and `ip` cost alone.
   */
  async function bareIpFloor(): Promise<number> {
    const spawner = new SpawnerRunner();
    const ip = new IpClient(spawner);
    const hostNs = host.netns;
    const names = Array.from({ length: containers }, (_, i) => `tn-bcs${process.pid}-f-${i}`);
    await ip.addNetns(names);
    await waitQuiet();
    await ip
      .in({ name: hostNs })
      .apply(new IpBatch().linkAddBridge('nbfloor', { mcastSnooping: false }).linkSet('nbfloor', { up: true }));
    try {
      const { wall } = await all(async (i) => {
        const started = performance.now();
        const mac = `02:fe:00:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
        await ip.in({ name: hostNs }).apply(
          new IpBatch()
            .linkAddVeth(`nf${i}`, 'eth1', {
              mtu: 1450,
              master: 'nbfloor',
              peerNetns: `/run/netns/${names[i]}`,
              peerAddress: mac,
            })
            .linkSet(`nf${i}`, { addrGenMode: 'none' })
            .linkSet(`nf${i}`, { up: true }),
        );
        await ip.in({ name: names[i]! }).apply(
          new IpBatch()
            .linkSet('eth1', { addrGenMode: 'none' })
            .linkSet('eth1', { up: true })
            .addrAdd(`10.200.${((i + 1) >> 8) & 255}.${(i + 1) & 255}/16`, 'eth1'),
        );
        return performance.now() - started;
      });
      return wall;
    } finally {
      await ip.deleteNetns(names);
      await ip.in({ name: hostNs }).deleteLinksIfExist(['nbfloor']);
      spawner.close();
    }
  }

  async function all(work: (i: number) => Promise<number>): Promise<{ wall: number; latencies: number[] }> {
    let next = 0;
    const latencies: number[] = [];
    const started = performance.now();
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        for (let i = next++; i < containers; i = next++) latencies.push(await work(i));
      }),
    );
    return { wall: (performance.now() - started) / 1000, latencies };
  }

  async function left(): Promise<string> {
    const ports = (await new IpClient(runner, { name: host.netns }).links()).filter((l) =>
      /^(n[ie]|veth)/.test(l.ifname),
    ).length;
    const store = new EtcdStore({ endpoints: host.cluster!.description.etcd.endpoints });
    try {
      const records = (await store.list(modelKeys.endpoints())).kvs.length;
      const handles = (await store.list('/netd/v1/ipam/handles/')).kvs.length;
      return `${ports} ports, ${records} endpoint records, ${handles} address handles`;
    } finally {
      await store.close();
    }
  }

  return {
    name: 'netd-scale',
    title: `netd: ${containers} containers on one host, ${IN_FLIGHT} ADDs in flight, vs bridge + host-local`,
    description:
      `${containers} containers get one VPC interface each with ${IN_FLIGHT} CNI calls in flight (each a plugin process, as ` +
      'runtimes do), then all are deleted the same way, on one virtual host. Subject: netd (cluster IPAM on etcd, bridge + ' +
      'vxlan). Peer: the reference `bridge` + `host-local`. After every netd trial the host and etcd are checked for ' +
      'leftovers. Wall time for all ADDs / all DELs and per-call latency; lower is better.',
    subjectLabel: 'netd',
    peerLabel: 'bridge + host-local',
    metrics: [
      { name: 'ADD wall', unit: 's', better: 'lower' },
      { name: 'ADD p50', unit: 'ms', better: 'lower' },
      { name: 'ADD p99', unit: 'ms', better: 'lower' },
      { name: 'DEL wall', unit: 's', better: 'lower' },
    ],
    runs: 2,
    warmup: false,
    needsRoot: true,
    setup: () => host.setup({ vpcCidr: '10.128.0.0/16' }),
    async trial(side) {
      const n = trial++;
      const ip = new IpClient(runner);
      const names = Array.from({ length: containers }, (_, i) => `tn-bcs${process.pid}-${n}-${i}`);
      await ip.addNetns(names);
      await waitQuiet();
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
      const call = async (command: 'ADD' | 'DEL', i: number) =>
        (
          await host.invoke({
            plugin,
            command,
            config,
            containerId: `s${n}-${i}`,
            ifname: 'eth1',
            netnsPath: `/run/netns/${names[i]}`,
          })
        ).ms;
      try {
        const cpu0 = host.cpuSeconds();
        const add = await all((i) => call('ADD', i));
        if (side === 'subject') rss.push(host.rssKb());
        const del = await all((i) => call('DEL', i));
        if (side === 'subject') {
          cpu.push(host.cpuSeconds() - cpu0);
          leftovers.push(await left());
        }
        return {
          'ADD wall': add.wall,
          'ADD p50': quantile(add.latencies, 0.5),
          'ADD p99': quantile(add.latencies, 0.99),
          'DEL wall': del.wall,
        };
      } finally {
        await ip.deleteNetns(names);
      }
    },
    async teardown() {
      try {
        floorSeconds = await bareIpFloor();
      } finally {
        await host.teardown();
      }
    },
    notes() {
      return [
        ...(floorSeconds !== undefined
          ? [
              `The kernel and \`ip\` alone (bare commands, same wiring, 16 in flight, no IPAM or plugins): ${floorSeconds.toFixed(2)} s for ${containers} containers.`,
            ]
          : []),
        `netd RSS with ${containers} endpoints: ${rss.map((k) => `${(k / 1024) | 0} MiB`).join(', ')}; netd CPU for ${containers} ADDs + DELs: ${cpu.map((c) => `${c.toFixed(1)} s`).join(', ')}.`,
        `Left after each netd trial: ${leftovers.join('; ')}.`,
      ];
    },
  };
}
