import type { Test } from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCodes, isAppError } from '../../core/errors.js';
import type { KV, Store, WatchBatch, WatchEvent } from '../types.js';
import { WatchConsumer } from '../watch-consumer.js';

/**
 * One behavioural contract for every Store implementation. A fixture gives two clients on one
 * backend: `store` can be partitioned from the backend (cut/restore), `direct` never is.
 */
export interface StoreFixture {
  store: Store;
  direct: Store;
  cut(): Promise<void>;
  restore(): Promise<void>;
  /** Minimum lease TTL the backend honours. */
  leaseTtlSeconds: number;
}

export type FixtureFactory = (t: Test) => Promise<StoreFixture>;

/** Polls `check` until it holds or `timeoutMs` passes. */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

const asMap = (kvs: KV[]) => Object.fromEntries(kvs.map((kv) => [kv.key, kv.value]));

export function storeContract(t: Test, name: string, factory: FixtureFactory): void {
  t.test(`${name}: get, put, delete and list carry revisions`, async (t) => {
    const { store } = await factory(t);
    const r1 = await store.put('/c/a', '1');
    const r2 = await store.put('/c/b', '2');
    t.ok(r2 > r1, 'revisions increase');
    const a = await store.get('/c/a');
    t.equal(a?.value, '1');
    t.equal(a?.createRevision, r1);
    t.equal(a?.modRevision, r1);
    t.equal(a?.version, 1);
    const r3 = await store.put('/c/a', '1b');
    const a2 = await store.get('/c/a');
    t.equal(a2?.modRevision, r3);
    t.equal(a2?.createRevision, r1, 'create revision stays');
    t.equal(a2?.version, 2);
    await store.put('/d/x', 'other prefix');
    const listed = await store.list('/c/');
    t.same(listed.kvs.map((kv) => kv.key), ['/c/a', '/c/b']);
    t.ok(listed.revision >= r3);
    t.equal(await store.currentRevision(), listed.revision);
    await store.delete('/c/a');
    t.equal(await store.get('/c/a'), undefined);
    await store.delete('/c/a'); // deleting what is gone is fine
    await store.deletePrefix('/c/');
    t.same((await store.list('/c/')).kvs, []);
    t.equal((await store.list('/d/')).kvs.length, 1, 'other prefixes untouched');
  });

  t.test(`${name}: compare-and-swap lets exactly one of two writers win`, async (t) => {
    const { store, direct } = await factory(t);
    const rev = await store.put('/cas/k', 'v0');
    const attempt = (s: Store, v: string) =>
      s.txn({ compare: [{ key: '/cas/k', target: 'modRevision', op: '=', value: rev }], success: [{ type: 'put', key: '/cas/k', value: v }] });
    const [x, y] = await Promise.all([attempt(store, 'x'), attempt(direct, 'y')]);
    t.equal([x.succeeded, y.succeeded].filter(Boolean).length, 1, 'one winner');
    const winner = x.succeeded ? 'x' : 'y';
    t.equal((await store.get('/cas/k'))?.value, winner);
    // Create-if-absent: mod revision 0 means "no such key".
    const create = (v: string) =>
      store.txn({ compare: [{ key: '/cas/new', target: 'modRevision', op: '=', value: 0n }], success: [{ type: 'put', key: '/cas/new', value: v }], failure: [] });
    t.ok((await create('first')).succeeded);
    t.notOk((await create('second')).succeeded);
    t.equal((await store.get('/cas/new'))?.value, 'first');
    // Failure branch runs when the compare fails; several ops are atomic.
    const r = await store.txn({
      compare: [{ key: '/cas/new', target: 'value', op: '=', value: 'nope' }],
      success: [{ type: 'put', key: '/cas/s', value: '1' }],
      failure: [{ type: 'put', key: '/cas/f1', value: '1' }, { type: 'put', key: '/cas/f2', value: '2' }],
    });
    t.notOk(r.succeeded);
    t.same(asMap((await store.list('/cas/f')).kvs), { '/cas/f1': '1', '/cas/f2': '2' });
    t.equal(await store.get('/cas/s'), undefined);
    t.equal((await store.get('/cas/f1'))?.modRevision, (await store.get('/cas/f2'))?.modRevision, 'one revision for the transaction');
  });

  t.test(`${name}: lease expiry removes keys; revoke removes them at once`, async (t) => {
    const { store, leaseTtlSeconds } = await factory(t);
    const kept = await store.lease(leaseTtlSeconds);
    await store.put('/lease/kept', 'x', { lease: kept.id });
    const dying = await store.lease(leaseTtlSeconds);
    await store.put('/lease/dying', 'x', { lease: dying.id });
    let lostCalled = false;
    dying.onLost(() => (lostCalled = true));
    dying.release(); // the holder "dies": no more keep-alives
    const start = Date.now();
    await eventually(async () => (await store.get('/lease/dying')) === undefined, (leaseTtlSeconds + 5) * 1000, 'lease expiry');
    t.ok(Date.now() - start >= (leaseTtlSeconds - 1) * 1000, 'not before the TTL');
    t.ok(await store.get('/lease/kept'), 'a kept-alive lease outlives its TTL');
    void lostCalled;
    await kept.revoke();
    t.equal(await store.get('/lease/kept'), undefined, 'revoke deletes at once');
    await t.rejects(store.put('/lease/x', 'y', { lease: kept.id }), { code: ErrorCodes.NOT_FOUND }, 'a revoked lease cannot be used');
  });

  t.test(`${name}: watch delivers every change in order, with previous values`, async (t) => {
    const { store, direct } = await factory(t);
    const start = (await store.currentRevision()) + 1n;
    await direct.put('/w/a', '1');
    await direct.put('/w/a', '2');
    await direct.txn({ compare: [], success: [{ type: 'put', key: '/w/b', value: 'b' }, { type: 'delete', key: '/w/a' }] });
    await direct.put('/other', 'ignored');
    const ac = new AbortController();
    const seen: WatchBatch[] = [];
    const done = (async () => {
      for await (const b of store.watch('/w/', start, ac.signal)) {
        seen.push(b);
        if (seen.length === 4) ac.abort();
      }
    })();
    await direct.put('/w/c', 'live');
    await done;
    const flat = seen.flatMap((b) => b.events.map((e) => `${e.type} ${e.key}=${e.value} prev=${e.prev?.value ?? '-'}`));
    t.same(flat, ['put /w/a=1 prev=-', 'put /w/a=2 prev=1', 'put /w/b=b prev=-', 'delete /w/a= prev=2', 'put /w/c=live prev=-']);
    t.equal(seen[2]!.events.length, 2, "a transaction's events arrive together");
    const revs = seen.map((b) => b.revision);
    t.same([...revs].sort((a, b) => (a < b ? -1 : 1)), revs, 'in revision order');
    t.equal(seen[2]!.events[0]!.modRevision, seen[2]!.revision);
  });

  t.test(`${name}: watching compacted history fails with E_STORE_COMPACTED`, async (t) => {
    const { store } = await factory(t);
    const early = await store.put('/k/1', 'a');
    await store.put('/k/1', 'b');
    const late = await store.put('/k/1', 'c');
    await store.compact(late);
    const ac = new AbortController();
    const err = await (async () => {
      for await (const _ of store.watch('/k/', early, ac.signal)) ac.abort();
    })().then(() => undefined, (e: unknown) => e);
    t.ok(isAppError(err, ErrorCodes.STORE_COMPACTED), `got ${String(err)}`);
  });

  t.test(`${name}: the watch consumer converges after compaction while it was disconnected`, async (t) => {
    const { store, direct, cut, restore } = await factory(t);
    for (let i = 0; i < 20; i++) await direct.put(`/vc/k${i}`, `v${i}`);
    const observed = new Map<string, string>();
    const kinds: string[] = [];
    const applyEvents = (events: WatchEvent[]) => {
      for (const e of events) {
        if (e.type === 'delete') observed.delete(e.key);
        else observed.set(e.key, e.value);
      }
    };
    const consumer = new WatchConsumer({
      store,
      prefix: '/vc/',
      handler: { onEvents: (events, ctx) => (kinds.push(ctx.kind), applyEvents(events)) },
      backoff: { initialMs: 20, maxMs: 200 },
    });
    t.teardown(() => consumer.stop());
    await consumer.start();
    t.equal(observed.size, 20, 'snapshot');
    await direct.put('/vc/live', 'x');
    await eventually(() => observed.get('/vc/live') === 'x', 10_000, 'live event');

    await cut();
    await eventually(() => consumer.status === 'disconnected', 15_000, 'consumer notices the partition');
    // While it is away: changes, deletes of keys it saw, new keys, then compaction of all history.
    for (let i = 0; i < 10; i++) await direct.delete(`/vc/k${i}`);
    for (let i = 10; i < 20; i++) await direct.put(`/vc/k${i}`, `changed${i}`);
    for (let i = 0; i < 5; i++) await direct.put(`/vc/new${i}`, `n${i}`);
    await direct.delete('/vc/live');
    await direct.compact(await direct.currentRevision());
    await restore();

    const truth = async () => asMap((await direct.list('/vc/')).kvs);
    await eventually(async () => JSON.stringify(Object.fromEntries(observed)) === JSON.stringify(await truth()), 20_000, 'convergence');
    t.same(Object.fromEntries(observed), await truth(), 'handler view equals the store');
    t.same(Object.fromEntries([...consumer.state()].map(([k, v]) => [k, v.value])), await truth(), 'consumer state equals the store');
    t.ok(kinds.includes('resync'), 'it re-listed');
    await direct.put('/vc/after', 'y');
    await eventually(() => observed.get('/vc/after') === 'y', 10_000, 'live again after resync');
  });

  t.test(`${name}: calls fail with E_STORE_UNAVAILABLE while partitioned`, async (t) => {
    const { store, cut, restore } = await factory(t);
    await cut();
    await t.rejects(store.get('/x'), { code: ErrorCodes.STORE_UNAVAILABLE });
    await t.rejects(store.put('/x', '1'), { code: ErrorCodes.STORE_UNAVAILABLE });
    await restore();
    await eventually(async () => store.put('/x', '1').then(() => true, () => false), 15_000, 'recovery');
    t.equal((await store.get('/x'))?.value, '1');
  });
}
