import t from 'tap';
import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EtcdServer } from '../../../test-netns/etcd.js';
import { EtcdStore } from '../../etcd.js';
import { WatchConsumer } from '../../watch-consumer.js';
import { storeContract, eventually } from '../contract.js';
import { TcpProxy } from '../tcp-proxy.js';
import type { WatchEvent } from '../../types.js';

async function startEtcd(t: Tap): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'store-etcd-'));
  const server = await EtcdServer.start({ dir });
  t.teardown(async () => {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  return server;
}
type Tap = { teardown(fn: () => unknown): void };

function client(t: Tap, endpoints: string[], callTimeoutMs = 2000): EtcdStore {
  const s = new EtcdStore({ endpoints, callTimeoutMs, dialTimeoutMs: 1000 });
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
    leaseTtlSeconds: 2,
  };
});

/** Follows /r/ and records every event it gets, in order. */
function recorder(t: Tap, store: EtcdStore) {
  const seen: WatchEvent[] = [];
  const consumer = new WatchConsumer({
    store,
    prefix: '/r/',
    backoff: { initialMs: 50, maxMs: 500 },
    handler: { onEvents: (events) => void seen.push(...events) },
  });
  t.teardown(() => consumer.stop());
  return { seen, consumer };
}

t.test('a watch sees every change in order across an etcd restart', async (t) => {
  const server = await startEtcd(t);
  const store = client(t, server.endpoints);
  const writer = client(t, server.endpoints);
  const { seen, consumer } = recorder(t, store);
  await consumer.start();
  for (let i = 1; i <= 50; i++) await writer.put(`/r/k${i % 7}`, `v${i}`);
  await eventually(() => seen.length === 50, 10_000, 'first 50');
  await server.restart();
  await eventually(() => consumer.status === 'synced' || consumer.status === 'disconnected', 10_000);
  for (let i = 51; i <= 100; i++) {
    // The writer may need a moment to reconnect after the restart.
    for (;;) {
      try {
        await writer.put(`/r/k${i % 7}`, `v${i}`);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  await eventually(() => seen.length >= 100, 20_000, 'all 100');
  t.same(seen.map((e) => e.value), Array.from({ length: 100 }, (_, i) => `v${i + 1}`), 'every value once, in order');
  const revs = seen.map((e) => e.modRevision);
  t.ok(revs.every((r, i) => i === 0 || r > revs[i - 1]!), 'strictly increasing revisions: no duplicates');
});

t.test('after etcd is restored from an older backup, the consumer converges to it', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'store-rollback-'));
  const backup = mkdtempSync(join(tmpdir(), 'store-backup-'));
  t.teardown(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(backup, { recursive: true, force: true });
  });
  const server = await EtcdServer.start({ dir });
  t.teardown(() => server.stop());
  const store = client(t, server.endpoints);
  const writer = client(t, server.endpoints);
  for (let i = 0; i < 5; i++) await writer.put(`/r/a${i}`, 'old');
  await server.stop();
  cpSync(join(dir, 'data'), join(backup, 'data'), { recursive: true });
  await server.restart();
  const { consumer } = recorder(t, store);
  await consumer.start();
  // Move well past the backup's revision, so the restored store's revision is lower.
  for (let i = 0; i < 30; i++) await writer.put(`/r/b${i}`, 'new');
  await writer.delete('/r/a0');
  await eventually(() => consumer.state().size === 34, 10_000, 'consumer caught up');
  const ahead = consumer.lastAppliedRevision;
  await server.stop();
  rmSync(join(dir, 'data'), { recursive: true, force: true });
  cpSync(join(backup, 'data'), join(dir, 'data'), { recursive: true });
  await server.restart();
  t.ok((await writer.currentRevision().catch(async () => writer.currentRevision())) < ahead, 'the store went back in time');
  await eventually(() => consumer.state().size === 5 && consumer.lastAppliedRevision < ahead, 20_000, 'rollback resync');
  t.same([...consumer.state().keys()].sort(), ['/r/a0', '/r/a1', '/r/a2', '/r/a3', '/r/a4']);
});
