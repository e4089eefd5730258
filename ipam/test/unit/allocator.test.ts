import t from 'tap';
import { MemoryStore } from '../../../store/memory.js';
import { Ipam } from '../../allocator.js';
import { ErrorCodes } from '../../../core/errors.js';
import { ipamKeys } from '../../keys.js';
import { contains, parseCidr, parseIp } from '../../../core/cidr.js';

function setup(t: { teardown(fn: () => unknown): void }, hosts = ['h1']) {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  return { store, ipams: hosts.map((host) => new Ipam({ store, host })) };
}

t.test('allocation is idempotent per handle and release is idempotent', async (t) => {
  const {
    store,
    ipams: [ipam],
  } = setup(t);
  await ipam!.createPool({ name: 'vpc1', cidr: '10.1.0.0/24', kind: 'vpc' });
  const a = await ipam!.allocate({ pool: 'vpc1', handle: 'c1:eth1', owner: { containerId: 'c1', ifname: 'eth1' } });
  t.notOk(
    ['10.1.0.0', '10.1.0.1', '10.1.0.2', '10.1.0.3', '10.1.0.255'].includes(a.ip),
    'reserved addresses are skipped',
  );
  t.equal(a.cidr, `${a.ip}/24`);
  t.equal(a.gateway, '10.1.0.1');
  const again = await ipam!.allocate({ pool: 'vpc1', handle: 'c1:eth1' });
  t.same(again, a, 'same handle, same address');
  t.equal(await ipam!.releaseHandle('c1:eth1'), 1);
  t.equal(await ipam!.releaseHandle('c1:eth1'), 0, 'twice is fine');
  t.same((await store.list(ipamKeys.allBlocks())).kvs, [], 'the emptied block went back to the pool');
  t.same((await store.list('/netd/v1/ipam/affinity/')).kvs, [], 'and its affinity');
});

t.test('concurrent allocation from several hosts never hands out an address twice', async (t) => {
  const { store, ipams } = setup(t, ['h1', 'h2', 'h3', 'h4']);
  await ipams[0]!.createPool({ name: 'p', cidr: '10.8.0.0/20', kind: 'vpc' });
  const all = await Promise.all(
    ipams.flatMap((ipam, h) =>
      Array.from({ length: 250 }, (_, i) => ipam.allocate({ pool: 'p', handle: `h${h}-c${i}:eth0` })),
    ),
  );
  const ips = all.map((a) => a.ip);
  t.equal(new Set(ips).size, 1000, '1000 distinct addresses');
  const blocks = await ipams[0]!.blocks('p');
  const owners = new Map<string, string>();
  for (const b of blocks) for (const a of Object.values(b.allocations)) owners.set(a.h, b.affinity ?? '');
  t.equal(owners.size, 1000);
  t.ok(
    blocks.every((b) => b.affinity !== null),
    'every block has a host',
  );
  await Promise.all(all.map((a, i) => ipams[Math.floor(i / 250)]!.releaseHandle(a.handle)));
  t.same((await store.list(ipamKeys.allBlocks())).kvs, [], 'releasing all leaves no block');
  t.same((await store.list(ipamKeys.allHandles())).kvs, [], 'and no handle');
});

t.test('when the pool has no free block, hosts borrow from others unless strict', async (t) => {
  const {
    ipams: [h1, h2],
  } = setup(t, ['h1', 'h2']);
  await h1!.createPool({ name: 'tiny', cidr: '10.9.0.0/27', kind: 'vpc', blockPrefix: 28 }); // 2 blocks of 16
  await h1!.allocate({ pool: 'tiny', handle: 'a' });
  await h2!.allocate({ pool: 'tiny', handle: 'b' });
  // Both blocks are claimed now; h2's next allocations fill its own block, then borrow from h1's.
  const got: Array<{ ip: string; block: string }> = [];
  for (let i = 0; i < 20; i++) got.push(await h2!.allocate({ pool: 'tiny', handle: `x${i}` }));
  t.equal(new Set(got.map((g) => g.ip)).size, 20);
  t.ok(
    got.some((g) => g.block !== got[0]!.block),
    "some came from the other host's block",
  );
  await h1!.createPool({ name: 'strict', cidr: '10.9.1.0/28', kind: 'vpc', strictAffinity: true });
  const s1 = await h1!.allocate({ pool: 'strict', handle: 's1' });
  t.ok(s1.ip);
  await t.rejects(
    h2!.allocate({ pool: 'strict', handle: 's2' }),
    { code: ErrorCodes.POOL_EXHAUSTED },
    'strict: no borrowing',
  );
});

t.test('exhaustion is a clear error that writes nothing', async (t) => {
  const {
    store,
    ipams: [ipam],
  } = setup(t);
  await ipam!.createPool({ name: 'x', cidr: '10.7.0.0/29', kind: 'vpc' }); // 8 - 5 reserved = 3
  for (let i = 0; i < 3; i++) await ipam!.allocate({ pool: 'x', handle: `h${i}` });
  const before = (await store.list('/netd/')).kvs.length;
  await t.rejects(ipam!.allocate({ pool: 'x', handle: 'h4' }), { code: ErrorCodes.POOL_EXHAUSTED });
  t.equal((await store.list('/netd/')).kvs.length, before);
  await t.rejects(ipam!.allocate({ pool: 'nope', handle: 'h' }), { code: ErrorCodes.NOT_FOUND });
  await t.rejects(ipam!.allocate({ pool: 'x', handle: 'bad/handle' }), { code: ErrorCodes.INVALID_INPUT });
});

t.test('static and sticky addresses', async (t) => {
  const {
    ipams: [h1, h2],
  } = setup(t, ['h1', 'h2']);
  await h1!.createPool({ name: 'p', cidr: '10.3.0.0/24', kind: 'vpc' });
  const s = await h1!.allocate({ pool: 'p', handle: 'web:eth1', ip: '10.3.0.200' });
  t.equal(s.ip, '10.3.0.200');
  await t.rejects(h2!.allocate({ pool: 'p', handle: 'other', ip: '10.3.0.200' }), { code: ErrorCodes.ADDRESS_IN_USE });
  await t.rejects(h2!.allocate({ pool: 'p', handle: 'other', ip: '10.4.0.1' }), { code: ErrorCodes.INVALID_INPUT });
  await t.rejects(
    h2!.allocate({ pool: 'p', handle: 'other', ip: '10.3.0.1' }),
    { code: ErrorCodes.ADDRESS_IN_USE },
    'gateway',
  );
  // Sticky: the named workload keeps its address across a restart on another host.
  const first = await h1!.allocate({ pool: 'p', handle: 'db-1:eth1', sticky: 'db-0' });
  await h1!.releaseHandle('db-1:eth1');
  const meanwhile = await Promise.all(
    Array.from({ length: 30 }, (_, i) => h2!.allocate({ pool: 'p', handle: `n${i}` })),
  );
  t.notOk(
    meanwhile.some((m) => m.ip === first.ip),
    'nobody else gets the sticky address while it waits',
  );
  const back = await h2!.allocate({ pool: 'p', handle: 'db-2:eth1', sticky: 'db-0' });
  t.equal(back.ip, first.ip, 'same address after restart, on another host');
  await h2!.releaseHandle('db-2:eth1');
  await h2!.releaseSticky('p', 'db-0');
  const blocks = await h1!.blocks('p');
  t.notOk(
    blocks.some((b) => Object.values(b.allocations).some((a) => a.h === 'sticky:db-0')),
    'unpinned',
  );
});

t.test('a stale release cannot free a re-allocated address', async (t) => {
  const {
    store,
    ipams: [ipam],
  } = setup(t);
  await ipam!.createPool({ name: 'p', cidr: '10.5.0.0/24', kind: 'vpc' });
  const old = await ipam!.allocate({ pool: 'p', handle: 'old', owner: { containerId: 'c', ifname: 'e' } });
  const [oldRec] = await ipam!.getHandle('old');
  await ipam!.releaseHandle('old');
  const fresh = await ipam!.allocate({ pool: 'p', handle: 'old' }); // same handle reused
  t.equal(fresh.ip, old.ip, 'the address was re-allocated');
  t.not(fresh.seq, old.seq);
  // A delayed duplicate release carrying the old record (old seq), even with the current handle revision:
  const current = await store.get(ipamKeys.handleInPool('old', 'p'));
  t.notOk(await ipam!.releaseRecord(oldRec!, current!.modRevision), 'refused by sequence number');
  t.notOk(await ipam!.releaseRecord(oldRec!, 2n), 'refused by handle revision');
  t.same(
    (await ipam!.getHandle('old')).map((h) => h.ip),
    [old.ip],
    'still held by the new allocation',
  );
});

t.test(
  'GC releases attachments the runtime no longer lists; the sweeper releases gone owners after grace',
  async (t) => {
    const {
      ipams: [h1, h2],
    } = setup(t, ['h1', 'h2']);
    await h1!.createPool({ name: 'p', cidr: '10.6.0.0/24', kind: 'vpc' });
    await h1!.allocate({ pool: 'p', handle: 'a:eth0', owner: { containerId: 'a', ifname: 'eth0' } });
    await h1!.allocate({ pool: 'p', handle: 'b:eth0', owner: { containerId: 'b', ifname: 'eth0' } });
    await h2!.allocate({ pool: 'p', handle: 'c:eth0', owner: { containerId: 'c', ifname: 'eth0' } });
    t.same(
      await h1!.gcAttachments('p', [{ containerId: 'a', ifname: 'eth0' }]),
      ['b:eth0'],
      "only h1's unlisted attachment",
    );
    t.equal((await h2!.getHandle('c:eth0')).length, 1, "another host's handle is not h1's to collect");

    // h2 dies: after the grace period its addresses are released by a live host.
    const check = { hostAlive: (h: string) => h !== 'h2', netnsExists: () => true };
    let now = 1_000_000;
    const clocked = new Ipam({
      store: (h1 as unknown as { store: MemoryStore }).store,
      host: 'h1',
      now: () => new Date(now),
    });
    let pass = await clocked.sweep(check, new Map(), 30_000);
    t.same(pass.released, [], 'first sighting: only suspected');
    now += 10_000;
    pass = await clocked.sweep(check, pass.suspects, 30_000);
    t.same(pass.released, [], 'within grace');
    now += 25_000;
    pass = await clocked.sweep(check, pass.suspects, 30_000);
    t.same(
      pass.released.map((r) => r.handle),
      ['c:eth0'],
      'after grace',
    );
    t.equal((await h1!.getHandle('a:eth0')).length, 1, 'live owners keep theirs');
  },
);

t.test("alsoWrite: the caller's record is written in the allocation's own transaction", async (t) => {
  const {
    store,
    ipams: [ipam],
  } = setup(t);
  await ipam!.createPool({ name: 'vpc1', cidr: '10.1.0.0/24', kind: 'vpc' });
  const before = await store.currentRevision();
  const record = (key: string) => (a: { ip: string }) => ({ key, value: JSON.stringify({ ip: a.ip }) });
  // Concurrent requests coalesce: every record rides in the same transaction as its address.
  const many = await Promise.all(
    Array.from({ length: 30 }, (_, i) =>
      ipam!.allocate({ pool: 'vpc1', handle: `c${i}:eth1`, alsoWrite: record(`/test/ep/c${i}`) }),
    ),
  );
  for (const [i, a] of many.entries()) {
    t.equal(a.wroteAlso, true);
    const kv = await store.get(`/test/ep/c${i}`);
    t.same(JSON.parse(kv!.value), { ip: a.ip }, `record ${i} names its address`);
    const handle = await store.get(ipamKeys.handleInPool(`c${i}:eth1`, 'vpc1'));
    t.equal(kv!.modRevision, handle!.modRevision, 'same transaction as the handle');
  }
  t.ok((await store.currentRevision()) - before <= 5n, 'a handful of transactions for 30 allocations');
  // The same handle again finds its address: nothing is written, and the caller is told so.
  await store.delete('/test/ep/c0');
  const again = await ipam!.allocate({ pool: 'vpc1', handle: 'c0:eth1', alsoWrite: record('/test/ep/c0') });
  t.equal(again.ip, many[0]!.ip);
  t.notOk(again.wroteAlso);
  t.equal(await store.get('/test/ep/c0'), undefined);
  // A static address takes the record along too.
  const fixed = await ipam!.allocate({
    pool: 'vpc1',
    handle: 'static:eth1',
    ip: '10.1.0.200',
    alsoWrite: record('/test/ep/static'),
  });
  t.equal(fixed.wroteAlso, true);
  t.same(JSON.parse((await store.get('/test/ep/static'))!.value), { ip: '10.1.0.200' });
});

t.test(
  'a pool deleted and created again with another CIDR: a host that served it allocates from the new one',
  async (t) => {
    const store = new MemoryStore();
    t.teardown(() => store.close());
    const admin = new Ipam({ store, host: 'admin' });
    const h1 = new Ipam({ store, host: 'h1' });
    await admin.createPool({ name: 'v', cidr: '10.1.0.0/24', kind: 'vpc' });
    const first = await h1.allocate({ pool: 'v', handle: 'a' });
    t.ok(contains(parseCidr('10.1.0.0/24'), parseIp(first.ip)), `first address ${first.ip} is in the first CIDR`);
    await h1.releaseHandle('a', 'v');
    await admin.deletePool('v');
    await admin.createPool({ name: 'v', cidr: '10.2.0.0/24', kind: 'vpc' });
    const dynamic = await h1.allocate({ pool: 'v', handle: 'b' });
    t.ok(contains(parseCidr('10.2.0.0/24'), parseIp(dynamic.ip)), `then ${dynamic.ip}: from the new CIDR`);
    t.equal(dynamic.cidr.split('/')[1], '24');
    // A static address in the new range works too (the cached old pool would call it out of range).
    const fixed = await h1.allocate({ pool: 'v', handle: 'c', ip: '10.2.0.77' });
    t.equal(fixed.ip, '10.2.0.77');
    for (const b of await h1.blocks('v')) t.ok(b.cidr.startsWith('10.2.0.'), `block ${b.cidr} is in the new CIDR`);
  },
);
