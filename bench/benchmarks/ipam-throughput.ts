import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CommandRunner } from '../../sys/runner.js';
import { startDaemon, stopDaemon } from '../../sys/process.js';
import { Ipam } from '../../ipam/allocator.js';
import type { EtcdStore } from '../../store/etcd.js';
import { quantile } from '../stats.js';
import { StartBarrier } from '../barrier.js';
import type { WorkerReport, WorkerSpec } from '../workers/alloc-worker.js';
import type { Benchmark, MetricSpec } from '../benchmark.js';
import { BenchCluster, describeFilesystem, type EtcdMembers } from './bench-cluster.js';

/**
 * Cluster-wide IPAM throughput: one allocating process per virtual host (4 hosts), 32 allocations
 * in flight each, on both sides. Every worker gets ready first (etcd connected, or its posix_spawn
 * helper started), then all wait at one start barrier; throughput is allocations / (last
 * completion − the common start), timed by the coordinator for both sides alike. Latency is per
 * allocation, over all of them.
 */

const HOSTS = 4;
/** Allocations per host (BENCH_IPAM_PER_HOST, for a quick check that the benchmark runs). */
const PER_HOST = Number(process.env.BENCH_IPAM_PER_HOST ?? 1000);
const CONCURRENCY = 32;
/**
 * The shared-record peer manages ~12 allocations/s under this contention; it allocates fewer
 * addresses so a trial ends in seconds. Its rate only falls as its record grows, so a smaller
 * count flatters it: the ratio is conservative.
 */
const SHARED_PER_HOST = Math.max(1, Math.round(PER_HOST / 10));
const WORKER = join(dirname(fileURLToPath(import.meta.url)), '..', 'workers', 'alloc-worker.js');

const METRICS: MetricSpec[] = [
  { name: 'allocations/s', unit: 'allocs/s', better: 'higher' },
  { name: 'p50 latency', unit: 'ms', better: 'lower' },
  { name: 'p99 latency', unit: 'ms', better: 'lower' },
];

const NETD_IPAM_ONLY = [
  'cluster-wide uniqueness: every allocation is committed to etcd (block CAS with a handle record in one ' +
    'transaction, fsync), so any host may allocate from the whole pool; a host without room claims a /26 block first',
];

class IpamCluster {
  cluster: BenchCluster | undefined;
  store: EtcdStore | undefined;
  dir = '';
  trial = 0;

  constructor(
    private readonly runner: CommandRunner,
    private readonly etcdMembers: EtcdMembers,
  ) {}

  async setup(): Promise<void> {
    this.cluster = await BenchCluster.up({ prefix: 'bi', hosts: HOSTS, etcdMembers: this.etcdMembers }, this.runner);
    this.store = this.cluster.openStore();
    this.dir = mkdtempSync(join(tmpdir(), 'bench-ipam-'));
  }

  async teardown(): Promise<void> {
    try {
      await this.store?.close();
      await this.cluster?.teardown();
    } finally {
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    }
  }

  /** Runs one worker per host from a common start; wall time and every latency. */
  async run(specFor: (hostIndex: number, barrier: string) => WorkerSpec): Promise<Record<string, number>> {
    const n = this.trial++;
    const path = join(this.dir, `barrier-${n}.sock`);
    const barrier = await StartBarrier.open<WorkerReport>(path, HOSTS);
    const workers = this.cluster!.hosts.map((host, i) => {
      const log = join(this.dir, `worker-${n}-${i}.log`);
      const handle = startDaemon({
        argv: [process.execPath, WORKER, JSON.stringify(specFor(i, path))],
        netns: { name: host.netns },
        logFile: log,
      });
      return { handle, log };
    });
    const crashed = Promise.race(
      workers.map(async ({ handle, log }) => {
        const { code } = await handle.exited;
        if (code !== 0) {
          const text = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
          throw new Error(`allocation worker exited ${code}: ${text}`);
        }
      }),
    );
    crashed.catch(() => undefined);
    try {
      await Promise.race([barrier.ready(120_000), crashed]);
      const t0 = barrier.go();
      const arrivals = await Promise.race([barrier.finished(), crashed.then(() => barrier.finished())]);
      const wallMs = Math.max(...arrivals.map((a) => a.at)) - t0;
      const latencies = arrivals.flatMap((a) => a.report.latencies);
      return {
        'allocations/s': (latencies.length / wallMs) * 1000,
        'p50 latency': quantile(latencies, 0.5),
        'p99 latency': quantile(latencies, 0.99),
      };
    } finally {
      await barrier.close();
      for (const w of workers) await stopDaemon(w.handle);
    }
  }

  describe(peer: string): string {
    return `netd ipam: ${this.cluster!.describe()}. ${peer}`;
  }
}

export function ipamVsSharedRecordBenchmark(
  runner: CommandRunner,
  opts: { etcdMembers: EtcdMembers; suffix: string },
): Benchmark {
  const ctx = new IpamCluster(runner, opts.etcdMembers);
  const cidr = '10.200.0.0/16';
  return {
    name: `ipam-vs-shared-record${opts.suffix}`,
    title: `ipam: ${HOSTS} hosts allocating concurrently, vs one shared allocation record (${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `One allocating process on each of ${HOSTS} virtual hosts, ${CONCURRENCY} allocations in flight each, from one /16 ` +
      'pool through one etcd; all start at one barrier. Subject: netd ipam (per-host block affinity, coalesced CAS ' +
      `transactions), ${PER_HOST} addresses per host. Peer: the Whereabouts design, one compare-and-swap per address on a ` +
      `single record holding the whole pool, with the same concurrency but ${SHARED_PER_HOST} addresses per host (a smaller ` +
      'record flatters it). Throughput: higher is better (target: ≥ 10× the peer and ≥ 2,000/s). Latency per ' +
      'allocation: lower is better.',
    subjectLabel: 'netd ipam',
    peerLabel: 'shared allocation record (Whereabouts design)',
    subjectOnly: [
      'per-host blocks: a host claims a /26 (one more transaction) before it allocates in it',
      'a handle record per allocation, written in the same transaction as the block',
      `${PER_HOST} allocations per host against the peer’s ${SHARED_PER_HOST}`,
    ],
    peerOnly: ['the whole pool’s allocations rewritten in one value on every allocation'],
    store: () => ctx.describe('Peer: the same etcd.'),
    metrics: METRICS,
    runs: 3,
    needsRoot: true,
    setup: () => ctx.setup(),
    teardown: () => ctx.teardown(),
    async trial(side) {
      const pool = `b${ctx.trial}`;
      if (side === 'subject')
        await new Ipam({ store: ctx.store!, host: 'admin' }).createPool({ name: pool, cidr, kind: 'vpc' });
      const d = ctx.cluster!;
      try {
        return await ctx.run((i, barrier) => ({
          mode: side === 'subject' ? 'netd-ipam' : 'shared-record',
          barrier,
          count: side === 'subject' ? PER_HOST : SHARED_PER_HOST,
          concurrency: CONCURRENCY,
          prefix: `${pool}-h${i}`,
          // The shared-record peer keeps its record under /bench/, outside the netd user's rights.
          etcd: { client: d.hostClient(side === 'subject' ? 'netd' : 'root'), host: d.hosts[i]!.name, pool, cidr },
        }));
      } finally {
        await ctx.store!.deletePrefix('/netd/v1/ipam/');
        await ctx.store!.deletePrefix('/bench/');
      }
    },
  };
}

export function ipamVsHostLocalBenchmark(
  runner: CommandRunner,
  opts: { etcdMembers: EtcdMembers; suffix: string },
): Benchmark {
  const ctx = new IpamCluster(runner, opts.etcdMembers);
  const cidr = '10.200.0.0/16';
  return {
    name: `ipam-vs-host-local${opts.suffix}`,
    title: `ipam: ${HOSTS} hosts allocating concurrently, vs the reference host-local plugin on the same ${HOSTS} hosts (${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `On each of ${HOSTS} virtual hosts one allocating process makes ${PER_HOST} allocations, ${CONCURRENCY} in flight; ` +
      'all start at one barrier, and throughput runs from that start to the last completion on both sides. Subject: ' +
      'netd ipam as netd’s daemon calls it (a library call per allocation; one /16 pool for the whole cluster, per-host ' +
      'blocks). Peer: the reference host-local CNI IPAM plugin (containernetworking-plugins), one process per allocation ' +
      'started through the same posix_spawn helper the netd benchmarks start plugins with, each host with its own /20 ' +
      'and data directory. Throughput: higher is better; latency per allocation: lower is better.',
    subjectLabel: `netd ipam (${HOSTS} hosts, library)`,
    peerLabel: `host-local (${HOSTS} hosts, one process per allocation)`,
    subjectOnly: NETD_IPAM_ONLY,
    peerOnly: [
      'one process per allocation (a Go binary, as a runtime runs an IPAM plugin; netd ipam is called in-process by the daemon)',
      'a lock file, one file per address and last_reserved_ip on the host’s disk (no fsync), read again by every process',
    ],
    store: () =>
      ctx.describe(
        `Peer: host-local files on ${describeFilesystem(ctx.dir)}, no fsync; each host knows only its own /20.`,
      ),
    metrics: METRICS,
    runs: 3,
    needsRoot: true,
    setup: () => ctx.setup(),
    teardown: () => ctx.teardown(),
    async trial(side) {
      const n = ctx.trial;
      const pool = `b${n}`;
      const d = ctx.cluster!;
      if (side === 'subject')
        await new Ipam({ store: ctx.store!, host: 'admin' }).createPool({ name: pool, cidr, kind: 'vpc' });
      try {
        return await ctx.run((i, barrier) =>
          side === 'subject'
            ? {
                mode: 'netd-ipam',
                barrier,
                count: PER_HOST,
                concurrency: CONCURRENCY,
                prefix: `${pool}-h${i}`,
                etcd: { client: d.hostClient('netd'), host: d.hosts[i]!.name, pool, cidr },
              }
            : {
                mode: 'host-local',
                barrier,
                count: PER_HOST,
                concurrency: CONCURRENCY,
                prefix: `${pool}-h${i}`,
                hostLocal: {
                  binary: '/usr/lib/cni/host-local',
                  config: {
                    cniVersion: '1.0.0',
                    name: `hl${n}`,
                    ipam: {
                      type: 'host-local',
                      ranges: [[{ subnet: `10.201.${i * 16}.0/20` }]],
                      dataDir: join(ctx.dir, `host-local-${n}-h${i}`),
                    },
                  },
                },
              },
        );
      } finally {
        if (side === 'subject') await ctx.store!.deletePrefix('/netd/v1/ipam/');
        else
          for (let i = 0; i < HOSTS; i++)
            rmSync(join(ctx.dir, `host-local-${n}-h${i}`), { recursive: true, force: true });
      }
    },
  };
}
