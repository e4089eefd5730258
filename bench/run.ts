#!/usr/bin/env node
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { parseArgs } from 'node:util';
import { describeError } from '../core/errors.js';
import { ExecRunner } from '../sys/runner.js';
import { runBenchmark, type Benchmark } from './benchmark.js';
import { ratio, upsertSection } from './report.js';
import { linkBatchBenchmark } from './benchmarks/link-batch.js';
import { ipamVsSharedRecordBenchmark, ipamVsHostLocalBenchmark } from './benchmarks/ipam-throughput.js';
import { netdCniLatencyBenchmark } from './benchmarks/netd-cni-latency.js';
import { netdFullAddBenchmark } from './benchmarks/netd-full-add.js';
import { netdScaleBenchmark } from './benchmarks/netd-scale.js';

/** `npm run bench [-- NAME... --runs N --out FILE]`: runs benchmarks, updates docs/benchmarks.md. */

function registry(): Benchmark[] {
  const runner = new ExecRunner();
  return [
    linkBatchBenchmark(runner),
    ipamVsSharedRecordBenchmark(runner),
    ipamVsHostLocalBenchmark(runner),
    netdCniLatencyBenchmark(runner),
    netdFullAddBenchmark(runner),
    netdScaleBenchmark(runner),
  ];
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      runs: { type: 'string' },
      out: { type: 'string', default: 'docs/benchmarks.md' },
      list: { type: 'boolean', default: false },
    },
  });
  const all = registry();
  if (values.list) {
    for (const b of all) process.stdout.write(`${b.name}\t${b.title}\n`);
    return;
  }
  const unknown = positionals.filter((n) => !all.some((b) => b.name === n));
  if (unknown.length) throw new Error(`unknown benchmark(s): ${unknown.join(', ')} (try --list)`);
  const chosen = positionals.length ? all.filter((b) => positionals.includes(b.name)) : all;
  const runs = values.runs === undefined ? undefined : Number(values.runs);
  const environment = `${cpus().length} cores, kernel ${release()}, node ${process.version}`;
  for (const b of chosen) {
    if (b.needsRoot && process.getuid?.() !== 0) throw new Error(`${b.name} needs root`);
    const result = await runBenchmark(b, { runs, environment, onProgress: (m) => process.stderr.write(`${m}\n`) });
    for (const m of result.metrics) {
      process.stdout.write(
        `${b.name} ${m.metric}: subject ${m.subject.median.toFixed(2)} ${m.unit}, peer ${m.peer.median.toFixed(2)} ${m.unit}, ratio ${ratio(m).toFixed(3)} (${m.better} is better)\n`,
      );
    }
    const doc = existsSync(values.out) ? readFileSync(values.out, 'utf8') : '';
    writeFileSync(values.out, upsertSection(doc, result));
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${describeError(err)}\n`);
  process.exit(1);
});
