import t from 'tap';
import { KeyedLock } from '../../keyed-lock.js';

t.test('one holder per key at a time, in arrival order; other keys run alongside; nothing is kept', async (t) => {
  const lock = new KeyedLock();
  const log: string[] = [];
  const step = (key: string, name: string, ms: number) =>
    lock.with(key, async () => {
      log.push(`${name}+`);
      await new Promise((r) => setTimeout(r, ms));
      log.push(`${name}-`);
      return name;
    });
  const results = await Promise.all([step('a', 'a1', 30), step('a', 'a2', 1), step('b', 'b1', 1), step('a', 'a3', 1)]);
  t.same(results, ['a1', 'a2', 'b1', 'a3']);
  t.same(
    log.filter((l) => l.startsWith('a')),
    ['a1+', 'a1-', 'a2+', 'a2-', 'a3+', 'a3-'],
    'same key: one after another',
  );
  t.ok(log.indexOf('b1-') < log.indexOf('a1-'), 'another key does not wait');
  await t.rejects(
    lock.with('a', async () => Promise.reject(new Error('boom'))),
    /boom/,
  );
  t.equal(await lock.with('a', async () => 'after a failure'), 'after a failure', 'a failure releases the key');
  t.equal(lock.size, 0, 'no key is kept once free');
});
