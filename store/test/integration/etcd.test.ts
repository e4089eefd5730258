import t from 'tap';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdServer } from '../../../test-netns/etcd.js';
import { ErrorCodes } from '../../../core/errors.js';
import { EtcdStore } from '../../etcd.js';
import { WatchConsumer } from '../../watch-consumer.js';
import type { KV, WatchEvent } from '../../types.js';
import { storeContract } from '../contract.js';
import { applyEvents, retry, sortedKvs, startEtcd, type TeardownHost } from '../helpers.js';
import { eventually } from '../../../test-netns/testing.js';
import { TcpProxy } from '../tcp-proxy.js';

/** Short deadlines: a partition must show up as E_STORE_UNAVAILABLE quickly in tests. */
function client(t: TeardownHost, endpoints: string[]): EtcdStore {
  const s = new EtcdStore({ endpoints, callTimeoutMs: 1_500, dialTimeoutMs: 1_000, watchConnectTimeoutMs: 3_000 });
  t.teardown(() => s.close());
  return s;
}

storeContract(t, 'EtcdStore', async (t) => {
  const server = await startEtcd(t);
  const proxy = await TcpProxy.start({ host: '127.0.0.1', port: server.clientPort });
  t.teardown(() => proxy.close());
  return {
    store: client(t, [proxy.url]),
    direct: client(t, server.endpoints),
    cut: () => proxy.cut(),
    restore: () => proxy.restore(),
  };
});

t.test('EtcdStore: an unreachable etcd is E_STORE_UNAVAILABLE, for calls and for watches', async (t) => {
  const store = new EtcdStore({
    endpoints: ['http://127.0.0.1:1'],
    callTimeoutMs: 500,
    dialTimeoutMs: 300,
    watchConnectTimeoutMs: 1_000,
  });
  t.teardown(() => store.close());
  await t.rejects(store.get('/x'), { code: ErrorCodes.STORE_UNAVAILABLE });
  await t.rejects(store.lease(5), { code: ErrorCodes.STORE_UNAVAILABLE });
  await t.rejects(
    (async () => {
      for await (const _ of store.watch('/x', 1n, new AbortController().signal)) void _;
    })(),
    { code: ErrorCodes.STORE_UNAVAILABLE },
  );
});

/** Follows /r/ and records the snapshot and every later event, in order. */
function recorder(t: TeardownHost, store: EtcdStore) {
  const snapshot = new Map<string, KV>();
  const events: WatchEvent[] = [];
  const kinds: string[] = [];
  const consumer = new WatchConsumer({
    store,
    prefix: '/r/',
    backoff: { initialMs: 50, maxMs: 500 },
    handler: {
      onEvents: (evs, ctx) => {
        kinds.push(ctx.kind);
        if (ctx.kind === 'snapshot') applyEvents(snapshot, evs);
        else events.push(...evs);
      },
    },
  });
  t.teardown(() => consumer.stop());
  return { snapshot, events, kinds, consumer };
}

t.test('a watch sees every change in order across an etcd restart', async (t) => {
  const server = await startEtcd(t);
  const store = client(t, server.endpoints);
  const writer = client(t, server.endpoints);
  const { events, kinds, consumer } = recorder(t, store);
  await consumer.start();
  const N = 50;
  const M = 100;
  for (let i = 1; i <= N; i++) await writer.put(`/r/k${i % 7}`, `v${i}`);
  t.ok(await eventually(() => events.length === N, 10_000), `first ${N}`);
  await server.restart();
  // Writes right after the restart race the consumer's reconnection: it must catch up from history.
  for (let i = N + 1; i <= M; i++) await retry(() => writer.put(`/r/k${i % 7}`, `v${i}`));
  t.ok(await eventually(() => events.length >= M, 20_000), `all ${M}`);
  t.same(
    events.map((e) => `${e.kv.key}=${e.kv.value}`),
    Array.from({ length: M }, (_, i) => `/r/k${(i + 1) % 7}=v${i + 1}`),
    'every write once, in order',
  );
  const revs = events.map((e) => e.kv.modRevision);
  t.ok(
    revs.every((r, i) => i === 0 || r === revs[i - 1]! + 1n),
    'consecutive revisions: no duplicates, no gaps',
  );
  t.notOk(kinds.includes('resync'), 'resumed from history, no re-list needed');
  t.same(sortedKvs(consumer.state()), (await writer.list('/r/')).kvs);
});

t.test('after etcd is restored from an older backup, the consumer converges to it', async (t) => {
  const backup = mkdtempSync(join(tmpdir(), 'store-backup-'));
  t.teardown(() => rmSync(backup, { recursive: true, force: true }));
  const dir = mkdtempSync(join(tmpdir(), 'store-rollback-'));
  const held: { server?: EtcdServer } = {};
  t.teardown(async () => {
    await held.server?.stop().catch(() => held.server?.kill());
    rmSync(dir, { recursive: true, force: true });
  });
  const server = (held.server = await EtcdServer.start({ dir }));
  const store = client(t, server.endpoints);
  const writer = client(t, server.endpoints);
  for (let i = 0; i < 5; i++) await writer.put(`/r/a${i}`, 'old');
  await server.stop();
  cpSync(join(dir, 'data'), join(backup, 'data'), { recursive: true });
  await server.restart();
  const { snapshot, events, consumer } = recorder(t, store);
  await consumer.start();
  // Move well past the backup's revision, so the restored store's revision is lower.
  for (let i = 0; i < 30; i++) await retry(() => writer.put(`/r/b${i}`, 'new'));
  await writer.put('/r/a1', 'changed');
  await writer.delete('/r/a0');
  t.ok(
    await eventually(() => consumer.state().size === 34 && consumer.state().get('/r/a1')?.value === 'changed', 10_000),
    'consumer caught up',
  );
  const ahead = consumer.lastAppliedRevision;
  await server.stop();
  rmSync(join(dir, 'data'), { recursive: true, force: true });
  cpSync(join(backup, 'data'), join(dir, 'data'), { recursive: true });
  await server.restart();
  t.ok((await retry(() => writer.currentRevision())) < ahead, 'the store went back in time');
  t.ok(
    await eventually(() => consumer.lastAppliedRevision < ahead && consumer.status === 'synced', 20_000),
    'rollback resync',
  );
  const truth = (await writer.list('/r/')).kvs;
  t.same(
    truth.map((kv) => `${kv.key}=${kv.value}`),
    ['/r/a0=old', '/r/a1=old', '/r/a2=old', '/r/a3=old', '/r/a4=old'],
  );
  t.same(sortedKvs(consumer.state()), truth, 'state equals the restored store exactly');
  const replayed = new Map(snapshot);
  applyEvents(replayed, events);
  t.same(sortedKvs(replayed), truth, 'handler events replayed onto the snapshot agree');
});
