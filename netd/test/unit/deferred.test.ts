import t from 'tap';
import { AppError, ErrorCodes } from '../../../core/errors.js';
import { silentLogger } from '../../../sys/log.js';
import { eventually } from '../../../test-netns/testing.js';
import { DeferredStoreWork } from '../../deferred.js';

const unavailable = () => new AppError(ErrorCodes.STORE_UNAVAILABLE, 'etcd away');

t.test('deferred etcd work: in order per key, each step once, whoever drives it', async (t) => {
  let up = false;
  const work = new DeferredStoreWork(silentLogger(), 10);
  t.teardown(() => work.stop());
  const ran: string[] = [];
  const step =
    (name: string, ms = 0) =>
    async () => {
      if (!up) throw unavailable();
      await new Promise((r) => setTimeout(r, ms));
      ran.push(name);
    };
  t.notOk(await work.attempt('e1', 'delete record', step('record', 20)), 'deferred while etcd is away');
  t.notOk(await work.attempt('e1', 'release address', step('address')), 'queued behind the first');
  t.same(work.pending(), ['e1']);
  up = true;
  // The retry timer and an ADD settling the same key at once: each step still runs exactly once.
  await Promise.all([work.settle('e1'), work.settle('e1'), eventually(async () => work.pending().length === 0, 2000)]);
  t.same(ran, ['record', 'address'], 'both ran, once each, in order');
  t.same(work.pending(), []);
});

t.test('while etcd is known to be away, steps are queued without a try; other failures are retried too', async (t) => {
  let available = false;
  let calls = 0;
  const work = new DeferredStoreWork(silentLogger(), 10, () => available);
  t.teardown(() => work.stop());
  t.notOk(await work.attempt('e2', 'x', async () => calls++));
  t.equal(calls, 0, 'no attempt (no deadline waited out)');
  let failures = 2;
  await work.attempt('e3', 'y', async () => {
    if (failures-- > 0) throw new AppError(ErrorCodes.CONFLICT, 'lost a race');
  });
  available = true;
  t.ok(await eventually(async () => work.pending().length === 0, 5000), 'all done once it can be');
  t.equal(calls, 1);
  t.equal(failures, -1, 'a conflict was retried until it went through');
});
