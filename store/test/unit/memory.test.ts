import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { MemoryStore } from '../../memory.js';
import { storeContract } from '../contract.js';

storeContract(t, 'MemoryStore', async (t) => {
  const direct = new MemoryStore();
  const store = direct.connect(); // a second client of the same backend, partitioned on its own
  t.teardown(async () => {
    await store.close();
    await direct.close();
  });
  return {
    store,
    direct,
    cut: async () => store.setAvailable(false),
    restore: async () => store.setAvailable(true),
  };
});

t.test('MemoryStore: expireLease fires onLost and deletes the keys in one revision', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const lease = await store.lease(60);
  await store.put('/e/a', '1', { lease: lease.id });
  await store.put('/e/b', '2', { lease: lease.id });
  const lost: string[] = [];
  lease.onLost((err) => lost.push(err.message));
  const before = await store.currentRevision();
  store.expireLease(lease.id);
  t.same((await store.list('/e/')).kvs, []);
  t.equal(await store.currentRevision(), before + 1n, 'one revision for all the keys of the lease');
  t.equal(lost.length, 1);
  await t.rejects(store.lease(0), { code: ErrorCodes.INVALID_INPUT });
});

t.test(
  'MemoryStore: a slow watch consumer fails with E_STORE_UNAVAILABLE instead of buffering without bound',
  async (t) => {
    const store = new MemoryStore({ watchBufferLimit: 3 });
    t.teardown(() => store.close());
    const ac = new AbortController();
    const it = store.watch('/s/', 1n, ac.signal)[Symbol.asyncIterator]();
    for (let i = 0; i < 5; i++) await store.put(`/s/${i}`, 'x');
    const got: unknown[] = [];
    const err = await (async () => {
      for (;;) {
        const r = await it.next();
        if (r.done) return undefined;
        got.push(r.value);
      }
    })().catch((e: unknown) => e);
    t.equal(got.length, 3, 'what was buffered is delivered first');
    t.match(err, { code: ErrorCodes.STORE_UNAVAILABLE });
  },
);

t.test('MemoryStore: a closed client refuses calls; other clients go on', async (t) => {
  const a = new MemoryStore();
  const b = a.connect();
  await b.close();
  await t.rejects(b.get('/x'), { code: ErrorCodes.INTERNAL });
  await a.put('/x', '1');
  t.equal((await a.get('/x'))?.value, '1');
  await a.close();
});
