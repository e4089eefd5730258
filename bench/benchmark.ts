import { summarize } from './stats.js';
import type { BenchmarkResult, MetricResult } from './report.js';

/**
 * A benchmark compares a subject (our code) with a peer (a reference tool or design) in one run.
 * Each trial measures one side once and returns its metrics; the runner alternates sides (and which
 * goes first) so drift on a shared 2-core machine hits both equally.
 */

export type Side = 'subject' | 'peer';

export interface MetricSpec {
  name: string;
  unit: string;
  better: 'lower' | 'higher';
}

export interface Benchmark {
  name: string;
  title: string;
  description: string;
  subjectLabel: string;
  peerLabel: string;
  metrics: MetricSpec[];
  /** Trials per side (after one warm-up each, unless `warmup` is false). */
  runs: number;
  warmup?: boolean;
  needsRoot?: boolean;
  setup?(): Promise<void>;
  trial(side: Side): Promise<Record<string, number>>;
  teardown?(): Promise<void>;
  notes?(): string[];
}

export interface RunOptions {
  runs?: number;
  environment: string;
  now?: Date;
  onProgress?: (msg: string) => void;
}

export async function runBenchmark(b: Benchmark, opts: RunOptions): Promise<BenchmarkResult> {
  const runs = opts.runs ?? b.runs;
  const samples: Record<Side, Record<string, number[]>> = { subject: {}, peer: {} };
  await b.setup?.();
  try {
    if (b.warmup !== false) {
      await b.trial('subject');
      await b.trial('peer');
    }
    for (let i = 0; i < runs; i++) {
      const order: Side[] = i % 2 === 0 ? ['subject', 'peer'] : ['peer', 'subject'];
      for (const side of order) {
        const measured = await b.trial(side);
        for (const m of b.metrics) {
          const v = measured[m.name];
          if (v === undefined || !Number.isFinite(v))
            throw new Error(`${b.name}: ${side} trial gave no value for ${m.name}`);
          (samples[side][m.name] ??= []).push(v);
        }
      }
      opts.onProgress?.(`${b.name}: run ${i + 1}/${runs}`);
    }
  } finally {
    await b.teardown?.();
  }
  const metrics: MetricResult[] = b.metrics.map((m) => ({
    metric: m.name,
    unit: m.unit,
    better: m.better,
    subject: summarize(samples.subject[m.name]!),
    peer: summarize(samples.peer[m.name]!),
  }));
  return {
    name: b.name,
    title: b.title,
    description: b.description,
    subjectLabel: b.subjectLabel,
    peerLabel: b.peerLabel,
    metrics,
    notes: b.notes?.(),
    environment: opts.environment,
    date: (opts.now ?? new Date()).toISOString().slice(0, 10),
  };
}
