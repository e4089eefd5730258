import t from 'tap';
import { MemoryStore } from '../../../store/memory.js';
import { silentLogger } from '../../../sys/log.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { eventually } from '../../../test-netns/testing.js';
import { HostRegistration } from '../../registration.js';
import { SELF } from '../fake-host.js';

t.test('a lease lost while etcd is away is registered again once etcd is back', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const reg = new HostRegistration(SELF, { store, ttlSeconds: 30, logger: silentLogger() });
  t.teardown(() => reg.release());
  await reg.register();
  const first = reg.lease!.id;
  t.ok(await store.get(modelKeys.host('h1')), 'registered');
  store.setAvailable(false);
  store.expireLease(first);
  // The outage lasts: the first attempts to register again fail (a single attempt used to be all).
  await new Promise((resolve) => setTimeout(resolve, 800));
  t.equal(await store.get(modelKeys.host('h1')).catch(() => 'unavailable'), 'unavailable');
  store.setAvailable(true);
  t.ok(
    await eventually(async () => (await store.get(modelKeys.host('h1')))?.lease !== undefined, 10_000),
    'registered again',
  );
  t.not(reg.lease!.id, first, 'under a new lease');
});
