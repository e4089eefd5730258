import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { MemoryStore } from '../../../store/memory.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../keys.js';
import { TenantDirectory } from '../../tenants.js';
import { VpcDirectory } from '../../vpcs.js';

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
