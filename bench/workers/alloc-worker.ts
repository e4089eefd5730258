/**
 * One allocating process of the ipam benchmarks, run in a virtual host's namespace:
 *   alloc-worker '<json WorkerSpec>'
 * It gets ready (etcd connected, or the posix_spawn helper started), waits at the start barrier,
 * then makes `count` allocations with `concurrency` in flight and reports their latencies.
 */
import { EtcdStore, type EtcdConnectionOptions } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { SpawnerRunner } from '../../sys/runner.js';
import { SharedRecordAllocator } from '../peers/shared-record.js';
import { joinBarrier } from '../barrier.js';

export interface WorkerSpec {
  mode: 'netd-ipam' | 'shared-record' | 'host-local';
  barrier: string;
  count: number;
  concurrency: number;
  /** Handles are `${prefix}-${i}:eth0`. */
  prefix: string;
  /** netd-ipam and shared-record: how to reach etcd from the host (TLS files, user), and what to allocate. */
  etcd?: { client: EtcdConnectionOptions; host: string; pool: string; cidr: string };
  /** host-local: the network config it is given (its dataDir is this host's). */
  hostLocal?: { binary: string; config: object };
}

export interface WorkerReport {
  latencies: number[];
}

const spec = JSON.parse(process.argv[2] ?? '{}') as WorkerSpec;

async function main(): Promise<void> {
  let allocate: (i: number) => Promise<unknown>;
  let close: () => Promise<void>;
  if (spec.mode === 'host-local') {
    const hl = spec.hostLocal!;
    const spawner = new SpawnerRunner();
    // Started before the barrier, as a runtime's helper would be.
    await spawner.run({ argv: ['/bin/true'] });
    const stdin = JSON.stringify(hl.config);
    allocate = (i) =>
      spawner.run({
        argv: [hl.binary],
        stdin,
        env: {
          CNI_COMMAND: 'ADD',
          CNI_CONTAINERID: `${spec.prefix}-${i}`,
          CNI_NETNS: '/run/netns/none',
          CNI_IFNAME: 'eth0',
          CNI_PATH: '/usr/lib/cni',
        },
      });
    close = async () => spawner.close();
  } else {
    const e = spec.etcd!;
    const store = new EtcdStore({ ...e.client, callTimeoutMs: 30_000 });
    // Connected before the start, reading where this worker's etcd user may read.
    await store.get(spec.mode === 'netd-ipam' ? '/netd/connect' : '/bench/connect');
    if (spec.mode === 'netd-ipam') {
      const ipam = new Ipam({ store, host: e.host });
      await ipam.getPool(e.pool); // the pool spec cached, as in a running daemon
      allocate = (i) =>
        ipam.allocate({
          pool: e.pool,
          handle: `${spec.prefix}-${i}:eth0`,
          owner: { containerId: `${spec.prefix}-${i}`, ifname: 'eth0' },
        });
    } else {
      const shared = new SharedRecordAllocator(store, e.cidr, e.pool);
      allocate = (i) => shared.allocate(`${spec.prefix}-${i}:eth0`);
    }
    close = () => store.close();
  }

  const barrier = await joinBarrier(spec.barrier);
  const latencies: number[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: spec.concurrency }, async () => {
      for (let i = next++; i < spec.count; i = next++) {
        const started = performance.now();
        await allocate(i);
        latencies.push(performance.now() - started);
      }
    }),
  );
  await barrier.report({ latencies } satisfies WorkerReport);
  await close();
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`alloc-worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
