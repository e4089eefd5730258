import t from 'tap';
import { MemoryStore } from '../../memory.js';
import type { KV, Lease, ListResult, Store, TxnRequest, TxnResult, WatchBatch, WatchEvent } from '../../types.js';
import { WatchConsumer, type WatchStatus } from '../../watch-consumer.js';
import { applyEvents, sortedKvs } from '../helpers.js';
import { eventually } from '../../../test-netns/testing.js';

/** Delegates to a replaceable backend: swapping it simulates etcd restored from an older backup. */
class SwitchableStore implements Store {
  constructor(public target: Store) {}
  get(key: string): Promise<KV | undefined> {
    return this.target.get(key);
  }
  list(prefix: string): Promise<ListResult> {
    return this.target.list(prefix);
  }
  listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }> {
    return this.target.listKeys(prefix);
  }
  put(key: string, value: string, opts?: { lease?: string }): Promise<bigint> {
    return this.target.put(key, value, opts);
  }
  delete(key: string): Promise<bigint> {
    return this.target.delete(key);
  }
  deletePrefix(prefix: string): Promise<bigint> {
    return this.target.deletePrefix(prefix);
  }
  txn(req: TxnRequest): Promise<TxnResult> {
    return this.target.txn(req);
  }
  lease(ttlSeconds: number): Promise<Lease> {
    return this.target.lease(ttlSeconds);
  }
  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch> {
    return this.target.watch(prefix, fromRevision, signal);
  }
  currentRevision(): Promise<bigint> {
    return this.target.currentRevision();
  }
  compact(revision: bigint): Promise<void> {
    return this.target.compact(revision);
  }
  close(): Promise<void> {
    return this.target.close();
  }
}

/** Records what a handler sees: the snapshot, then every later event, in order. */
function recorder() {
  const rec = { snapshot: new Map<string, KV>(), events: [] as WatchEvent[], kinds: [] as string[] };
  return {
    rec,
    handler: {
      onEvents(events: readonly WatchEvent[], ctx: { kind: string }) {
        rec.kinds.push(ctx.kind);
        if (ctx.kind === 'snapshot') applyEvents(rec.snapshot, events);
        else rec.events.push(...events);
      },
    },
    replayed(): KV[] {
      const view = new Map(rec.snapshot);
      applyEvents(view, rec.events);
      return sortedKvs(view);
    },
  };
}

t.test('a handler that throws gets the same events again, then the consumer goes on', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  let failOnce = true;
  const got: string[] = [];
  const consumer = new WatchConsumer({
    store,
    prefix: '/h/',
    backoff: { initialMs: 5, maxMs: 20 },
    handler: {
      onEvents(events, ctx) {
        if (ctx.kind === 'live' && failOnce) {
          failOnce = false;
          throw new Error('transient');
        }
        got.push(...events.map((e) => e.kv.key));
      },
    },
  });
  await consumer.start();
  await store.put('/h/1', 'a');
  await store.put('/h/2', 'b');
  t.ok(await eventually(() => got.length === 2), 'both puts arrive');
  t.same(got, ['/h/1', '/h/2'], 'no loss, no duplicate');
  await consumer.stop();
  t.equal(consumer.status, 'stopped');
});

t.test('batches at or below the last applied revision are dropped (a replaying store)', async (t) => {
  const backend = new MemoryStore();
  t.teardown(() => backend.close());
  // A store that always replays from well before the asked revision.
  const replaying = new SwitchableStore(backend);
  replaying.watch = (prefix, from, signal) => backend.watch(prefix, from > 5n ? from - 5n : 1n, signal);
  for (let i = 0; i < 10; i++) await backend.put(`/d/${i}`, 'x');
  const r = recorder();
  const consumer = new WatchConsumer({
    store: replaying,
    prefix: '/d/',
    handler: r.handler,
    backoff: { initialMs: 5, maxMs: 10 },
  });
  t.teardown(() => consumer.stop());
  await consumer.start();
  await backend.put('/d/new', 'y');
  backend.setAvailable(false); // forces a re-watch, which replays again
  backend.setAvailable(true);
  await backend.put('/d/new2', 'z');
  t.ok(await eventually(() => r.rec.events.length === 2, 5_000), 'two live events');
  t.same(
    r.rec.events.map((e) => e.kv.key),
    ['/d/new', '/d/new2'],
    'each once',
  );
  t.same(r.replayed(), (await backend.list('/d/')).kvs);
});

t.test('backoff is capped exponential with injectable jitter, while the store is down at start', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  store.setAvailable(false);
  const delays: number[] = [];
  const statuses: WatchStatus[] = [];
  const consumer = new WatchConsumer({
    store,
    prefix: '/b/',
    handler: { onEvents: () => undefined },
    backoff: { initialMs: 10, maxMs: 80 },
    random: () => 0,
    sleep: async (ms) => {
      delays.push(ms);
      if (delays.length === 6) store.setAvailable(true);
    },
  });
  consumer.onStatus((s) => statuses.push(s));
  await consumer.start();
  t.same(delays, [5, 10, 20, 40, 40, 40], 'half the cap with jitter 0, doubling up to maxMs');
  t.same(statuses, ['disconnected', 'synced']);
  await consumer.stop();
  t.same(statuses, ['disconnected', 'synced', 'stopped']);
});

t.test('stop() while the store is unreachable ends start() and the loop', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  store.setAvailable(false);
  const consumer = new WatchConsumer({
    store,
    prefix: '/x/',
    handler: { onEvents: () => undefined },
    backoff: { initialMs: 5, maxMs: 10 },
  });
  const started = consumer.start();
  t.ok(await eventually(() => consumer.status === 'disconnected'), 'the consumer reports the outage');
  await consumer.stop();
  await t.resolves(started);
  t.equal(consumer.status, 'stopped');
});

t.test('a disconnect resumes from the last applied revision: every change once, in order', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const r = recorder();
  const consumer = new WatchConsumer({
    store,
    prefix: '/o/',
    handler: r.handler,
    backoff: { initialMs: 5, maxMs: 20 },
  });
  t.teardown(() => consumer.stop());
  await consumer.start();
  const writer = store.connect();
  t.teardown(() => writer.close());
  for (let i = 1; i <= 30; i++) {
    await writer.put(`/o/k${i % 4}`, `v${i}`);
    if (i % 10 === 0 && i < 30) store.setAvailable(false); // the consumer's client drops; writes go on
    if (i % 10 === 3) store.setAvailable(true);
  }
  t.ok(await eventually(() => r.rec.events.length === 30, 5_000), 'all 30');
  t.same(
    r.rec.events.map((e) => e.kv.value),
    Array.from({ length: 30 }, (_, i) => `v${i + 1}`),
  );
  t.same(
    r.rec.kinds.filter((k) => k === 'resync'),
    [],
    'no re-list needed: history was there',
  );
});

t.test('when the store revision goes backwards (restored backup), the consumer re-lists and converges', async (t) => {
  const original = new MemoryStore();
  const restored = new MemoryStore();
  t.teardown(async () => {
    await original.close();
    await restored.close();
  });
  // The "backup": a few early keys, at low revisions.
  await restored.put('/rb/a', 'old-a');
  await restored.put('/rb/b', 'old-b');
  await restored.put('/rb/only-in-backup', 'x');
  for (let i = 0; i < 20; i++) await original.put(`/rb/k${i}`, `v${i}`);
  await original.put('/rb/a', 'new-a');

  const store = new SwitchableStore(original);
  const r = recorder();
  const consumer = new WatchConsumer({
    store,
    prefix: '/rb/',
    handler: r.handler,
    backoff: { initialMs: 5, maxMs: 20 },
  });
  t.teardown(() => consumer.stop());
  await consumer.start();
  const ahead = consumer.lastAppliedRevision;

  original.setAvailable(false); // etcd goes down ...
  store.target = restored; // ... and comes back from the backup
  t.ok((await restored.currentRevision()) < ahead, 'the restored store is behind what the consumer applied');
  t.ok(
    await eventually(() => consumer.lastAppliedRevision < ahead && consumer.status === 'synced', 5_000),
    'rollback resync',
  );
  t.same(sortedKvs(consumer.state()), (await restored.list('/rb/')).kvs, 'state equals the restored store exactly');
  t.same(r.replayed(), (await restored.list('/rb/')).kvs, 'events replayed onto the snapshot agree');
  t.ok(r.rec.kinds.includes('resync'));

  // Live again on the restored store, even though its revisions repeat ones seen before.
  await restored.put('/rb/after', 'y');
  t.ok(await eventually(() => consumer.state().get('/rb/after')?.value === 'y', 5_000), 'live after rollback');
  t.same(r.replayed(), (await restored.list('/rb/')).kvs);
});
