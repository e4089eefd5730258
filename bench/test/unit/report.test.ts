import t from 'tap';
import { quantile, summarize, describeRuns } from '../../stats.js';
import { ratio, renderSection, upsertSection, type BenchmarkResult } from '../../report.js';
import { rotation, runBenchmark, type Benchmark } from '../../benchmark.js';

t.test('quantiles interpolate', async (t) => {
  t.equal(quantile([1, 2, 3, 4], 0.5), 2.5);
  t.equal(quantile([5], 0.9), 5);
  t.equal(quantile([3, 1, 2], 0), 1);
  t.same(summarize([1, 2, 3, 4, 5]), { runs: 5, median: 3, p10: 1.4, p90: 4.6, min: 1, max: 5 });
  t.throws(() => quantile([], 0.5));
  t.equal(describeRuns([3, 1, 2], 1, ' ms'), '2.0 ms (1.0–3.0)');
  t.equal(describeRuns([4]), '4');
  t.equal(describeRuns([]), 'n/a');
});

const result = (
  name: string,
  subject: number,
  peer: number,
  extra: Partial<BenchmarkResult> = {},
): BenchmarkResult => ({
  name,
  title: `T ${name}`,
  description: 'd',
  subjectLabel: 's',
  peerLabel: 'p',
  subjectOnly: ['writes to etcd with fsync'],
  peerOnly: ['writes files'],
  store: 'etcd, 1 member, on disk',
  baselines: [],
  method: { runs: 1, warmup: 'one full trial of every side, discarded', sides: ['subject', 'peer'] },
  metrics: [{ metric: 'm', unit: 'ms', better: 'lower', subject: summarize([subject]), peer: summarize([peer]) }],
  environment: 'env',
  date: '2026-01-01',
  ...extra,
});

t.test('sections are replaced in place and others kept', async (t) => {
  let doc = upsertSection('', result('a', 1, 2));
  doc = upsertSection(doc, result('b', 3, 3));
  doc = upsertSection(doc, result('a@etcd3', 5, 2));
  t.match(doc, /# Benchmarks/);
  t.match(doc, /\*\*0\.50\*\*/);
  doc = upsertSection(doc, result('a', 4, 2));
  t.notMatch(doc, /\*\*0\.50\*\*/, 'old figures of a are gone');
  t.match(doc, /\*\*2\.00\*\*/);
  t.match(doc, /\*\*2\.50\*\*/, 'a@etcd3 is a section of its own, kept');
  t.equal(doc.match(/bench:a:start/g)?.length, 1);
  t.equal(doc.match(/bench:a@etcd3:start/g)?.length, 1);
  t.match(doc, /## T b/, 'b kept');
  t.equal(ratio(result('c', 1, 4).metrics[0]!), 0.25);
});

t.test('every section says what each side does alone, the store and the method', async (t) => {
  const text = renderSection(result('a', 1, 2));
  t.match(text, /Store: etcd, 1 member, on disk/);
  t.match(text, /Only the subject \(s\):\n- writes to etcd with fsync/);
  t.match(text, /Only the peer \(p\):\n- writes files/);
  t.match(text, /1 measured run\(s\) per side after a warm-up \(one full trial of every side, discarded\)/);
  const nothing = renderSection(result('a', 1, 2, { peerOnly: [] }));
  t.match(nothing, /Only the peer \(p\):\n- nothing/, 'an empty list is said, not left out');
  t.throws(() => renderSection(result('a', 1, 2, { store: ' ' })), /does not say where state is stored/);
});

t.test('baselines get a table of their own, with ratios to both sides', async (t) => {
  const r = result('a', 6, 12, {
    baselines: [{ name: 'bare ip', description: 'the kernel alone' }],
    metrics: [
      {
        metric: 'wall',
        unit: 's',
        better: 'lower',
        subject: summarize([6]),
        peer: summarize([12]),
        baselines: { 'bare ip': summarize([3]) },
      },
      { metric: 'p99', unit: 'ms', better: 'lower', subject: summarize([1]), peer: summarize([1]), baselines: {} },
    ],
  });
  const text = renderSection(r);
  t.match(text, /- \*\*bare ip\*\*: the kernel alone/);
  t.match(text, /\| wall \(s\) \| bare ip \| 3\.00 \(3\.00–3\.00\) \| 2\.00 \| 4\.00 \| 1 \|/);
  t.notMatch(text, /\| p99 \(ms\) \| bare ip/, 'a metric the baseline does not give has no row');
});

const bench = (over: Partial<Benchmark> & Pick<Benchmark, 'trial'>): Benchmark => ({
  name: 'x',
  title: 'x',
  description: '',
  subjectLabel: 's',
  peerLabel: 'p',
  subjectOnly: ['a'],
  peerOnly: ['b'],
  store: 'none',
  metrics: [{ name: 'v', unit: 'u', better: 'lower' }],
  runs: 4,
  ...over,
});

t.test('the runner warms up, alternates sides and summarises each', async (t) => {
  const order: string[] = [];
  const warm: boolean[] = [];
  const r = await runBenchmark(
    bench({
      async trial(side, ctx) {
        order.push(side);
        warm.push(ctx.warmup);
        return { v: side === 'subject' ? 10 : 20 };
      },
    }),
    { environment: 'test', now: new Date('2026-01-02') },
  );
  t.equal(order.length, 10, 'one warm-up per side plus runs');
  t.same(warm.slice(0, 3), [true, true, false]);
  t.same(order.slice(2, 6), ['subject', 'peer', 'peer', 'subject']);
  t.equal(r.metrics[0]?.subject.median, 10);
  t.equal(ratio(r.metrics[0]!), 0.5);
  t.equal(r.date, '2026-01-02');
  t.same(r.method, { runs: 4, warmup: 'one full trial of every side, discarded', sides: ['subject', 'peer'] });
  t.equal(r.store, 'none');
  t.notOk(r.metrics[0]?.baselines, 'no baselines, no baseline figures');
});

t.test('rotation puts each side first equally often', async (t) => {
  const sides = ['subject', 'peer', 'bare'];
  t.same(rotation(sides, 0), ['subject', 'peer', 'bare']);
  t.same(rotation(sides, 1), ['peer', 'bare', 'subject']);
  t.same(rotation(sides, 2), ['bare', 'subject', 'peer']);
  t.same(rotation(sides, 3), ['subject', 'peer', 'bare']);
});

t.test('baselines are measured in the same rotation and reported per metric', async (t) => {
  const order: string[] = [];
  let storeRead = false;
  let setupDone = false;
  const r = await runBenchmark(
    bench({
      runs: 3,
      metrics: [
        { name: 'v', unit: 'u', better: 'lower' },
        { name: 'w', unit: 'u', better: 'lower' },
      ],
      baselines: [{ name: 'floor', description: 'the floor' }],
      store: () => {
        storeRead = setupDone;
        return 'found at setup';
      },
      async setup() {
        setupDone = true;
      },
      warmup: {
        description: 'a small round',
        run: async (side) => {
          order.push(`warm:${side}`);
        },
      },
      async trial(side) {
        order.push(side);
        return { v: side === 'subject' ? 10 : 20, w: 1 };
      },
      async baselineTrial(name) {
        order.push(name);
        return { v: 5 };
      },
    }),
    { environment: 'test' },
  );
  t.ok(storeRead, 'store is read after setup');
  t.equal(r.store, 'found at setup');
  t.same(order, [
    'warm:subject',
    'warm:peer',
    'warm:floor',
    ...['subject', 'peer', 'floor'],
    ...['peer', 'floor', 'subject'],
    ...['floor', 'subject', 'peer'],
  ]);
  t.equal(r.method.warmup, 'a small round');
  t.same(r.method.sides, ['subject', 'peer', 'floor']);
  t.equal(r.metrics[0]?.baselines?.floor?.median, 5);
  t.equal(r.metrics[0]?.baselines?.floor?.runs, 3);
  t.same(r.metrics[1]?.baselines, {}, 'the floor gave no w');
  t.match(renderSection(r), /\| v \(u\) \| floor \| 5\.00/);
});

t.test('the runner refuses incomplete measurements and tears down anyway', async (t) => {
  let tornDown = 0;
  const teardown = async () => {
    tornDown++;
  };
  await t.rejects(
    runBenchmark(
      bench({ teardown, trial: async (side) => (side === 'peer' ? {} : { v: 1 }) as Record<string, number> }),
      {
        environment: 'e',
      },
    ),
    /peer trial gave no value for v/,
  );
  await t.rejects(
    runBenchmark(bench({ teardown, trial: async () => ({ v: NaN }) }), { environment: 'e' }),
    /gave no value for v/,
  );
  await t.rejects(
    runBenchmark(
      bench({
        teardown,
        baselines: [{ name: 'floor', description: '' }],
        trial: async () => ({ v: 1 }),
        baselineTrial: async () => ({}),
      }),
      { environment: 'e' },
    ),
    /baseline floor gave none of the metrics/,
  );
  await t.rejects(
    runBenchmark(
      bench({
        teardown,
        setup: async () => {
          throw new Error('etcd has 1 member, not 3');
        },
        trial: async () => ({ v: 1 }),
      }),
      { environment: 'e' },
    ),
    /not 3/,
  );
  t.equal(tornDown, 4, 'torn down also when setup failed half-way');
  await t.rejects(
    runBenchmark(bench({ baselines: [{ name: 'peer', description: '' }], trial: async () => ({ v: 1 }) }), {
      environment: 'e',
    }),
    /baseline names must differ/,
  );
  await t.rejects(
    runBenchmark(bench({ trial: async () => ({ v: 1 }) }), { environment: 'e', runs: 0 }),
    /runs must be/,
  );
});
