import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { CommandRunner } from '../../sys/runner.js';
import { VirtualCluster, teardownCluster } from '../../test-netns/cluster.js';
import { hostEtcdClient } from '../../test-netns/etcd-cluster.js';
import { uniqueSuffix } from '../../test-netns/testing.js';
import { EtcdStore } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { quantile } from '../stats.js';
import { startWorker, finished, type WorkerSummary } from '../../ipam/test/workers.js';
import type { Benchmark, MetricSpec } from '../benchmark.js';

/**
 * Cluster-wide IPAM throughput: 4 allocator processes on 4 virtual hosts allocate concurrently from
 * one pool through a real etcd. Throughput counts the concurrent phase (each worker times itself
 * after connecting, so Node's start-up is not charged to either side); latency is per allocation.
 */

const HOSTS = 4;
const PER_HOST = 1000;
const CONCURRENCY = 32;
/**
 * The shared-record peer manages ~12 allocations/s under this contention; it allocates fewer
 * addresses so a trial ends in seconds. Its rate only falls as its record grows, so a smaller
 * count flatters it: the ratio is conservative.
 */
const SHARED_PER_HOST = 100;

const METRICS: MetricSpec[] = [
  { name: 'allocations/s', unit: 'allocs/s', better: 'higher' },
  { name: 'p50 latency', unit: 'ms', better: 'lower' },
  { name: 'p99 latency', unit: 'ms', better: 'lower' },
];

interface ClusterContext {
  cluster: VirtualCluster;
  store: EtcdStore;
  dir: string;
  trial: number;
}

function combine(summaries: WorkerSummary[], total: number, wallMs: number): Record<string, number> {
  return {
    'allocations/s': (total / wallMs) * 1000,
    'p50 latency': quantile(
      summaries.map((s) => s.p50),
      0.5,
    ),
    'p99 latency': Math.max(...summaries.map((s) => s.p99)),
  };
}

async function clusterTrial(
  ctx: ClusterContext,
  mode: 'allocate' | 'allocate-shared',
): Promise<Record<string, number>> {
  const perHost = mode === 'allocate' ? PER_HOST : SHARED_PER_HOST;
  const pool = `b${ctx.trial++}`;
  const cidr = '10.200.0.0/16';
  if (mode === 'allocate')
    await new Ipam({ store: ctx.store, host: 'admin' }).createPool({ name: pool, cidr, kind: 'vpc' });
  const d = ctx.cluster.description;
  const runs = d.hosts.map((host, i) =>
    startWorker({
      host,
      mode,
      // The shared-record peer writes under /bench/, outside the netd user's rights.
      etcd: mode === 'allocate' ? d.etcd.hostClient : hostEtcdClient(d, 'root'),
      pool: mode === 'allocate' ? pool : `${pool}=${cidr}`,
      prefix: `${pool}-h${i}`,
      count: perHost,
      concurrency: CONCURRENCY,
      dir: ctx.dir,
      tag: `${pool}-${i}`,
    }),
  );
  const summaries = await Promise.all(runs.map(finished));
  const wall = Math.max(...summaries.map((s) => s.elapsedMs));
  await ctx.store.deletePrefix('/netd/v1/ipam/');
  await ctx.store.deletePrefix('/bench/');
  return combine(summaries, HOSTS * perHost, wall);
}

function clusterLifecycle(runner: CommandRunner) {
  let ctx: ClusterContext | undefined;
  return {
    async setup() {
      const prefix = `bi${uniqueSuffix(2)}`;
      const cluster = await VirtualCluster.up({ prefix, hosts: HOSTS }, { runner });
      ctx = {
        cluster,
        store: new EtcdStore(cluster.description.etcd.client),
        dir: mkdtempSync(join(tmpdir(), 'bench-ipam-')),
        trial: 0,
      };
    },
    async teardown() {
      if (!ctx) return;
      await ctx.store.close();
      await teardownCluster(ctx.cluster.prefix, { runner });
      rmSync(ctx.dir, { recursive: true, force: true });
    },
    context(): ClusterContext {
      if (!ctx) throw new Error('setup did not run');
      return ctx;
    },
  };
}

export function ipamVsSharedRecordBenchmark(runner: CommandRunner): Benchmark {
  const life = clusterLifecycle(runner);
  return {
    name: 'ipam-vs-shared-record',
    title: `ipam: ${HOSTS} hosts allocating concurrently, vs one shared allocation record`,
    description:
      `${HOSTS} allocator processes on ${HOSTS} virtual hosts each allocate ${PER_HOST} addresses (${CONCURRENCY} in flight per host) ` +
      'from one /16 pool through one real etcd. Subject: netd ipam (per-host block affinity, coalesced CAS transactions). ' +
      'Peer: the Whereabouts design, one compare-and-swap per address on a single record holding the whole pool, ' +
      `with the same concurrency but ${SHARED_PER_HOST} addresses per host (a smaller record flatters it). ` +
      'Throughput: higher is better (target: ≥ 10× the peer and ≥ 2,000/s). Latency per allocation: lower is better.',
    subjectLabel: 'netd ipam',
    peerLabel: 'shared allocation record (Whereabouts design)',
    metrics: METRICS,
    runs: 3,
    needsRoot: true,
    setup: () => life.setup(),
    teardown: () => life.teardown(),
    trial: (side) => clusterTrial(life.context(), side === 'subject' ? 'allocate' : 'allocate-shared'),
  };
}

export function ipamVsHostLocalBenchmark(runner: CommandRunner): Benchmark {
  const life = clusterLifecycle(runner);
  let dataDir = '';
  let trial = 0;
  return {
    name: 'ipam-vs-host-local',
    title: `ipam: ${HOSTS} hosts allocating concurrently, vs the reference host-local plugin on one host`,
    description:
      `Subject as in ipam-vs-shared-record (cluster-wide, ${HOSTS} hosts, ${HOSTS * PER_HOST} addresses). ` +
      `Peer: the reference host-local CNI IPAM plugin (containernetworking-plugins) on one host, ${PER_HOST} ADDs with ` +
      `${CONCURRENCY / 2} in flight; each ADD is a process, as a runtime runs it, and host-local only knows its own host. ` +
      'Throughput: higher is better; latency per allocation: lower is better.',
    subjectLabel: 'netd ipam (4 hosts, library)',
    peerLabel: 'host-local (1 host, one exec per ADD)',
    metrics: METRICS,
    runs: 3,
    needsRoot: true,
    async setup() {
      await life.setup();
      dataDir = mkdtempSync(join(tmpdir(), 'bench-host-local-'));
    },
    async teardown() {
      await life.teardown();
      rmSync(dataDir, { recursive: true, force: true });
    },
    async trial(side) {
      if (side === 'subject') return clusterTrial(life.context(), 'allocate');
      const n = trial++;
      const conf = JSON.stringify({
        cniVersion: '1.0.0',
        name: `hl${n}`,
        type: 'bridge',
        ipam: { type: 'host-local', ranges: [[{ subnet: '10.201.0.0/16' }]], dataDir: join(dataDir, String(n)) },
      });
      const latencies: number[] = [];
      let next = 0;
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: CONCURRENCY / 2 }, async () => {
          for (;;) {
            const i = next++;
            if (i >= PER_HOST) return;
            const started = performance.now();
            await runner.run({
              argv: ['/usr/lib/cni/host-local'],
              stdin: conf,
              env: {
                CNI_COMMAND: 'ADD',
                CNI_CONTAINERID: `c${i}`,
                CNI_NETNS: '/run/netns/none',
                CNI_IFNAME: 'eth0',
                CNI_PATH: '/usr/lib/cni',
              },
            });
            latencies.push(performance.now() - started);
          }
        }),
      );
      const wall = performance.now() - t0;
      return {
        'allocations/s': (PER_HOST / wall) * 1000,
        'p50 latency': quantile(latencies, 0.5),
        'p99 latency': quantile(latencies, 0.99),
      };
    },
  };
}
