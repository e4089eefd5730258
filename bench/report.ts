import { relativeSpread, type Summary } from './stats.js';

/**
 * Renders benchmark results into docs/benchmarks.md. Each benchmark owns one marked section, so a
 * run of one benchmark replaces its own figures and keeps everybody else's (pure string functions).
 */

export interface MetricResult {
  metric: string;
  unit: string;
  better: 'lower' | 'higher';
  subject: Summary;
  peer: Summary;
}

export interface BenchmarkResult {
  name: string;
  title: string;
  subjectLabel: string;
  peerLabel: string;
  description: string;
  metrics: MetricResult[];
  /** Extra figures worth keeping beside the comparison (e.g. RSS). */
  notes?: string[];
  environment: string;
  date: string;
}

/** subject / peer; for "lower is better" a ratio ≤ 1 means we win. */
export function ratio(m: MetricResult): number {
  return m.peer.median === 0 ? Infinity : m.subject.median / m.peer.median;
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  if (Math.abs(n) >= 0.1 || n === 0) return n.toFixed(2);
  return n.toPrecision(2);
}

export function renderSection(r: BenchmarkResult): string {
  const lines = [
    `<!-- bench:${r.name}:start -->`,
    `## ${r.title}`,
    '',
    r.description,
    '',
    `Subject: **${r.subjectLabel}**. Peer: **${r.peerLabel}**. ${r.date}, ${r.environment}.`,
    '',
    '| metric | subject median (p10–p90) | peer median (p10–p90) | ratio subject/peer | better | runs |',
    '|---|---|---|---|---|---|',
  ];
  for (const m of r.metrics) {
    const s = m.subject;
    const p = m.peer;
    lines.push(
      `| ${m.metric} (${m.unit}) | ${fmt(s.median)} (${fmt(s.p10)}–${fmt(s.p90)}, ±${(relativeSpread(s) * 50).toFixed(0)}%) | ` +
        `${fmt(p.median)} (${fmt(p.p10)}–${fmt(p.p90)}) | **${fmt(ratio(m))}** | ${m.better} | ${s.runs} |`,
    );
  }
  if (r.notes?.length) lines.push('', ...r.notes.map((n) => `- ${n}`));
  lines.push(`<!-- bench:${r.name}:end -->`);
  return lines.join('\n');
}

export const DOC_HEADER = `# Benchmarks

Written by \`npm run bench\` (see README). Every benchmark runs the subject and its peer
alternately in the same run on the same machine, several times, and reports medians with the
p10–p90 spread; the ratio is subject median / peer median. Sections are replaced one at a time, so
each keeps the date of its own last run.
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
