import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { MemoryStore } from '../../../store/memory.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../keys.js';
import { TenantDirectory } from '../../tenants.js';
import { VpcDirectory } from '../../vpcs.js';
import { PolicyDirectory } from '../../policy.js';

/** A registered host with a trunk on physnet0 (kernel datapath): vlan VPCs may be created. */
function putVlanHost(store: MemoryStore, name: string) {
  return store.put(
    modelKeys.host(name),
    JSON.stringify({
      name,
      underlayIp: '10.77.0.11',
      uplink: 'u',
      underlayMtu: 1500,
      vlan: { physnet: 'physnet0', datapath: 'system', mtu: 1500 },
    }),
  );
}

function setup(t: { teardown(fn: () => unknown): void }) {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const ipam = new Ipam({ store, host: 'api' });
  return { store, ipam, tenants: new TenantDirectory(store), vpcs: new VpcDirectory({ store, pools: ipam }) };
}

t.test(
  'a VPC created while its tenant is being deleted: the delete loses, no VPC is left without its tenant',
  async (t) => {
    const { store, tenants, vpcs } = setup(t);
    const { tenant } = await tenants.create('acme');
    // The delete has checked that the tenant owns nothing; a VPC is created before it commits.
    await t.rejects(
      tenants.delete('acme', async () => {
        await vpcs.create(tenant, { name: 'web', cidr: '10.0.0.0/24' });
        return undefined;
      }),
      { code: ErrorCodes.CONFLICT },
    );
    t.ok(await store.get(modelKeys.tenant('acme')), 'the tenant stays');
    t.ok(await store.get(modelKeys.vpc('acme.web')), 'with its VPC');
    await t.rejects(
      tenants.delete('acme', async () => ((await vpcs.list(tenant)).length ? '1 VPC' : undefined)),
      {
        code: ErrorCodes.CONFLICT,
      },
    );
  },
);

t.test('a VPC create that fails after its pool was made leaves no pool behind', async (t) => {
  const { store, tenants, vpcs } = setup(t);
  const { tenant } = await tenants.create('acme');
  // Every VNI is taken (the random pick always lands on a held one): the create gives up.
  const full = new VpcDirectory({ store, pools: new Ipam({ store, host: 'api' }), random: () => 0 });
  await store.put(modelKeys.vni(1), 'someone.else');
  await t.rejects(full.create(tenant, { name: 'web', cidr: '10.0.0.0/24' }), { code: ErrorCodes.CONFLICT });
  t.same((await store.list('/netd/v1/ipam/pools/')).kvs, [], 'no pool left');
  const vpc = await vpcs.create(tenant, { name: 'web', cidr: '10.9.0.0/24' });
  t.equal(vpc.cidr, '10.9.0.0/24', 'so the same name can be created again, with another CIDR');
});

t.test('a pool cannot be deleted while an allocation races it', async (t) => {
  const { store, ipam } = setup(t);
  await ipam.createPool({ name: 'p', cidr: '10.1.0.0/24', kind: 'vpc' });
  const h1 = new Ipam({ store, host: 'h1' });
  await h1.getPool('p'); // h1 caches the pool, as a host serving it does
  await ipam.deletePool('p');
  await t.rejects(
    h1.allocate({ pool: 'p', handle: 'x' }),
    { code: ErrorCodes.NOT_FOUND },
    'no allocation in a deleted pool',
  );
  t.same((await store.list('/netd/v1/ipam/blocks/')).kvs, [], 'and no block claimed in it');
});

t.test(
  'routed VPCs: a CIDR overlapping another routed VPC, an external pool, a host or a non-routable range is refused',
  async (t) => {
    const { store, ipam, tenants } = setup(t);
    const vpcs = new VpcDirectory({ store, pools: ipam, modes: ['vxlan', 'routed'] });
    const { tenant: a } = await tenants.create('a');
    const { tenant: b } = await tenants.create('b');
    await ipam.createPool({ name: 'ext', cidr: '203.0.113.0/24', kind: 'external' });
    await store.put(
      modelKeys.host('h1'),
      JSON.stringify({
        name: 'h1',
        underlayIp: '10.77.0.11',
        underlayIp6: 'fd00:10:77::11',
        uplink: 'uplink',
        underlayMtu: 1500,
      }),
    );
    const routed = await vpcs.create(a, { name: 'r1', cidr: '10.60.0.0/24', mode: 'routed' });
    t.equal(routed.mode, 'routed');
    const refused = async (tenant: typeof a, cidr: string, why: RegExp) => {
      const err = await vpcs.create(tenant, { name: `x${cidr.replace(/[./:]/g, '')}`, cidr, mode: 'routed' }).then(
        () => undefined,
        (e: unknown) => e as { code: string; message: string },
      );
      t.equal(err?.code, ErrorCodes.POOL_OVERLAP, `${cidr}: refused`);
      t.match(err?.message, why, `${cidr}: says why`);
    };
    await refused(b, '10.60.0.128/25', /routed VPC a\.r1/);
    await refused(b, '10.0.0.0/8', /routed VPC a\.r1/);
    await refused(a, '203.0.113.64/26', /external pool ext/);
    await refused(a, '10.77.0.0/24', /host h1's underlay address 10\.77\.0\.11/);
    await refused(a, '169.254.0.0/24', /non-routable/);
    t.same((await store.list('/netd/v1/ipam/pools/')).kvs.length, 2, 'no pool left by a refused create');
    t.equal(
      (await vpcs.create(b, { name: 'x', cidr: '10.60.0.0/24' })).mode,
      'vxlan',
      'a vxlan VPC may overlap a routed one (its CIDR never enters the host tables)',
    );
    t.equal((await vpcs.create(b, { name: 'r2', cidr: '10.61.0.0/24', mode: 'routed' })).cidr, '10.61.0.0/24');
    // IPv6: the same rules, and the IPv6 ranges no routed VPC may cover.
    t.equal((await vpcs.create(a, { name: 'v6', cidr: 'fd10:60::/64', mode: 'routed' })).cidr, 'fd10:60::/64');
    await refused(b, 'fd10:60::/48', /routed VPC a\.v6/);
    await refused(a, 'fd00:10:77::/64', /host h1's underlay address fd00:10:77::11/);
    await refused(a, 'fe80::/64', /non-routable range fe80::\/10/);
    await refused(a, '::ffff:0:0/96', /non-routable range ::\/8/);
    await refused(a, 'ff02::/16', /non-routable range ff00::\/8/);
  },
);

t.test('two overlapping routed VPCs created at once: one wins, the other is refused', async (t) => {
  const { store, ipam, tenants } = setup(t);
  const vpcs = new VpcDirectory({ store, pools: ipam, modes: ['routed'] });
  const { tenant } = await tenants.create('a');
  const results = await Promise.allSettled([
    vpcs.create(tenant, { name: 'one', cidr: '10.60.0.0/24', mode: 'routed' }),
    vpcs.create(tenant, { name: 'two', cidr: '10.60.0.0/25', mode: 'routed' }),
  ]);
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1, 'exactly one created');
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  // Refused by the guard (created meanwhile: try again) or by the pool check, whichever saw it first.
  t.ok(
    [ErrorCodes.CONFLICT, ErrorCodes.POOL_OVERLAP].includes((failed?.reason as { code: never }).code),
    `the other is refused: ${String((failed?.reason as Error).message)}`,
  );
  t.equal((await vpcs.all()).length, 1);
  t.equal((await store.list('/netd/v1/ipam/pools/')).kvs.length, 1, "the loser's pool is gone");
});

t.test('an external pool may not be created inside a routed VPC later (the other direction)', async (t) => {
  const { ipam, tenants, store } = setup(t);
  const vpcs = new VpcDirectory({ store, pools: ipam, modes: ['vxlan', 'routed'] });
  const { tenant } = await tenants.create('a');
  await vpcs.create(tenant, { name: 'r', cidr: '10.60.0.0/24', mode: 'routed' });
  await vpcs.create(tenant, { name: 'v', cidr: '10.70.0.0/24' });
  await t.rejects(ipam.createPool({ name: 'ext', cidr: '10.60.0.128/25', kind: 'external' }), {
    code: ErrorCodes.POOL_OVERLAP,
    message: /external pool ext .* overlaps routed pool a\.r/,
  });
  t.ok(
    await ipam.createPool({ name: 'ext2', cidr: '10.70.0.0/24', kind: 'external' }),
    'over a vxlan VPC it may (that CIDR never enters the host tables)',
  );
});

t.test("a deleted vlan VPC's VLAN id is quarantined, then given out again (never-used ids first)", async (t) => {
  const store = new MemoryStore();
  const ipam = new Ipam({ store, host: 'api' });
  let now = 1_000_000;
  const vpcs = new VpcDirectory({
    store,
    pools: ipam,
    modes: ['vlan'],
    vlanQuarantineMs: 60_000,
    now: () => now,
  });
  await putVlanHost(store, 'h1');
  await new PolicyDirectory(store).set({ vlanRanges: [{ physnet: 'physnet0', min: 10, max: 11 }] });
  const tenants = new TenantDirectory(store);
  const { tenant } = await tenants.create('acme');
  const a = await vpcs.create(tenant, { name: 'a', cidr: '10.0.0.0/24', mode: 'vlan' });
  const other = a.vlan === 10 ? 11 : 10;
  await vpcs.delete(tenant, 'a');
  const b = await vpcs.create(tenant, { name: 'b', cidr: '10.0.0.0/24', mode: 'vlan' });
  t.equal(b.vlan, other, 'the never-used id goes before the freed one');
  await t.rejects(vpcs.create(tenant, { name: 'c', cidr: '10.0.0.0/24', mode: 'vlan' }), {
    code: 'E_RANGE_EXHAUSTED',
  });
  now += 60_000;
  const c = await vpcs.create(tenant, { name: 'c', cidr: '10.0.0.0/24', mode: 'vlan' });
  t.equal(c.vlan, a.vlan, 'after the quarantine the freed id is given out again');
  t.equal((await store.get(modelKeys.vlan('physnet0', a.vlan!)))?.value, 'acme.c', 'held by its new VPC');
});
