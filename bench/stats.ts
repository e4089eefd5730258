/** Order statistics for benchmark samples (pure). */

export interface Summary {
  runs: number;
  median: number;
  p10: number;
  p90: number;
  min: number;
  max: number;
}

/** Linear-interpolated quantile of `q` in [0, 1]. */
export function quantile(samples: readonly number[], q: number): number {
  if (samples.length === 0) throw new RangeError('no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

export function summarize(samples: readonly number[]): Summary {
  return {
    runs: samples.length,
    median: quantile(samples, 0.5),
    p10: quantile(samples, 0.1),
    p90: quantile(samples, 0.9),
    min: Math.min(...samples),
    max: Math.max(...samples),
  };
}

/** Spread as a fraction of the median: (p90 - p10) / median. */
export function relativeSpread(s: Summary): number {
  return s.median === 0 ? 0 : (s.p90 - s.p10) / s.median;
}

/** "median (min–max)" of one figure over the measured trials, for notes. */
export function describeRuns(values: readonly number[], digits = 0, unit = ''): string {
  if (values.length === 0) return 'n/a';
  const f = (v: number) => v.toFixed(digits);
  const median = quantile(values, 0.5);
  if (values.length === 1) return `${f(median)}${unit}`;
  return `${f(median)}${unit} (${f(Math.min(...values))}–${f(Math.max(...values))})`;
}
