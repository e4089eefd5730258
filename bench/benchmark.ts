import { summarize, type Summary } from './stats.js';
import type { BenchmarkResult, MetricResult } from './report.js';

/**
 * A benchmark compares a subject (our code) with a peer (a reference tool or design) in one run.
 * Each trial measures one side once and returns its metrics. The runner warms every side up, then
 * measures them in turn, rotating which goes first each run, so drift on a shared 2-core machine
 * hits all of them alike. Baselines (say, the same kernel work done by bare `ip` commands) are
 * extra sides measured in the same rotation and reported beside the comparison.
 */

export type Side = 'subject' | 'peer';

export interface MetricSpec {
  name: string;
  unit: string;
  better: 'lower' | 'higher';
}

export interface BaselineSpec {
  /** Short name, used in the report's table (e.g. "bare ip"). */
  name: string;
  /** What it measures and how, rendered in the section. */
  description: string;
}

export interface TrialContext {
  warmup: boolean;
}

export interface Benchmark {
  name: string;
  title: string;
  description: string;
  subjectLabel: string;
  peerLabel: string;
  /**
   * Work and guarantees the subject provides that the peer does not, and the other way round.
   * Rendered in every section: a ratio means little without them. Say "nothing" explicitly with [].
   */
  subjectOnly: string[];
  peerOnly: string[];
  /**
   * Where each side keeps its state (e.g. "netd: etcd 3.4, 1 member, data on disk (ext4), fsync
   * per commit; peer: files on ext4, no fsync"). Read after setup, so it can describe what setup found.
   */
  store: string | (() => string);
  metrics: MetricSpec[];
  /** Measured runs per side, after the warm-up. */
  runs: number;
  /** Extra sides measured in the same rotation; each may give a subset of the metrics. */
  baselines?: BaselineSpec[];
  /**
   * The warm-up before measuring: by default one full trial of every side, discarded. A benchmark
   * whose trials are long may warm up with less; `description` says what, in the report.
   */
  warmup?: { description: string; run(side: string): Promise<void> };
  needsRoot?: boolean;
  setup?(): Promise<void>;
  /** One measurement of a side; `ctx.warmup` when its figures are discarded (so notes can skip it). */
  trial(side: Side, ctx: TrialContext): Promise<Record<string, number>>;
  baselineTrial?(name: string, ctx: TrialContext): Promise<Record<string, number>>;
  teardown?(): Promise<void>;
  notes?(): string[];
}

export interface RunOptions {
  runs?: number;
  environment: string;
  now?: Date;
  onProgress?: (msg: string) => void;
}

/** The order of the sides in run `i`: rotated by one each run, so each side goes first as often. */
export function rotation(sides: readonly string[], i: number): string[] {
  const k = i % sides.length;
  return [...sides.slice(k), ...sides.slice(0, k)];
}

export const DEFAULT_WARMUP = 'one full trial of every side, discarded';

export async function runBenchmark(b: Benchmark, opts: RunOptions): Promise<BenchmarkResult> {
  const runs = opts.runs ?? b.runs;
  if (!Number.isInteger(runs) || runs < 1) throw new Error(`${b.name}: runs must be a positive integer`);
  const baselines = b.baselines ?? [];
  const sides = ['subject', 'peer', ...baselines.map((x) => x.name)];
  if (new Set(sides).size !== sides.length)
    throw new Error(`${b.name}: baseline names must differ from each other and from subject/peer`);
  if (baselines.length > 0 && !b.baselineTrial) throw new Error(`${b.name}: baselines need baselineTrial`);
  const samples = new Map<string, Record<string, number[]>>(sides.map((s) => [s, {}]));
  const measure = (side: string, ctx: TrialContext) =>
    side === 'subject' || side === 'peer' ? b.trial(side, ctx) : b.baselineTrial!(side, ctx);
  const baselineMetrics = new Map<string, string>();

  try {
    // Inside the try: a setup that fails half-way is torn down too.
    await b.setup?.();
    const store = typeof b.store === 'function' ? b.store() : b.store;
    for (const side of sides) {
      if (b.warmup) await b.warmup.run(side);
      else await measure(side, { warmup: true });
    }
    opts.onProgress?.(`${b.name}: warmed up`);
    for (let i = 0; i < runs; i++) {
      for (const side of rotation(sides, i)) {
        const measured = await measure(side, { warmup: false });
        const isBaseline = side !== 'subject' && side !== 'peer';
        const given = b.metrics.filter((m) => measured[m.name] !== undefined).map((m) => m.name);
        if (isBaseline) {
          if (given.length === 0) throw new Error(`${b.name}: baseline ${side} gave none of the metrics`);
          const key = given.join('\u0000');
          if ((baselineMetrics.get(side) ?? key) !== key)
            throw new Error(`${b.name}: baseline ${side} gave different metrics in different trials`);
          baselineMetrics.set(side, key);
        }
        for (const m of b.metrics) {
          const v = measured[m.name];
          if (v === undefined && isBaseline) continue;
          if (v === undefined || !Number.isFinite(v))
            throw new Error(`${b.name}: ${side} trial gave no value for ${m.name}`);
          (samples.get(side)![m.name] ??= []).push(v);
        }
      }
      opts.onProgress?.(`${b.name}: run ${i + 1}/${runs}`);
    }
    const metrics: MetricResult[] = b.metrics.map((m) => {
      const of = (side: string): Summary | undefined => {
        const v = samples.get(side)![m.name];
        return v ? summarize(v) : undefined;
      };
      const baselineSummaries: Record<string, Summary> = {};
      for (const x of baselines) {
        const s = of(x.name);
        if (s) baselineSummaries[x.name] = s;
      }
      return {
        metric: m.name,
        unit: m.unit,
        better: m.better,
        subject: of('subject')!,
        peer: of('peer')!,
        ...(baselines.length > 0 && { baselines: baselineSummaries }),
      };
    });
    return {
      name: b.name,
      title: b.title,
      description: b.description,
      subjectLabel: b.subjectLabel,
      peerLabel: b.peerLabel,
      subjectOnly: b.subjectOnly,
      peerOnly: b.peerOnly,
      store,
      baselines,
      method: { runs, warmup: b.warmup?.description ?? DEFAULT_WARMUP, sides },
      metrics,
      notes: b.notes?.(),
      environment: opts.environment,
      date: (opts.now ?? new Date()).toISOString().slice(0, 10),
    };
  } finally {
    await b.teardown?.();
  }
}
