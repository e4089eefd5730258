import t from 'tap';
import { quantile, summarize } from '../../stats.js';
import { ratio, upsertSection, type BenchmarkResult } from '../../report.js';
import { runBenchmark } from '../../benchmark.js';

t.test('quantiles interpolate', async (t) => {
  t.equal(quantile([1, 2, 3, 4], 0.5), 2.5);
  t.equal(quantile([5], 0.9), 5);
  t.equal(quantile([3, 1, 2], 0), 1);
  t.same(summarize([1, 2, 3, 4, 5]), { runs: 5, median: 3, p10: 1.4, p90: 4.6, min: 1, max: 5 });
  t.throws(() => quantile([], 0.5));
});

const result = (name: string, subject: number, peer: number): BenchmarkResult => ({
  name,
  title: `T ${name}`,
  description: 'd',
  subjectLabel: 's',
  peerLabel: 'p',
  metrics: [{ metric: 'm', unit: 'ms', better: 'lower', subject: summarize([subject]), peer: summarize([peer]) }],
  environment: 'env',
  date: '2026-01-01',
});

t.test('sections are replaced in place and others kept', async (t) => {
  let doc = upsertSection('', result('a', 1, 2));
  doc = upsertSection(doc, result('b', 3, 3));
  t.match(doc, /# Benchmarks/);
  t.match(doc, /\*\*0\.50\*\*/);
  doc = upsertSection(doc, result('a', 4, 2));
  t.notMatch(doc, /\*\*0\.50\*\*/, 'old figures of a are gone');
  t.match(doc, /\*\*2\.00\*\*/);
  t.equal(doc.match(/bench:a:start/g)?.length, 1);
  t.match(doc, /## T b/, 'b kept');
  t.equal(ratio(result('c', 1, 4).metrics[0]!), 0.25);
});

t.test('the runner alternates sides and summarises each', async (t) => {
  const order: string[] = [];
  let n = 0;
  const r = await runBenchmark(
    {
      name: 'x',
      title: 'x',
      description: '',
      subjectLabel: 's',
      peerLabel: 'p',
      metrics: [{ name: 'v', unit: 'u', better: 'lower' }],
      runs: 4,
      async trial(side) {
        order.push(side);
        n++;
        return { v: side === 'subject' ? 10 : 20 };
      },
    },
    { environment: 'test', now: new Date('2026-01-02') },
  );
  t.equal(n, 10, 'one warm-up per side plus runs');
  t.same(order.slice(2, 6), ['subject', 'peer', 'peer', 'subject']);
  t.equal(r.metrics[0]?.subject.median, 10);
  t.equal(ratio(r.metrics[0]!), 0.5);
  t.equal(r.date, '2026-01-02');
});
