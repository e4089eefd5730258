import t from 'tap';
import { MemoryStore } from '../../memory.js';
import { storeContract, eventually } from '../contract.js';
import { WatchConsumer } from '../../watch-consumer.js';

storeContract(t, 'MemoryStore', async (t) => {
  const backend = new MemoryStore();
  t.teardown(() => backend.close());
  return {
    store: backend,
    direct: partitionFree(backend),
    cut: async () => backend.setAvailable(false),
    restore: async () => backend.setAvailable(true),
    leaseTtlSeconds: 1,
  };
});

/**
 * The "direct" client of a memory backend keeps working while the backend is switched off for
 * the partitioned client: it flips availability around each call.
 */
function partitionFree(backend: MemoryStore): MemoryStore {
  return new Proxy(backend, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver) as unknown;
      if (typeof v !== 'function' || prop === 'setAvailable' || prop === 'watch') return v;
      return async (...args: unknown[]) => {
        const was = (target as unknown as { available: boolean }).available;
        (target as unknown as { available: boolean }).available = true;
        try {
          return await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        } finally {
          (target as unknown as { available: boolean }).available = was;
        }
      };
    },
  });
}

t.test('a handler that throws gets the same batch again, then the consumer goes on', async (t) => {
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
        got.push(...events.map((e) => e.key));
      },
    },
  });
  await consumer.start();
  await store.put('/h/1', 'a');
  await store.put('/h/2', 'b');
  await eventually(() => got.length === 2);
  t.same(got, ['/h/1', '/h/2'], 'no loss, no duplicate');
  await consumer.stop();
  t.equal(consumer.status, 'stopped');
});
