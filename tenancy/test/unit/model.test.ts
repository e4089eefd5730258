import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { MemoryStore } from '../../../store/memory.js';
import { eventually } from '../../../test-netns/testing.js';
import { modelKeys } from '../../keys.js';
import { PodMap } from '../../pod-map.js';
import {
  checkHostName,
  endpointId,
  parseEndpointId,
  resolveVpcRef,
  vpcShortName,
  type EndpointRecord,
  type VpcRecord,
} from '../../records.js';
import { hashToken, newTenantToken, sameToken, tokenMatchesHash, tokenTenant } from '../../tokens.js';

t.test('endpoint ids carry the host and parse back; anything else does not parse', async (t) => {
  const ref = { host: 'h1', containerId: '3f2a.c-1_x', ifname: 'eth1' };
  t.equal(endpointId(ref), 'h1:3f2a.c-1_x:eth1');
  t.same(parseEndpointId(endpointId(ref)), ref);
  for (const bad of ['c1:eth1', 'h1::eth1', 'a:b:c:d', '']) t.equal(parseEndpointId(bad), undefined, `"${bad}"`);
  t.equal(checkHostName('node-1.dc2'), 'node-1.dc2');
  for (const bad of ['h:1', 'H1', '-h', 'h/1', '', 'x'.repeat(64)]) {
    t.throws(() => checkHostName(bad), { code: ErrorCodes.INVALID_INPUT }, `host "${bad}" refused`);
  }
});

t.test('a VPC is addressed by its name or its id', async (t) => {
  t.equal(resolveVpcRef('acme', 'web'), 'acme.web');
  t.equal(resolveVpcRef('acme', 'acme.web'), 'acme.web');
  t.equal(resolveVpcRef('acme', 'other.web'), 'other.web', "another tenant's id resolves, and is then not found");
  for (const bad of ['a..b', '.web', 'web.', 'Web', 'a.b.c', 'a/b']) {
    t.throws(() => resolveVpcRef('acme', bad), { code: ErrorCodes.INVALID_INPUT }, `"${bad}" refused`);
  }
  t.equal(vpcShortName({ name: 'acme.web', tenant: 'acme' }), 'web');
});

t.test('tokens name their tenant, are stored hashed and compared in constant time', async (t) => {
  const token = newTenantToken('acme');
  t.equal(tokenTenant(token), 'acme');
  t.ok(tokenMatchesHash(token, hashToken(token)));
  t.notOk(tokenMatchesHash(`${token}x`, hashToken(token)));
  t.notOk(tokenMatchesHash(token, 'short'), 'a malformed stored hash never matches');
  t.ok(sameToken('admin-secret', 'admin-secret'));
  t.notOk(sameToken('admin-secret', 'admin-secreT'));
});

t.test('the pod map follows VPCs and endpoints, and keeps its last state while etcd is away', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const vpc: VpcRecord = { name: 't.web', tenant: 't', mode: 'vxlan', cidr: '10.1.0.0/24', vni: 7 };
  const e = (n: number): EndpointRecord => ({
    vpc: vpc.name,
    id: `h1:c${n}:eth1`,
    host: 'h1',
    ip: `10.1.0.${n + 10}`,
    mac: `02:00:00:00:00:${n}`,
    hostIf: `ni${n}`,
  });
  await store.put(modelKeys.vpc(vpc.name), JSON.stringify(vpc));
  await store.put(modelKeys.endpoint(vpc.name, e(1).id), JSON.stringify(e(1)));
  const pods = new PodMap({ store });
  let changes = 0;
  pods.onChange(() => changes++);
  await pods.start();
  t.teardown(() => pods.stop());
  t.ok(pods.synced);
  t.same(pods.vpc('t.web'), vpc);
  t.same(pods.endpointsOf('t.web'), [e(1)]);
  await store.put(modelKeys.endpoint(vpc.name, e(2).id), JSON.stringify(e(2)));
  t.ok(await eventually(async () => pods.endpointsOf('t.web').length === 2, 2000), 'a new endpoint arrives');
  // A record this process wrote and noted: its echo changes nothing.
  const before = changes;
  pods.endpoints.note(modelKeys.endpoint(vpc.name, e(3).id), e(3));
  await store.put(modelKeys.endpoint(vpc.name, e(3).id), JSON.stringify(e(3)));
  await store.put(modelKeys.endpoint(vpc.name, e(4).id), JSON.stringify(e(4)));
  t.ok(await eventually(async () => pods.endpointsOf('t.web').length === 4, 2000));
  t.equal(changes - before, 1, 'only the record it did not write woke the listeners');
  store.setAvailable(false);
  t.ok(await eventually(async () => !pods.synced, 2000), 'out of sync while etcd is away');
  t.equal(pods.endpointsOf('t.web').length, 4, 'the last known state is still there');
  store.setAvailable(true);
  await store.delete(modelKeys.endpoint(vpc.name, e(1).id));
  t.ok(await eventually(async () => pods.synced && pods.endpointsOf('t.web').length === 3, 5000), 'and catches up');
});
