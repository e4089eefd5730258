#!/usr/bin/env node
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { parseArgs } from 'node:util';
import { describeError } from '../core/errors.js';
import { ExecRunner } from '../sys/runner.js';
import { runBenchmark } from './benchmark.js';
import { ratio, upsertSection } from './report.js';
import { registry, select } from './registry.js';

/**
 * `npm run bench [-- NAME... --runs N --etcd 1|3 --out FILE --list]`: runs benchmarks and updates
 * their sections of docs/benchmarks.md. Benchmarks on etcd exist once per store: `NAME` (1 member)
 * and `NAME@etcd3` (3 members); `--etcd` keeps only those on that many members.
 */

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      runs: { type: 'string' },
      etcd: { type: 'string' },
      out: { type: 'string', default: 'docs/benchmarks.md' },
      list: { type: 'boolean', default: false },
    },
  });
  if (values.etcd !== undefined && values.etcd !== '1' && values.etcd !== '3')
    throw new Error(`--etcd must be 1 or 3 (members), not "${values.etcd}"`);
  const etcdMembers = values.etcd === undefined ? undefined : (Number(values.etcd) as 1 | 3);
  const chosen = select(registry(new ExecRunner()), positionals, etcdMembers);
  if (values.list) {
    for (const { benchmark: b } of chosen) process.stdout.write(`${b.name}\t${b.title}\n`);
    return;
  }
  const runs = values.runs === undefined ? undefined : Number(values.runs);
  const environment = `${cpus().length} cores, kernel ${release()}, node ${process.version}`;
  for (const { benchmark: b } of chosen) {
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
