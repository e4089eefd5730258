import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { MemoryStore } from '../../../store/memory.js';
import { eventually } from '../../../test-netns/testing.js';
import { modelKeys } from '../../keys.js';
import { PodMap } from '../../pod-map.js';
import { capQos, capsOf, checkCaps, checkWithinCap } from '../../qos.js';
import type { TenantCaps } from '../../records.js';
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

t.test(
  'caps: limits lowered per direction; a container on VPCs of two tenants gets the stricter eth0 cap',
  async (t) => {
    t.same(capQos({ ingressBps: 10, egressBps: 90 }, { egressBps: 20 }), { ingressBps: 10, egressBps: 20 });
    t.same(capQos(undefined, { ingressBps: 30 }), { ingressBps: 30 }, 'no limits of its own: the cap');
    t.same(capQos({ egressBps: 5 }, undefined), { egressBps: 5 }, 'no cap: its own');
    t.equal(capQos(undefined, {}), undefined);
    t.throws(() => checkWithinCap({ ingressBps: 31 }, { ingressBps: 30 }, 'eth0'), { code: 'E_OVER_CAP' });
    t.doesNotThrow(() => checkWithinCap({ ingressBps: 30, egressBps: 1e9 }, { ingressBps: 30 }, 'eth0'));
    t.same(checkCaps({ eth0: {}, eth1: { egressBps: 8_000 } }), { eth1: { egressBps: 8_000 } }, 'empty kinds dropped');
    t.throws(() => checkCaps({ eth1: { egressBps: 1 } }), { code: 'E_INVALID_INPUT' });
    const vpcs: Record<string, { tenant: string }> = { 'a.x': { tenant: 'a' }, 'b.y': { tenant: 'b' } };
    const tenants: Record<string, { caps?: TenantCaps }> = {
      a: { caps: { eth0: { ingressBps: 50, egressBps: 10 }, eth1: { egressBps: 7 } } },
      b: { caps: { eth0: { ingressBps: 20 } } },
    };
    const caps = capsOf({
      vpc: (id) => vpcs[id],
      tenant: (n) => tenants[n],
      endpoints: () => [
        { vpc: 'a.x', host: 'h1', containerId: 'c1' },
        { vpc: 'b.y', host: 'h1', containerId: 'c1' },
        { vpc: 'a.x', host: 'h2', containerId: 'c1' },
      ],
    });
    t.same(caps.eth1('a.x'), { egressBps: 7 });
    t.equal(caps.eth1('b.y'), undefined);
    t.same(caps.eth0('h1', 'c1'), { ingressBps: 20, egressBps: 10 }, 'per direction, the stricter of a and b');
    t.same(caps.eth0('h2', 'c1'), { ingressBps: 50, egressBps: 10 }, 'same container id on another host: its own');
    t.equal(caps.eth0('h1', 'c9'), undefined, 'a container on no VPC yet: none');
  },
);
