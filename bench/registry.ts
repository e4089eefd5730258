import type { CommandRunner } from '../sys/runner.js';
import type { Benchmark } from './benchmark.js';
import { STORE_VARIANTS, type EtcdMembers } from './benchmarks/bench-cluster.js';
import { linkBatchBenchmark } from './benchmarks/link-batch.js';
import { ipamVsSharedRecordBenchmark, ipamVsHostLocalBenchmark } from './benchmarks/ipam-throughput.js';
import { netdCniLatencyBenchmark } from './benchmarks/netd-cni-latency.js';
import { netdFullAddBenchmark } from './benchmarks/netd-full-add.js';
import { netdScaleBenchmark } from './benchmarks/netd-scale.js';
import { netdDelBenchmark } from './benchmarks/netd-del.js';
import { netdPathBenchmark } from './benchmarks/netd-path.js';
import { tagqueueApplyBenchmark } from './benchmarks/tagqueue-apply.js';

/** A registered benchmark and, when it keeps state in etcd, how many members that etcd has. */
export interface Entry {
  benchmark: Benchmark;
  etcdMembers?: EtcdMembers;
}

type ClusterBenchmark = (runner: CommandRunner, opts: { etcdMembers: EtcdMembers; suffix: string }) => Benchmark;

/** Every benchmark; those on etcd once per store variant (`name` on 1 member, `name@etcd3` on 3). */
export function registry(runner: CommandRunner): Entry[] {
  const onEtcd: ClusterBenchmark[] = [
    ipamVsSharedRecordBenchmark,
    ipamVsHostLocalBenchmark,
    netdCniLatencyBenchmark,
    (r, v) => netdCniLatencyBenchmark(r, { ...v, mode: 'routed' }),
    (r, v) => netdCniLatencyBenchmark(r, { ...v, mode: 'vlan' }),
    netdDelBenchmark,
    netdFullAddBenchmark,
    netdScaleBenchmark,
  ];
  return [
    { benchmark: linkBatchBenchmark(runner) },
    // The data path does not touch etcd: once, not per store.
    { benchmark: netdPathBenchmark(runner, 'routed') },
    { benchmark: netdPathBenchmark(runner, 'vxlan') },
    { benchmark: netdPathBenchmark(runner, 'vlan') },
    { benchmark: tagqueueApplyBenchmark(runner) },
    ...STORE_VARIANTS.flatMap((v) =>
      onEtcd.map((make) => ({ benchmark: make(runner, v), etcdMembers: v.etcdMembers })),
    ),
  ];
}

/** Picks benchmarks by name (all when none) and, with `etcdMembers`, only those on such an etcd. */
export function select(all: Entry[], names: readonly string[], etcdMembers?: EtcdMembers): Entry[] {
  const unknown = names.filter((n) => !all.some((e) => e.benchmark.name === n));
  if (unknown.length) throw new Error(`unknown benchmark(s): ${unknown.join(', ')} (try --list)`);
  return all.filter(
    (e) =>
      (names.length === 0 || names.includes(e.benchmark.name)) &&
      (etcdMembers === undefined || e.etcdMembers === etcdMembers),
  );
}
