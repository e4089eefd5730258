import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { FakeRunner } from '../../../sys/fake-runner.js';
import { StartBarrier, joinBarrier } from '../../barrier.js';
import { parsePrometheus } from '../../prometheus.js';
import { bridgeIndex, scaleMetrics, scaleSizes } from '../../benchmarks/netd-scale.js';
import { counterDelta } from '../../benchmarks/netd-host.js';
import { registry, select } from '../../registry.js';

t.test('the barrier releases every worker at once and times their reports', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'barrier-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const barrier = await StartBarrier.open<{ n: number }>(join(dir, 'b.sock'), 3);
  t.teardown(() => barrier.close());
  const released: number[] = [];
  const workers = [0, 1, 2].map(async (n) => {
    await sleep(n * 30); // they get ready at different times
    const w = await joinBarrier(join(dir, 'b.sock'));
    released.push(performance.now());
    await sleep(10 * (n + 1));
    await w.report({ n });
  });
  await barrier.ready(5_000);
  t.equal(released.length, 0, 'nobody starts before "go"');
  const t0 = barrier.go();
  await Promise.all(workers);
  const arrivals = await barrier.finished(5_000);
  t.same(arrivals.map((a) => a.report.n).sort(), [0, 1, 2]);
  t.ok(Math.max(...released) - Math.min(...released) < 25, 'released together');
  t.ok(arrivals.every((a) => a.at >= t0));
  const last = arrivals.find((a) => a.report.n === 2)!;
  t.ok(last.at - t0 >= 29, 'the wall time runs from the common start to the last report');
});

t.test('a worker that leaves early fails the barrier', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'barrier-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const barrier = await StartBarrier.open(join(dir, 'b.sock'), 2);
  t.teardown(() => barrier.close());
  const { createConnection } = await import('node:net');
  const sock = createConnection(join(dir, 'b.sock'));
  sock.on('connect', () => sock.end('ready\n'));
  await t.rejects(barrier.ready(5_000), /left before it reported/);
  const lonely = await StartBarrier.open(join(dir, 'c.sock'), 1);
  t.teardown(() => lonely.close());
  await t.rejects(lonely.ready(50), /not every worker was ready after 50 ms/);
});

t.test('prometheus text: counters, labels and histogram sums', async (t) => {
  const samples = parsePrometheus(
    [
      '# HELP netd_reconciles_total Full reconciles',
      '# TYPE netd_reconciles_total counter',
      'netd_reconciles_total{result="ok"} 12',
      'netd_reconciles_total{result="error"} 1',
      'netd_cni_request_duration_seconds_sum{verb="DEL",result="ok"} 0.75',
      'netd_cni_request_duration_seconds_bucket{le="+Inf",verb="DEL",result="ok"} 30',
      'netd_up 1 1700000000000',
      'garbage line',
    ].join('\n'),
  );
  t.equal(samples.length, 5);
  t.same(samples[0], { name: 'netd_reconciles_total', labels: { result: 'ok' }, value: 12 });
  t.equal(samples[2]!.labels.verb, 'DEL');
  t.equal(samples[3]!.labels.le, '+Inf');
  t.equal(samples[4]!.value, 1);
  const delta = counterDelta(
    { reconciles: 2, reconcileSeconds: 1, cni: { DEL: { count: 1, seconds: 0.5 } } },
    { reconciles: 5, reconcileSeconds: 1.5, cni: { DEL: { count: 4, seconds: 0.8 }, ADD: { count: 2, seconds: 1 } } },
  );
  t.equal(delta.reconciles, 3);
  t.equal(delta.cni.DEL!.count, 3);
  t.same(delta.cni.ADD, { count: 2, seconds: 1 });
});

t.test('netd-scale sizes, metrics and bridges', async (t) => {
  t.same(scaleSizes({}), [250, 1000, 4000]);
  t.same(scaleSizes({ BENCH_SCALE_CONTAINERS: '40' }), [40]);
  t.same(scaleSizes({ BENCH_SCALE_SIZES: '80, 20,40,20' }), [20, 40, 80]);
  t.throws(() => scaleSizes({ BENCH_SCALE_SIZES: '10,x' }), /must be integers/);
  t.throws(() => scaleSizes({ BENCH_SCALE_SIZES: '0' }), /must be integers/);
  t.same(
    scaleMetrics([250]).map((m) => m.name),
    ['ADD p50 @250', 'ADD p99 @250', 'ADD wall per container @250', 'DEL p50 @250', 'DEL wall per container @250'],
  );
  t.equal(bridgeIndex(0), 0);
  t.equal(bridgeIndex(999), 0);
  t.equal(bridgeIndex(1000), 1, 'no bridge gets more ports than the kernel allows (1,023)');
  t.equal(bridgeIndex(3999), 3);
});

t.test('the registry: unique names, a 3-member variant of every etcd benchmark, selection', async (t) => {
  const all = registry(new FakeRunner());
  const names = all.map((e) => e.benchmark.name);
  t.equal(new Set(names).size, names.length, 'names are unique (each owns one section)');
  for (const e of all.filter((x) => x.etcdMembers === 1))
    t.ok(names.includes(`${e.benchmark.name}@etcd3`), `${e.benchmark.name} has a 3-member variant`);
  t.ok(names.includes('netd-scale@etcd3'));
  for (const e of all) {
    t.ok(e.benchmark.store, `${e.benchmark.name} says where it stores state`);
    t.ok(e.benchmark.subjectOnly.length + e.benchmark.peerOnly.length > 0, `${e.benchmark.name} says what differs`);
  }
  t.same(
    select(all, ['netd-scale', 'link-batch']).map((e) => e.benchmark.name),
    ['link-batch', 'netd-scale'],
  );
  t.ok(select(all, [], 3).every((e) => e.benchmark.name.endsWith('@etcd3')));
  t.notOk(
    select(all, [], 1).some((e) => e.benchmark.name === 'link-batch'),
    '--etcd keeps only benchmarks on etcd',
  );
  t.throws(() => select(all, ['nope']), /unknown benchmark\(s\): nope/);
});
