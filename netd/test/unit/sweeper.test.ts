import t from 'tap';
import { MemoryStore } from '../../../store/memory.js';
import { Ipam } from '../../../ipam/allocator.js';
import { silentLogger } from '../../../sys/log.js';
import { agedOut, DeadHostSweeper, SWEEPER_LOCK } from '../../sweeper.js';
import { modelKeys } from '../../../tenancy/keys.js';

t.test('agedOut: due only after the grace, unchanged; a change or a return starts over', async (t) => {
  const gone = (rev: bigint) => ({ modRevision: rev, gone: true });
  let r = agedOut(
    new Map([
      ['a', gone(1n)],
      ['b', { modRevision: 1n, gone: false }],
    ]),
    new Map(),
    1000,
    500,
  );
  t.same(r.due, []);
  t.same([...r.suspects.keys()], ['a']);
  r = agedOut(new Map([['a', gone(1n)]]), r.suspects, 1400, 500);
  t.same(r.due, [], 'not yet');
  t.same(agedOut(new Map([['a', gone(1n)]]), r.suspects, 1500, 500).due, ['a'], 'due at the grace');
  t.same(agedOut(new Map([['a', gone(2n)]]), r.suspects, 1500, 500).due, [], 'changed meanwhile: starts over');
  t.same(
    agedOut(new Map([['a', { modRevision: 1n, gone: false }]]), r.suspects, 1500, 500).suspects.size,
    0,
    'came back: forgotten',
  );
});

t.test(
  'the sweeper: one leader; a dead host loses records and addresses after the grace; live hosts and foreign pools keep theirs',
  async (t) => {
    const store = new MemoryStore();
    t.teardown(() => store.close());
    let now = 0;
    const logger = silentLogger();
    const admin = new Ipam({ store, host: 'admin' });
    await admin.createPool({ name: 't.web', cidr: '10.1.0.0/24', kind: 'vpc' });
    await admin.createPool({ name: 'other', cidr: '10.2.0.0/24', kind: 'vpc' });
    await admin.createPool({ name: 'ext', cidr: '100.64.0.0/24', kind: 'external' });
    await store.put(
      modelKeys.vpc('t.web'),
      JSON.stringify({ name: 't.web', tenant: 't', mode: 'vxlan', cidr: '10.1.0.0/24', vni: 5 }),
    );
    const leaseH1 = await store.lease(60);
    const leaseH2 = await store.lease(60);
    await store.put(modelKeys.host('h1'), '{}', { lease: leaseH1.id });
    // h2 is dead (never registered, or its lease ran out). h9 uses only a pool that is not netd's.
    const onH1 = await new Ipam({ store, host: 'h1' }).allocate({ pool: 't.web', handle: 'c1:eth1' });
    const onH2 = await new Ipam({ store, host: 'h2' }).allocate({ pool: 't.web', handle: 'c2:eth1' });
    const orphan = await new Ipam({ store, host: 'h2' }).allocate({ pool: 't.web', handle: 'c3:eth1' }); // an ADD that died before its record
    const eth0 = await new Ipam({ store, host: 'h2' }).allocate({ pool: 'ext', handle: 'c3:eth0' }); // no record names the external pool
    await new Ipam({ store, host: 'h9' }).allocate({ pool: 'other', handle: 'c9:eth0' });
    const rec = (host: string, id: string, ip: string) =>
      JSON.stringify({ vpc: 't.web', id, host, ip, mac: '02:00:00:00:00:01', hostIf: 'ni1' });
    await store.put(modelKeys.endpoint('t.web', 'c1:eth1'), rec('h1', 'c1:eth1', onH1.ip));
    await store.put(modelKeys.endpoint('t.web', 'c2:eth1'), rec('h2', 'c2:eth1', onH2.ip));

    const sweeper = (host: string) =>
      new DeadHostSweeper(
        { store, ipam: new Ipam({ store, host }), host, logger, now: () => now, externalPools: ['ext'] },
        10_000,
      );
    const s1 = sweeper('h1');
    const s3 = sweeper('h3');
    let r = await s1.pass(leaseH1);
    t.ok(r.leader, 'the first to ask leads');
    t.same(
      r.deadHosts,
      ['h2', 'h9'].filter((h) => h === 'h2'),
      'h2 is seen dead (h9 holds no netd address)',
    );
    t.notOk((await s3.pass(leaseH2)).leader, 'a second sweeper does not lead');
    t.equal((await store.get(SWEEPER_LOCK))?.value, 'h1');
    now = 5_000;
    r = await s1.pass(leaseH1);
    t.same([r.removedRecords, r.releasedAddresses], [[], []], 'nothing before the grace');
    now = 10_000;
    r = await s1.pass(leaseH1);
    t.same(r.removedRecords, [modelKeys.endpoint('t.web', 'c2:eth1')], "the dead host's record goes");
    t.same(
      r.releasedAddresses.sort(),
      [`t.web/${onH2.ip}`, `t.web/${orphan.ip}`, `ext/${eth0.ip}`].sort(),
      'and its addresses, also those without a record',
    );
    t.ok(await store.get(modelKeys.endpoint('t.web', 'c1:eth1')), "a live host's record stays");
    const left = (await admin.handles()).map((h) => h.record.handle).sort();
    t.same(left, ['c1:eth1', 'c9:eth0'], "live hosts' addresses and addresses in pools that are not netd's stay");

    // A leader that dies hands over; the new one starts its grace periods afresh.
    await leaseH1.revoke();
    await store.put(modelKeys.host('h3'), '{}', { lease: leaseH2.id });
    await store.put(modelKeys.endpoint('t.web', 'c4:eth1'), rec('h1', 'c4:eth1', '10.1.0.44'));
    r = await s3.pass(leaseH2);
    t.ok(r.leader, 'h3 took over the lock');
    t.same(r.removedRecords, [], 'and removed nothing on its first pass');
    now = 20_000;
    t.same(
      (await s3.pass(leaseH2)).removedRecords.sort(),
      [modelKeys.endpoint('t.web', 'c1:eth1'), modelKeys.endpoint('t.web', 'c4:eth1')].sort(),
      'h1 is dead now: its records go after the grace',
    );
  },
);
