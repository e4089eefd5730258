import { relativeSpread, type Summary } from './stats.js';

/**
 * Renders benchmark results into docs/benchmarks.md. Each benchmark owns one marked section, so a
 * run of one benchmark replaces its own figures and keeps everybody else's (pure string functions).
 * Every section says what each side does that the other does not and where each keeps its state:
 * those are fields of the result, so no section can leave them out.
 */

export interface MetricResult {
  metric: string;
  unit: string;
  better: 'lower' | 'higher';
  subject: Summary;
  peer: Summary;
  /** By baseline name; a baseline that does not give this metric is absent. */
  baselines?: Record<string, Summary>;
}

export interface BenchmarkResult {
  name: string;
  title: string;
  subjectLabel: string;
  peerLabel: string;
  description: string;
  subjectOnly: string[];
  peerOnly: string[];
  store: string;
  baselines: Array<{ name: string; description: string }>;
  method: { runs: number; warmup: string; sides: string[] };
  metrics: MetricResult[];
  /** Extra figures worth keeping beside the comparison (e.g. RSS). */
  notes?: string[];
  environment: string;
  date: string;
}

/** a / b by medians; for "lower is better" a ratio ≤ 1 means a wins. */
export function medianRatio(a: Summary, b: Summary): number {
  return b.median === 0 ? Infinity : a.median / b.median;
}

/** subject / peer; for "lower is better" a ratio ≤ 1 means we win. */
export function ratio(m: MetricResult): number {
  return medianRatio(m.subject, m.peer);
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  if (Math.abs(n) >= 0.1 || n === 0) return n.toFixed(2);
  return n.toPrecision(2);
}

function spread(s: Summary, withPercent: boolean): string {
  const pct = withPercent ? `, ±${(relativeSpread(s) * 50).toFixed(0)}%` : '';
  return `${fmt(s.median)} (${fmt(s.p10)}–${fmt(s.p90)}${pct})`;
}

function list(items: readonly string[]): string[] {
  return items.length ? items.map((x) => `- ${x}`) : ['- nothing'];
}

export function renderSection(r: BenchmarkResult): string {
  if (!r.store.trim()) throw new Error(`${r.name}: the result does not say where state is stored`);
  const lines = [
    `<!-- bench:${r.name}:start -->`,
    `## ${r.title}`,
    '',
    r.description,
    '',
    `Subject: **${r.subjectLabel}**. Peer: **${r.peerLabel}**. ${r.date}, ${r.environment}.`,
    '',
    `Store: ${r.store}`,
    '',
    `Only the subject (${r.subjectLabel}):`,
    ...list(r.subjectOnly),
    '',
    `Only the peer (${r.peerLabel}):`,
    ...list(r.peerOnly),
    '',
    '| metric | subject median (p10–p90) | peer median (p10–p90) | ratio subject/peer | better | runs |',
    '|---|---|---|---|---|---|',
  ];
  for (const m of r.metrics) {
    lines.push(
      `| ${m.metric} (${m.unit}) | ${spread(m.subject, true)} | ${spread(m.peer, false)} | **${fmt(ratio(m))}** | ${m.better} | ${m.subject.runs} |`,
    );
  }
  if (r.baselines.length > 0) {
    lines.push('', 'Baselines, measured in the same rotation as subject and peer:');
    for (const b of r.baselines) lines.push(`- **${b.name}**: ${b.description}`);
    lines.push(
      '',
      '| metric | baseline | median (p10–p90) | subject/baseline | peer/baseline | runs |',
      '|---|---|---|---|---|---|',
    );
    for (const b of r.baselines) {
      for (const m of r.metrics) {
        const s = m.baselines?.[b.name];
        if (!s) continue;
        lines.push(
          `| ${m.metric} (${m.unit}) | ${b.name} | ${spread(s, false)} | ${fmt(medianRatio(m.subject, s))} | ${fmt(medianRatio(m.peer, s))} | ${s.runs} |`,
        );
      }
    }
  }
  lines.push(
    '',
    `Method: ${r.method.runs} measured run(s) per side after a warm-up (${r.method.warmup}); ` +
      `the order of the sides (${r.method.sides.join(', ')}) rotates by one every run.`,
  );
  if (r.notes?.length) lines.push('', ...r.notes.map((n) => `- ${n}`));
  lines.push(`<!-- bench:${r.name}:end -->`);
  return lines.join('\n');
}

export const DOC_HEADER = `# Benchmarks

Written by \`npm run bench\` (see README). Every benchmark runs the subject and its peer (and any
baseline, such as the same kernel work done by bare \`ip\` commands) in the same run on the same
machine: one warm-up of every side, then several runs in which the order of the sides rotates. It
reports medians with the p10–p90 spread; the ratio is subject median / peer median. Each section
says what each side does that the other does not and where each keeps its state. Sections are
replaced one at a time, so each keeps the date of its own last run.
`;

export function upsertSection(doc: string, r: BenchmarkResult): string {
  const base = doc.trim() === '' ? DOC_HEADER : doc;
  const section = renderSection(r);
  const start = `<!-- bench:${r.name}:start -->`;
  const end = `<!-- bench:${r.name}:end -->`;
  const i = base.indexOf(start);
  const j = base.indexOf(end);
  if (i >= 0 && j > i) return base.slice(0, i) + section + base.slice(j + end.length);
  return `${base.trimEnd()}\n\n${section}\n`;
}
