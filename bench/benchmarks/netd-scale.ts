import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { SpawnerRunner, type CommandRunner } from '../../sys/runner.js';
import { IpBatch, IpClient } from '../../sys/ip.js';
import { modelKeys } from '../../tenancy/keys.js';
import { quantile, describeRuns } from '../stats.js';
import type { Benchmark, MetricSpec, Side } from '../benchmark.js';
import type { EtcdMembers } from './bench-cluster.js';
import { NetdBenchHost, PORTS_PER_BRIDGE, counterDelta, waitQuiet } from './netd-host.js';

/**
 * Scale on one host: N containers get a VPC interface with 16 ADDs in flight, then are all deleted
 * the same way, for each N of a list (250, 1,000 and 4,000 by default), so the report shows how
 * the cost per container grows. A Linux bridge takes at most 1,023 ports, so containers fill
 * bridges (VPCs, reference networks) of 1,000 one after another on every side. After every trial
 * nothing may be left on either side: no port, no endpoint record or address handle (netd), no
 * address file (host-local).
 */

const IN_FLIGHT = 16;
const BARE = 'bare ip';

/** BENCH_SCALE_SIZES=250,1000,4000 (default), or BENCH_SCALE_CONTAINERS=N for one size. */
export function scaleSizes(env: Record<string, string | undefined> = process.env): number[] {
  const text = env.BENCH_SCALE_SIZES ?? env.BENCH_SCALE_CONTAINERS ?? '250,1000,4000';
  const sizes = text.split(',').map((s) => Number(s.trim()));
  if (sizes.length === 0 || sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 20 * PORTS_PER_BRIDGE))
    throw new Error(`container counts must be integers 1..${20 * PORTS_PER_BRIDGE}: "${text}"`);
  return [...new Set(sizes)].sort((a, b) => a - b);
}

export function scaleMetrics(sizes: readonly number[]): MetricSpec[] {
  return sizes.flatMap((n) => [
    { name: `ADD p50 @${n}`, unit: 'ms', better: 'lower' as const },
    { name: `ADD p99 @${n}`, unit: 'ms', better: 'lower' as const },
    { name: `ADD wall per container @${n}`, unit: 'ms', better: 'lower' as const },
    { name: `DEL p50 @${n}`, unit: 'ms', better: 'lower' as const },
    { name: `DEL wall per container @${n}`, unit: 'ms', better: 'lower' as const },
  ]);
}

/** Which bridge (VPC, reference network) container `i` joins. */
export const bridgeIndex = (i: number, perBridge = PORTS_PER_BRIDGE) => Math.floor(i / perBridge);

interface Phase {
  wall: number;
  /** By container index. */
  latencies: number[];
}

/** Runs `work(i)` for i in 0..n-1, IN_FLIGHT at a time; wall in ms. */
async function inFlight(n: number, work: (i: number) => Promise<number>): Promise<Phase> {
  let next = 0;
  const latencies = new Array<number>(n);
  const started = performance.now();
  await Promise.all(
    Array.from({ length: IN_FLIGHT }, async () => {
      for (let i = next++; i < n; i = next++) latencies[i] = await work(i);
    }),
  );
  return { wall: performance.now() - started, latencies };
}

function phaseMetrics(n: number, add: Phase, del: Phase): Record<string, number> {
  return {
    [`ADD p50 @${n}`]: quantile(add.latencies, 0.5),
    [`ADD p99 @${n}`]: quantile(add.latencies, 0.99),
    [`ADD wall per container @${n}`]: add.wall / n,
    [`DEL p50 @${n}`]: quantile(del.latencies, 0.5),
    [`DEL wall per container @${n}`]: del.wall / n,
  };
}

/** Median ADD latency of the first and the last tenth of the containers (in the order they were added). */
function tenths(latencies: number[]): { first: number; last: number } {
  const k = Math.max(1, Math.floor(latencies.length / 10));
  return { first: quantile(latencies.slice(0, k), 0.5), last: quantile(latencies.slice(-k), 0.5) };
}

export function netdScaleBenchmark(
  runner: CommandRunner,
  opts: { etcdMembers: EtcdMembers; suffix: string; sizes?: number[]; perBridge?: number },
): Benchmark {
  const sizes = opts.sizes ?? scaleSizes();
  // BENCH_SCALE_PER_BRIDGE: fewer ports per bridge, to check the several-bridge path in a small run.
  const perBridge = opts.perBridge ?? Number(process.env.BENCH_SCALE_PER_BRIDGE ?? PORTS_PER_BRIDGE);
  if (!Number.isInteger(perBridge) || perBridge < 1 || perBridge > PORTS_PER_BRIDGE)
    throw new Error(`ports per bridge must be 1..${PORTS_PER_BRIDGE}`);
  const bridgeOf = (i: number) => bridgeIndex(i, perBridge);
  const bridges = bridgeOf(sizes[sizes.length - 1]! - 1) + 1;
  if (bridges > 20) throw new Error(`${bridges} bridges: at most 20 (address plan)`);
  const host = new NetdBenchHost(runner);
  let round = 0;
  let recording = false;
  /** Figures for the notes, by "what @size", one value per measured trial. */
  const figures = new Map<string, number[]>();
  const note = (key: string, v: number) => {
    if (recording) figures.set(key, [...(figures.get(key) ?? []), v]);
  };
  const leftovers: string[] = [];
  const vpc = (k: number) => `bench${k}`;

  const configFor = (side: Side, k: number) =>
    side === 'subject'
      ? { cniVersion: '1.0.0', name: vpc(k), type: 'netd', vpc: vpc(k) }
      : {
          cniVersion: '1.0.0',
          name: `ref${k}`,
          type: 'bridge',
          bridge: `cni-bench${k}`,
          ipam: {
            type: 'host-local',
            ranges: [[{ subnet: `10.${160 + k}.0.0/16` }]],
            dataDir: join(host.dir, 'host-local'),
          },
        };

  async function netdLeftovers(): Promise<string> {
    const ports = (await new IpClient(runner, { name: host.netns }).links()).filter((l) =>
      /^(n[ie]|veth)/.test(l.ifname),
    ).length;
    const store = host.openStore();
    try {
      const records = (await store.list(modelKeys.endpoints())).kvs.length;
      const handles = (await store.list('/netd/v1/ipam/handles/')).kvs.length;
      return `${ports} ports, ${records} endpoint records, ${handles} address handles`;
    } finally {
      await store.close();
    }
  }

  async function referenceLeftovers(): Promise<string> {
    const ports = (await new IpClient(runner, { name: host.netns }).links()).filter((l) =>
      /^veth/.test(l.ifname),
    ).length;
    let files = 0;
    for (let k = 0; k < bridges; k++) {
      const dir = join(host.dir, 'host-local', `ref${k}`);
      if (existsSync(dir)) files += readdirSync(dir).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)).length;
    }
    return `${ports} ports, ${files} address files`;
  }

  /** One size on one side: ADD all, DEL all, check for leftovers. */
  async function pluginRound(side: Side, n: number): Promise<Record<string, number>> {
    const r = round++;
    const ip = new IpClient(runner);
    const names = Array.from({ length: n }, (_, i) => `tn-bcs${process.pid}-${r}-${i}`);
    await ip.addNetns(names);
    const plugin = side === 'subject' ? 'netd' : 'bridge';
    const call = async (command: 'ADD' | 'DEL', i: number) =>
      (
        await host.invoke({
          plugin,
          command,
          config: configFor(side, bridgeOf(i)),
          containerId: `s${r}-${i}`,
          ifname: 'eth1',
          netnsPath: `/run/netns/${names[i]}`,
        })
      ).ms;
    try {
      await waitQuiet();
      const cpu0 = host.cpuSeconds();
      const c0 = side === 'subject' ? await host.counters() : undefined;
      const add = await inFlight(n, (i) => call('ADD', i));
      const c1 = side === 'subject' ? await host.counters() : undefined;
      if (side === 'subject') {
        note(`rss@${n}`, host.rssKb() / 1024);
        note(`blocks@${n}`, await host.blocksHeld());
        // What every full reconcile reads first: all links of the host, in JSON.
        const t = performance.now();
        await new IpClient(runner, { name: host.netns }).links();
        note(`list@${n}`, performance.now() - t);
      }
      const del = await inFlight(n, (i) => call('DEL', i));
      const sideName = side === 'subject' ? 'netd' : 'reference';
      note(`${sideName} first@${n}`, tenths(add.latencies).first);
      note(`${sideName} last@${n}`, tenths(add.latencies).last);
      if (side === 'subject') {
        const c2 = await host.counters();
        const inAdd = counterDelta(c0!, c1!);
        const inDel = counterDelta(c1!, c2);
        note(`cpu@${n}`, host.cpuSeconds() - cpu0);
        note(`reconciles add@${n}`, inAdd.reconciles);
        note(`reconcile s add@${n}`, inAdd.reconcileSeconds);
        note(`reconciles del@${n}`, inDel.reconciles);
        note(`reconcile s del@${n}`, inDel.reconcileSeconds);
        if (recording) leftovers.push(`netd @${n}: ${await netdLeftovers()}`);
      } else if (recording) leftovers.push(`reference @${n}: ${await referenceLeftovers()}`);
      return phaseMetrics(n, add, del);
    } finally {
      await ip.deleteNetns(names);
    }
  }

  /**
   * The same kernel objects with nothing else: per container one `ip` batch on the host (veth,
   * peer created in the container's netns, host end on a bridge without multicast snooping, no
   * IPv6 link-local, up) and one inside (no IPv6 link-local, up, address); per DEL one `ip link
   * del`. 16 in flight, no IPAM, no plugin processes, no daemon.
   */
  async function bareRound(n: number): Promise<Record<string, number>> {
    const r = round++;
    const spawner = new SpawnerRunner();
    const ip = new IpClient(spawner);
    const hostIp = ip.in({ name: host.netns });
    const names = Array.from({ length: n }, (_, i) => `tn-bcs${process.pid}-${r}-${i}`);
    const used = bridgeOf(n - 1) + 1;
    const bridgeNames = Array.from({ length: used }, (_, k) => `nbfl${k}`);
    await ip.addNetns(names);
    try {
      const b = new IpBatch();
      for (const br of bridgeNames) b.linkAddBridge(br, { mcastSnooping: false }).linkSet(br, { up: true });
      await hostIp.apply(b);
      await waitQuiet();
      const add = await inFlight(n, async (i) => {
        const started = performance.now();
        const mac = `02:fe:00:00:${((i >> 8) & 255).toString(16).padStart(2, '0')}:${(i & 255).toString(16).padStart(2, '0')}`;
        await hostIp.apply(
          new IpBatch()
            .linkAddVeth(`nf${i}`, 'eth1', {
              mtu: 1450,
              master: bridgeNames[bridgeOf(i)]!,
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
            .addrAdd(`10.${180 + bridgeOf(i)}.${((i + 1) >> 8) & 255}.${(i + 1) & 255}/16`, 'eth1'),
        );
        return performance.now() - started;
      });
      const del = await inFlight(n, async (i) => {
        const started = performance.now();
        await hostIp.apply(new IpBatch().linkDel(`nf${i}`));
        return performance.now() - started;
      });
      note(`bare first@${n}`, tenths(add.latencies).first);
      note(`bare last@${n}`, tenths(add.latencies).last);
      return phaseMetrics(n, add, del);
    } finally {
      await ip.deleteNetns(names);
      await hostIp.deleteLinksIfExist(bridgeNames);
      spawner.close();
    }
  }

  async function allSizes(round: (n: number) => Promise<Record<string, number>>): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const n of sizes) Object.assign(out, await round(n));
    return out;
  }

  const sizeList = sizes.map((n) => n.toLocaleString('en-US')).join(', ');
  return {
    name: `netd-scale${opts.suffix}`,
    title: `netd: ${sizeList} containers on one host, ${IN_FLIGHT} calls in flight, vs bridge + host-local (${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `For each count N (${sizeList}), N containers get one VPC interface each with ${IN_FLIGHT} CNI calls in flight ` +
      '(each a plugin process, as runtimes do), then all are deleted the same way, on one virtual host. Containers fill ' +
      `bridges of ${perBridge} one after another on every side (a Linux bridge takes at most 1,023 ports): netd VPCs ` +
      `bench0, bench1, ...; reference networks ref0, ref1, ... Per-call latency (p50, p99) and wall time per container ` +
      '(wall time of all calls / N); lower is better. After every trial both sides are checked for leftovers.',
    subjectLabel: 'netd',
    peerLabel: 'bridge + host-local',
    subjectOnly: [
      'cluster-wide addresses: per ADD one etcd transaction (address + endpoint record) on the host’s blocks; ' +
        'a host without room claims a new /26 block (one more transaction); per DEL an etcd delete of the record and a release transaction',
      'a VXLAN device per VPC on its bridge, and a daemon (Node.js) that follows etcd and runs a full reconcile ' +
        '(listing every link of the host) after changes it did not make itself, and every 5 s',
      'no IPv6 link-local on either end of the veth (addrgenmode none): no DAD, router solicitations or MLD',
      'bridges without multicast snooping; a VPC’s bridge and VXLAN device are removed when its last local container goes',
      'the container’s MAC follows its address (set before the link comes up)',
    ],
    peerOnly: [
      'a Go plugin process per call plus a host-local process (netd: a small static C plugin and a socket call)',
      'sysctls per ADD: accept_ra=0 on bridge and host end, accept_dad=0 and arp_notify=1 in the container ' +
        '(the container keeps an IPv6 link-local address; arp_notify sends a gratuitous ARP)',
      'host-local: a lock file and one file per address (plus last_reserved_ip) in a directory, no fsync',
      'bridges with multicast snooping on (the kernel default); the bridge stays when its last container goes',
    ],
    store: () => host.describeStore(),
    metrics: scaleMetrics(sizes),
    runs: 3,
    baselines: [
      {
        name: BARE,
        description:
          'the same kernel objects made by bare `ip` commands: per ADD one `ip -batch` on the host (veth with its peer ' +
          'created in the container’s netns, host end on a bridge without multicast snooping, no IPv6 link-local, up) and ' +
          'one inside (no IPv6 link-local, up, address); per DEL one `ip link del`. Same bridges of ' +
          `${perBridge}, ${IN_FLIGHT} in flight; no IPAM, no plugin process, no daemon.`,
      },
    ],
    warmup: {
      description: `one ${sizes[0]}-container round of every side`,
      run: async (side) => {
        recording = false;
        await (side === BARE ? bareRound(sizes[0]!) : pluginRound(side as Side, sizes[0]!));
      },
    },
    needsRoot: true,
    setup: async () => {
      await host.setup({
        vpcs: Array.from({ length: bridges }, (_, k) => ({ name: vpc(k), cidr: `10.${140 + k}.0.0/16` })),
        etcdMembers: opts.etcdMembers,
      });
    },
    trial: (side) => {
      recording = true;
      return allSizes((n) => pluginRound(side, n));
    },
    baselineTrial: () => {
      recording = true;
      return allSizes((n) => bareRound(n));
    },
    teardown: () => host.teardown(),
    notes() {
      const f = (key: string, digits = 0, unit = '') =>
        figures.has(key) ? describeRuns(figures.get(key)!, digits, unit) : 'n/a';
      const out: string[] = [];
      for (const n of sizes) {
        out.push(
          `@${n}: ADD p50 of the first / last tenth of the containers: netd ${f(`netd first@${n}`, 1, ' ms')} / ${f(`netd last@${n}`, 1, ' ms')}; ` +
            `reference ${f(`reference first@${n}`, 1, ' ms')} / ${f(`reference last@${n}`, 1, ' ms')}; ` +
            `bare ip ${f(`bare first@${n}`, 1, ' ms')} / ${f(`bare last@${n}`, 1, ' ms')}.`,
          `@${n}: netd ran ${f(`reconciles add@${n}`)} full reconciles (${f(`reconcile s add@${n}`, 2, ' s')}) during the ADDs and ` +
            `${f(`reconciles del@${n}`)} (${f(`reconcile s del@${n}`, 2, ' s')}) during the DELs; listing every link of the host ` +
            `(\`ip -d -j link show\`, what each reconcile reads first) took ${f(`list@${n}`, 0, ' ms')} with ${n} containers; ` +
            `blocks held: ${f(`blocks@${n}`)}; RSS ${f(`rss@${n}`, 0, ' MiB')}; netd CPU for the ADDs and DELs ${f(`cpu@${n}`, 1, ' s')}.`,
        );
      }
      out.push(
        'Figures in the notes: median over the measured trials (min–max).',
        `Left after the measured trials: ${countedOnce(leftovers).join('; ')}.`,
      );
      return out;
    },
  };
}

/** Equal lines once each, in first-seen order, with how many times each came ("x (3 trials)"). */
function countedOnce(lines: readonly string[]): string[] {
  const counts = new Map<string, number>();
  for (const line of lines) counts.set(line, (counts.get(line) ?? 0) + 1);
  return [...counts].map(([line, n]) => `${line} (${n} trial${n === 1 ? '' : 's'})`);
}
