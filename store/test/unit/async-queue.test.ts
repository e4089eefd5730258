import t from 'tap';
import { AsyncQueue } from '../../async-queue.js';
import { getJson, listJson, putJson } from '../../json.js';
import { MemoryStore } from '../../memory.js';

t.test('AsyncQueue delivers in order, then the end; onClose runs once', async (t) => {
  let closed = 0;
  const q = new AsyncQueue<number>({ onClose: () => closed++ });
  q.push(1);
  setTimeout(() => {
    q.push(2);
    q.end();
    q.push(3); // ignored after the end
  }, 5);
  const got: number[] = [];
  for await (const v of q) got.push(v);
  t.same(got, [1, 2]);
  t.equal(closed, 1);
});

t.test('AsyncQueue: leaving the loop early releases the producer', async (t) => {
  let closed = 0;
  const q = new AsyncQueue<number>({ onClose: () => closed++ });
  q.push(1);
  q.push(2);
  for await (const v of q) if (v === 1) break;
  t.equal(closed, 1);
});

t.test('AsyncQueue: a failure arrives after the queued items; overflow fails it', async (t) => {
  const q = new AsyncQueue<number>({ limit: 2, overflow: () => new Error('full') });
  q.push(1);
  q.push(2);
  q.push(3);
  const got: number[] = [];
  await t.rejects(
    (async () => {
      for await (const v of q) got.push(v);
    })(),
    { message: 'full' },
  );
  t.same(got, [1, 2]);
});

t.test('JSON helpers round-trip typed values', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  await putJson(store, '/j/a', { n: 1 });
  t.same((await getJson<{ n: number }>(store, '/j/a'))?.value, { n: 1 });
  t.equal(await getJson(store, '/j/none'), undefined);
  await store.put('/j/bad', 'not json');
  await t.rejects(listJson(store, '/j/'), { code: 'E_INTERNAL' });
});
