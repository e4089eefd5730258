import type { Test } from 'tap';
import { ErrorCodes, isAppError } from '../../core/errors.js';
import type { KV, Store, WatchBatch, WatchEvent } from '../types.js';
import { WatchConsumer, type WatchEventKind } from '../watch-consumer.js';
import { applyEvents, retry, sortedKvs } from './helpers.js';
import { eventually } from '../../test-netns/testing.js';

/**
 * One behavioural contract for every Store implementation. A fixture gives two clients of one
 * backend: `store` can be partitioned from it (cut/restore), `direct` never is.
 */
export interface StoreFixture {
  store: Store;
  direct: Store;
  cut(): Promise<void>;
  restore(): Promise<void>;
}

export type FixtureFactory = (t: Test) => Promise<StoreFixture>;

/** Collects a watch until `count` batches arrived (then aborts it) or it throws. */
async function collect(
  store: Store,
  prefix: string,
  from: bigint,
  count: number,
): Promise<{ batches: WatchBatch[]; error?: unknown }> {
  const ac = new AbortController();
  const batches: WatchBatch[] = [];
  try {
    for await (const b of store.watch(prefix, from, ac.signal)) {
      batches.push(b);
      if (batches.length >= count) ac.abort();
    }
    return { batches };
  } catch (error) {
    return { batches, error };
  }
}

export function storeContract(t: Test, name: string, factory: FixtureFactory): void {
  t.test(`${name}: get, put, delete and list carry revisions`, async (t) => {
    const { store } = await factory(t);
    const r1 = await store.put('/c/a', '1');
    const r2 = await store.put('/c/b', '2');
    t.ok(r2 > r1, 'revisions increase');
    t.same(await store.get('/c/a'), { key: '/c/a', value: '1', createRevision: r1, modRevision: r1, version: 1 });
    const r3 = await store.put('/c/a', '1b');
    t.same(
      await store.get('/c/a'),
      { key: '/c/a', value: '1b', createRevision: r1, modRevision: r3, version: 2 },
      'create revision stays',
    );
    await store.put('/d/x', 'other prefix');
    await store.put('/c', 'the prefix itself without slash');
    const listed = await store.list('/c/');
    t.same(
      listed.kvs.map((kv) => kv.key),
      ['/c/a', '/c/b'],
      'sorted, only the prefix',
    );
    t.equal(listed.revision, await store.currentRevision(), 'list carries the header revision');
    t.same((await store.listKeys('/c/')).keys, ['/c/a', '/c/b']);
    const rd = await store.delete('/c/a');
    t.ok(rd > listed.revision, 'a delete is a new revision');
    t.equal(await store.get('/c/a'), undefined);
    t.equal(await store.delete('/c/a'), rd, 'deleting what is gone is success, and writes nothing');
    await store.deletePrefix('/c/');
    t.same((await store.list('/c/')).kvs, []);
    t.equal((await store.list('/d/')).kvs.length, 1, 'other prefixes untouched');
    t.equal((await store.get('/c'))?.value, 'the prefix itself without slash');
  });

  t.test(`${name}: compare-and-swap lets exactly one of two writers win`, async (t) => {
    const { store, direct } = await factory(t);
    const rev = await store.put('/cas/k', 'v0');
    const attempt = (s: Store, v: string) =>
      s.txn({
        compare: [{ key: '/cas/k', target: 'modRevision', op: '=', value: rev }],
        success: [{ type: 'put', key: '/cas/k', value: v }],
      });
    const [x, y] = await Promise.all([attempt(store, 'x'), attempt(direct, 'y')]);
    t.equal([x.succeeded, y.succeeded].filter(Boolean).length, 1, 'one winner');
    t.equal((await store.get('/cas/k'))?.value, x.succeeded ? 'x' : 'y');
    t.notOk((await attempt(store, 'late')).succeeded, 'a stale revision loses: not an error');

    // Create-if-absent: mod revision 0 means "no such key".
    const create = (v: string) =>
      store.txn({
        compare: [{ key: '/cas/new', target: 'modRevision', op: '=', value: 0n }],
        success: [{ type: 'put', key: '/cas/new', value: v }],
      });
    const [c1, c2] = await Promise.all([create('first'), create('second')]);
    t.equal([c1.succeeded, c2.succeeded].filter(Boolean).length, 1, 'one creator');
    t.equal((await store.get('/cas/new'))?.version, 1);

    // The failure branch runs when a compare fails; a branch is atomic (one revision) and can read.
    const r = await store.txn({
      compare: [{ key: '/cas/k', target: 'value', op: '=', value: 'nope' }],
      success: [{ type: 'put', key: '/cas/s', value: '1' }],
      failure: [
        { type: 'put', key: '/cas/f1', value: '1' },
        { type: 'put', key: '/cas/f2', value: '2' },
        { type: 'get', key: '/cas/f1' },
        { type: 'getPrefix', prefix: '/cas/f' },
        { type: 'delete', key: '/cas/new' },
      ],
    });
    t.notOk(r.succeeded);
    t.equal(await store.get('/cas/s'), undefined, 'success branch did not run');
    const f1 = await store.get('/cas/f1');
    t.equal(f1?.modRevision, r.revision, 'the transaction has one revision');
    t.equal((await store.get('/cas/f2'))?.modRevision, r.revision);
    t.same(r.responses[0], { type: 'put' });
    t.same(r.responses[2], { type: 'get', kvs: [f1] }, 'a read in the transaction sees its earlier writes');
    t.same(r.responses[3], { type: 'getPrefix', kvs: [f1, await store.get('/cas/f2')] });
    t.same(r.responses[4], { type: 'delete', deleted: 1 });

    // Other targets; a value compare on a missing key is false whatever the operator (etcd).
    const cmp = (c: Parameters<Store['txn']>[0]['compare'][number]) =>
      store.txn({ compare: [c], success: [] }).then((x) => x.succeeded);
    t.ok(await cmp({ key: '/cas/f1', target: 'version', op: '=', value: 1 }));
    t.ok(await cmp({ key: '/cas/f1', target: 'createRevision', op: '>', value: 0n }));
    t.ok(await cmp({ key: '/cas/f1', target: 'value', op: '!=', value: 'x' }));
    t.ok(await cmp({ key: '/cas/f1', target: 'modRevision', op: '<', value: r.revision + 1n }));
    t.notOk(await cmp({ key: '/cas/missing', target: 'value', op: '!=', value: 'x' }));
    t.ok(await cmp({ key: '/cas/missing', target: 'version', op: '=', value: 0 }));

    await t.rejects(
      store.txn({
        compare: [],
        success: [
          { type: 'put', key: '/cas/d', value: '1' },
          { type: 'put', key: '/cas/d', value: '2' },
        ],
      }),
      { code: ErrorCodes.INVALID_INPUT },
      'two puts of one key in one transaction are refused',
    );
  });

  t.test(`${name}: lease expiry removes keys; revoke removes them at once`, async (t) => {
    const { store, direct } = await factory(t);
    const kept = await store.lease(1);
    t.ok(kept.ttlSeconds >= 1, `granted TTL ${kept.ttlSeconds} s`);
    await store.put('/lease/kept', 'x', { lease: kept.id });
    t.equal((await store.get('/lease/kept'))?.lease, kept.id, 'the key carries its lease');
    const dying = await store.lease(1);
    await store.put('/lease/dying', 'x', { lease: dying.id });
    dying.release(); // the holder "dies": no more keep-alives
    const start = Date.now();
    t.ok(
      await eventually(async () => (await direct.get('/lease/dying')) === undefined, (dying.ttlSeconds + 5) * 1000),
      'lease expiry',
    );
    const took = Date.now() - start;
    t.ok(took >= (dying.ttlSeconds - 1) * 1000, `not before the TTL (${took} ms)`);
    t.ok(await direct.get('/lease/kept'), 'a kept-alive lease outlives its TTL');
    await kept.revoke();
    t.equal(await direct.get('/lease/kept'), undefined, 'revoke deletes at once');
    await t.rejects(
      store.put('/lease/x', 'y', { lease: kept.id }),
      { code: ErrorCodes.NOT_FOUND },
      'a revoked lease cannot be used',
    );
  });

  t.test(`${name}: a partitioned holder loses its lease and is told so`, async (t) => {
    const { store, direct, cut, restore } = await factory(t);
    const lease = await store.lease(1);
    await store.put('/lp/k', 'x', { lease: lease.id });
    let lost: Error | undefined;
    lease.onLost((err) => (lost = err));
    await cut();
    t.ok(
      await eventually(async () => (await direct.get('/lp/k')) === undefined, (lease.ttlSeconds + 5) * 1000),
      'key of the unrenewed lease gone',
    );
    t.ok(await eventually(() => lost !== undefined, (2 * lease.ttlSeconds + 5) * 1000), 'onLost');
    t.ok(lost, `onLost called: ${lost?.message}`);
    await restore();
    const unavailable = (e: unknown) => isAppError(e, ErrorCodes.STORE_UNAVAILABLE); // still reconnecting
    await t.rejects(
      retry(() => store.put('/lp/k', 'y', { lease: lease.id }), 15_000, unavailable),
      { code: ErrorCodes.NOT_FOUND },
      'the lost lease is gone on the server too',
    );
  });

  t.test(`${name}: watch delivers every change in order, with previous values`, async (t) => {
    const { store, direct } = await factory(t);
    const start = (await store.currentRevision()) + 1n;
    const r1 = await direct.put('/w/a', '1');
    await direct.put('/w/a', '2');
    const tx = await direct.txn({
      compare: [],
      success: [
        { type: 'put', key: '/w/b', value: 'b' },
        { type: 'delete', key: '/w/a' },
      ],
    });
    await direct.put('/other', 'ignored');
    const live = collect(store, '/w/', start, 4);
    await direct.put('/w/c', 'live');
    const { batches, error } = await live;
    t.equal(error, undefined);
    const flat = batches.flatMap((b) =>
      b.events.map((e) => `${e.type} ${e.kv.key}=${e.kv.value} prev=${e.prevKv?.value ?? '-'}`),
    );
    t.same(flat, [
      'put /w/a=1 prev=-',
      'put /w/a=2 prev=1',
      'put /w/b=b prev=-',
      'delete /w/a= prev=2',
      'put /w/c=live prev=-',
    ]);
    t.equal(batches[0]!.revision, r1);
    t.equal(batches[2]!.revision, tx.revision, "a transaction's events arrive together, at its revision");
    t.same(
      batches[2]!.events[1]!.kv,
      { key: '/w/a', value: '', createRevision: 0n, modRevision: tx.revision, version: 0 },
      'a delete carries its revision',
    );
    t.same(batches[1]!.events[0]!.kv, {
      key: '/w/a',
      value: '2',
      createRevision: r1,
      modRevision: r1 + 1n,
      version: 2,
    });
    t.equal(batches[2]!.events[1]!.prevKv?.modRevision, r1 + 1n);
    for (const b of batches)
      for (const e of b.events) t.equal(e.kv.modRevision, b.revision, 'event revision = batch revision');
    const revs = batches.map((b) => b.revision);
    t.ok(
      revs.every((r, i) => i === 0 || r > revs[i - 1]!),
      'strictly increasing revisions',
    );
  });

  t.test(`${name}: watching compacted history fails with E_STORE_COMPACTED`, async (t) => {
    const { store } = await factory(t);
    const early = await store.put('/k/1', 'a');
    await store.put('/k/1', 'b');
    const late = await store.put('/k/1', 'c');
    await store.compact(late);
    const { batches, error } = await collect(store, '/k/', early, 1);
    t.same(batches, []);
    t.ok(isAppError(error, ErrorCodes.STORE_COMPACTED), `got ${String(error)}`);
    const compactRevision = isAppError(error) ? BigInt(String(error.details.compactRevision)) : 0n;
    t.ok(
      compactRevision > early && compactRevision <= late,
      `details.compactRevision ${compactRevision} in (${early}, ${late}]`,
    );
    const atCompaction = await collect(store, '/k/', late, 1);
    t.equal(atCompaction.batches[0]?.revision, late, 'the compact revision itself is still watchable');
    await t.rejects(store.compact(late), { code: ErrorCodes.STORE_COMPACTED }, 'compacting again is refused');
  });

  t.test(`${name}: a watch throws E_STORE_UNAVAILABLE when cut off, and ends cleanly on abort`, async (t) => {
    const { store, cut, restore } = await factory(t);
    const ac = new AbortController();
    const ended = (async () => {
      for await (const _ of store.watch('/u/', (await store.currentRevision()) + 1n, ac.signal)) void _;
    })();
    setTimeout(() => ac.abort(), 50);
    await t.resolves(ended, 'abort ends the iteration without an error');

    const rev = await store.currentRevision();
    const watching = collect(store, '/u/', rev + 1n, 100);
    await store.put('/u/a', '1');
    await cut();
    const { error } = await watching;
    t.ok(isAppError(error, ErrorCodes.STORE_UNAVAILABLE), `got ${String(error)}`);
    await restore();
  });

  t.test(`${name}: calls fail with E_STORE_UNAVAILABLE while partitioned`, async (t) => {
    const { store, cut, restore } = await factory(t);
    await cut();
    await t.rejects(store.get('/x'), { code: ErrorCodes.STORE_UNAVAILABLE });
    await t.rejects(store.put('/x', '1'), { code: ErrorCodes.STORE_UNAVAILABLE });
    await t.rejects(store.txn({ compare: [], success: [] }), { code: ErrorCodes.STORE_UNAVAILABLE });
    await restore();
    await retry(() => store.put('/x', '1'), 15_000);
    t.equal((await store.get('/x'))?.value, '1');
  });

  t.test(`${name}: the watch consumer converges after compaction while it was disconnected`, async (t) => {
    const { store, direct, cut, restore } = await factory(t);
    for (let i = 0; i < 20; i++) await direct.put(`/vc/k${i}`, `v${i}`);
    let snapshot: Map<string, KV> | undefined;
    const later: Array<{ kind: WatchEventKind; events: readonly WatchEvent[] }> = [];
    const statuses: string[] = [];
    const consumer = new WatchConsumer({
      store,
      prefix: '/vc/',
      backoff: { initialMs: 20, maxMs: 200 },
      handler: {
        onEvents: (events, ctx) => {
          if (ctx.kind === 'snapshot') applyEvents((snapshot = new Map()), events);
          else later.push({ kind: ctx.kind, events });
        },
      },
    });
    consumer.onStatus((s) => statuses.push(s));
    t.teardown(() => consumer.stop());
    await consumer.start();
    t.equal(snapshot?.size, 20, 'initial snapshot');
    t.equal(consumer.status, 'synced');
    await direct.put('/vc/live', 'x');
    t.ok(await eventually(() => consumer.state().get('/vc/live')?.value === 'x', 10_000), 'live event');

    await cut();
    t.ok(await eventually(() => consumer.status === 'disconnected', 15_000), 'consumer notices the partition');
    // While it is away: deletes of keys it saw, changes, new keys, then compaction of all history.
    for (let i = 0; i < 10; i++) await direct.delete(`/vc/k${i}`);
    for (let i = 10; i < 20; i++) await direct.put(`/vc/k${i}`, `changed${i}`);
    for (let i = 0; i < 5; i++) await direct.put(`/vc/new${i}`, `n${i}`);
    await direct.txn({
      compare: [],
      success: [
        { type: 'delete', key: '/vc/live' },
        { type: 'put', key: '/vc/k10', value: 'twice' },
      ],
    });
    await direct.compact(await direct.currentRevision());
    await restore();

    const truth = async () => (await direct.list('/vc/')).kvs;
    t.ok(
      await eventually(
        async () => consumer.status === 'synced' && consumer.lastAppliedRevision >= (await direct.currentRevision()),
        20_000,
      ),
      'resync',
    );
    t.same(sortedKvs(consumer.state()), await truth(), 'consumer state equals a fresh list, exactly');
    const replayed = new Map(snapshot);
    for (const l of later) applyEvents(replayed, l.events);
    t.same(sortedKvs(replayed), await truth(), 'handler events replayed onto the snapshot give the same state');
    t.ok(
      later.some((l) => l.kind === 'resync'),
      'it re-listed',
    );
    t.ok(statuses.includes('resyncing') || statuses.includes('disconnected'), `statuses ${statuses.join(',')}`);

    await direct.put('/vc/after', 'y');
    t.ok(
      await eventually(() => consumer.state().get('/vc/after')?.value === 'y', 10_000),
      'live again after the resync',
    );
    for (const l of later.slice(-1)) applyEvents(replayed, l.events);
    t.same(sortedKvs(replayed), await truth());
  });
}
