import t from 'tap';
import { MemoryStore } from '../../../store/memory.js';
import { buildNetdApi } from '../../api-routes.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { NetdMetrics } from '../../metrics.js';

/** Container c1 in tenant a's VPC web on h1: its eth1 endpoint record and its eth0 record. */
const C1_ETH1 = {
  vpc: 'a.web',
  id: 'c1:eth1',
  host: 'h1',
  ip: '10.0.0.5',
  mac: '02:00:00:00:00:05',
  hostIf: 'ni1',
  containerId: 'c1',
  ifname: 'eth1',
};
const C1_ETH0 = {
  id: 'c1:eth0',
  host: 'h1',
  pool: 'external',
  ip: '100.64.0.9',
  mac: '02:00:00:00:00:09',
  hostIf: 'ne1',
  containerId: 'c1',
  ifname: 'eth0',
  netns: '/x',
};

async function setup(t: { teardown(fn: () => unknown): void }) {
  const store = new MemoryStore();
  const app = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret' });
  t.teardown(async () => {
    await app.close();
    await store.close();
  });
  const call = (method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', url: string, token?: string, payload?: unknown) =>
    app.inject({
      method,
      url,
      headers: token ? { authorization: `Bearer ${token}` } : {},
      ...(payload !== undefined && { payload: payload as object }),
    });
  return { store, app, call };
}

t.test('tenants: only the admin creates them; tokens are shown once and stored hashed', async (t) => {
  const { store, call } = await setup(t);
  t.equal((await call('POST', '/v1/tenants', undefined, { name: 'acme' })).statusCode, 401);
  t.equal((await call('POST', '/v1/tenants', 'wrong', { name: 'acme' })).statusCode, 401);
  const res = await call('POST', '/v1/tenants', 'admin-secret', { name: 'acme' });
  t.equal(res.statusCode, 201);
  const body = res.json() as { name: string; tag: number; token: string };
  t.equal(body.name, 'acme');
  t.ok(body.tag >= 1 && body.tag <= 0xffff, '16-bit tag');
  const stored = (await store.get('/netd/v1/tenants/acme'))!.value;
  t.notMatch(stored, body.token, 'the token itself is not stored');
  t.equal((await call('POST', '/v1/tenants', 'admin-secret', { name: 'acme' })).json().code, 'E_ALREADY_EXISTS');
  const bad = await call('POST', '/v1/tenants', 'admin-secret', { name: 'Bad Name!' });
  t.equal(bad.statusCode, 400);
  t.equal(bad.json().code, 'E_INVALID_INPUT');
  t.same((await call('GET', '/v1/tenants', 'admin-secret')).json(), [{ name: 'acme', tag: body.tag }]);
});

t.test(
  'VPCs are per tenant: another tenant gets 404; input is validated; delete is refused with endpoints',
  async (t) => {
    const { store, call } = await setup(t);
    const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json().token as string;
    const b = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'b' })).json().token as string;
    const created = await call('POST', '/v1/vpcs', a, {
      name: 'web',
      cidr: '10.0.0.0/24',
      qos: { ingressBps: 10_000_000 },
    });
    t.equal(created.statusCode, 201);
    t.match(created.json(), {
      name: 'web',
      id: 'a.web',
      tenant: 'a',
      cidr: '10.0.0.0/24',
      mode: 'vxlan',
      qos: { ingressBps: 10_000_000 },
    });
    t.equal(
      (await call('POST', '/v1/vpcs', b, { name: 'web', cidr: '10.0.0.0/24' })).statusCode,
      201,
      'same name and CIDR for another tenant',
    );
    t.not(created.json().vni, (await call('GET', '/v1/vpcs/web', b)).json().vni, 'distinct VNIs');
    t.same(
      (await call('GET', '/v1/vpcs', a)).json().map((v: { id: string }) => v.id),
      ['a.web'],
    );
    t.equal((await call('GET', '/v1/vpcs/web', b)).json().id, 'b.web');
    // The id POST returned addresses the VPC in every route, as its name does; another tenant's id
    // answers like a VPC that does not exist.
    t.equal((await call('GET', '/v1/vpcs/a.web', a)).json().id, 'a.web', 'GET by id');
    t.equal((await call('GET', '/v1/vpcs/a.web/endpoints', a)).statusCode, 200, 'endpoints by id');
    t.equal((await call('GET', '/v1/vpcs/a.web/cni-config', a)).json().name, 'vpc-a.web', 'cni-config by id');
    t.equal(
      (await call('PATCH', '/v1/vpcs/a.web', a, { qos: { ingressBps: 10_000_000 } })).statusCode,
      200,
      'PATCH by id',
    );
    t.equal((await call('GET', '/v1/vpcs/b.web', a)).statusCode, 404, "another tenant's id: 404");
    t.equal((await call('GET', '/v1/vpcs/a.web', b)).json().code, 'E_NOT_FOUND');
    t.equal((await call('GET', '/v1/vpcs/a..web', a)).statusCode, 400, 'a malformed id: 400');
    t.equal((await call('GET', '/v1/vpcs/nope', a)).statusCode, 404);
    t.equal((await call('DELETE', '/v1/vpcs/web', 'b.forged-token')).statusCode, 401);
    for (const body of [
      { name: 'x', cidr: '10.0.0.1/24' },
      { name: 'x', cidr: 'nonsense' },
      { name: 'x', cidr: '10.0.0.0/24', extra: 1 },
      { name: 'x', cidr: '10.0.0.0/24', qos: { ingressBps: -1 } },
      { name: 'x', cidr: '10.0.0.0/24', mtu: 99999 },
    ]) {
      const r = await call('POST', '/v1/vpcs', a, body);
      t.equal(r.statusCode, 400, JSON.stringify(body));
      t.equal(r.json().code, 'E_INVALID_INPUT');
    }
    t.equal((await store.list('/netd/v1/vpcs/')).kvs.length, 2, 'bad input wrote nothing');

    // An endpoint in a.web (as a host's netd would record it): delete refused; QoS patched.
    const ep = {
      vpc: 'a.web',
      id: 'c1:eth1',
      host: 'h1',
      ip: '10.0.0.5',
      mac: '02:00:00:00:00:05',
      hostIf: 'ni0123456789',
    };
    await store.put(modelKeys.endpoint('a.web', 'c1:eth1'), JSON.stringify(ep));
    t.same((await call('GET', '/v1/vpcs/web/endpoints', a)).json(), [ep]);
    t.same((await call('GET', '/v1/vpcs/web/endpoints', b)).json(), [], "b's web is another VPC");
    const del = await call('DELETE', '/v1/vpcs/web', a);
    t.equal(del.statusCode, 409);
    t.equal(del.json().code, 'E_CONFLICT');
    const patched = await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1', a, {
      qos: { ingressBps: 20_000_000, egressBps: 5_000_000 },
    });
    t.equal(patched.statusCode, 200);
    t.same(JSON.parse((await store.get(modelKeys.endpoint('a.web', 'c1:eth1')))!.value).qos, {
      ingressBps: 20_000_000,
      egressBps: 5_000_000,
    });
    t.equal((await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1', b, { qos: {} })).statusCode, 404, "not in b's VPC");
    t.match((await call('GET', '/v1/vpcs/web/cni-config', a)).json(), {
      name: 'vpc-a.web',
      plugins: [{ type: 'netd', vpc: 'a.web' }],
    });
    await store.delete(modelKeys.endpoint('a.web', 'c1:eth1'));
    t.equal((await call('DELETE', '/v1/vpcs/web', a)).statusCode, 204);
    t.equal((await call('GET', '/v1/vpcs/web', a)).statusCode, 404);
    t.equal((await store.list('/netd/v1/ipam/pools/a.web')).kvs.length, 0, 'its address pool went too');
  },
);

t.test('health and readiness', async (t) => {
  const { store, call } = await setup(t);
  t.equal((await call('GET', '/healthz')).statusCode, 200);
  t.equal((await call('GET', '/readyz')).statusCode, 200);
  store.setAvailable(false);
  t.equal((await call('GET', '/readyz')).statusCode, 503, 'etcd unreachable: not ready');
  store.setAvailable(true);
});

t.test('tenant show, delete (refused while it has VPCs), and who-am-I', async (t) => {
  const { store, call } = await setup(t);
  const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json() as { token: string; tag: number };
  t.same((await call('GET', '/v1/tenants/a', 'admin-secret')).json(), { name: 'a', tag: a.tag });
  t.equal((await call('GET', '/v1/tenants/a', a.token)).statusCode, 401, 'a tenant token is not an admin token');
  t.equal((await call('GET', '/v1/tenants/nobody', 'admin-secret')).json().code, 'E_NOT_FOUND');
  t.same((await call('GET', '/v1/tenant', a.token)).json(), { name: 'a', tag: a.tag });
  t.equal((await call('POST', '/v1/vpcs', a.token, { name: 'web', cidr: '10.0.0.0/24' })).statusCode, 201);
  const refused = await call('DELETE', '/v1/tenants/a', 'admin-secret');
  t.equal(refused.statusCode, 409);
  t.equal(refused.json().code, 'E_CONFLICT');
  t.equal((await call('DELETE', '/v1/vpcs/web', a.token)).statusCode, 204);
  t.equal((await call('DELETE', '/v1/tenants/a', 'admin-secret')).statusCode, 204);
  t.equal(await store.get('/netd/v1/tenants/a'), undefined, 'the tenant record is gone');
  t.equal(await store.get(`/netd/v1/tags/${a.tag}`), undefined, 'its tag is free again');
  t.equal((await call('GET', '/v1/tenant', a.token)).statusCode, 401, 'its token no longer works');
});

t.test('/metrics renders the daemon metrics; /docs serves the OpenAPI document and its UI', async (t) => {
  const store = new MemoryStore();
  const metrics = new NetdMetrics({ processMetrics: false });
  metrics.observeCni('ADD', 'ok', 0.004);
  metrics.observeCni('ADD', 'error', 0.002, 7);
  metrics.observeReconcile('ok', 0.03);
  metrics.countEndpointsWith(() => ({ vpc: 12, external: 3 }));
  metrics.countDropsWith(async () => ({ spoofed: { packets: 3, bytes: 252 }, host: { packets: 0, bytes: 0 } }));
  const app = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret', metrics });
  t.teardown(async () => {
    await app.close();
    await store.close();
  });
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  t.equal(res.statusCode, 200);
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  t.match(res.body, /netd_cni_request_duration_seconds_bucket\{le="0\.005",verb="ADD",result="ok"\} 1/);
  t.match(res.body, /netd_cni_errors_total\{verb="ADD",code="7"\} 1/);
  t.match(res.body, /netd_reconciles_total\{result="ok"\} 1/);
  t.match(res.body, /netd_endpoints\{kind="vpc"\} 12/);
  t.match(res.body, /netd_endpoints\{kind="external"\} 3/);
  t.match(res.body, /netd_tagqueue_dropped\{kind="spoofed",unit="packets"\} 3/);
  t.match(res.body, /netd_tagqueue_dropped\{kind="spoofed",unit="bytes"\} 252/);
  const doc = (await app.inject({ method: 'GET', url: '/docs/json' })).json() as {
    openapi: string;
    paths: Record<string, Record<string, { security?: unknown }>>;
    components: { securitySchemes: Record<string, { scheme: string }> };
  };
  t.match(doc.openapi, /^3\./);
  t.ok(doc.paths['/v1/vpcs']?.post, 'POST /v1/vpcs is documented');
  t.ok(doc.paths['/v1/vpcs/{vpc}/endpoints/{endpoint}']?.patch, 'PATCH endpoint is documented');
  t.equal(doc.components.securitySchemes.bearer?.scheme, 'bearer');
  const ui = await app.inject({ method: 'GET', url: '/docs' });
  t.equal(ui.statusCode, 200);
  t.match(ui.body, /swagger/i);
  const none = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret' });
  t.equal((await none.inject({ method: 'GET', url: '/metrics' })).statusCode, 404, 'no metrics without a registry');
  await none.close();
});

t.test(
  'VPC default QoS changes through PATCH; routed VPCs may not overlap; vlan needs a host with a trunk',
  async (t) => {
    const { store, call } = await setup(t);
    const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json().token as string;
    const b = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'b' })).json().token as string;
    t.equal((await call('POST', '/v1/vpcs', a, { name: 'web', cidr: '10.0.0.0/24', mode: 'vxlan' })).statusCode, 201);
    const routed = await call('POST', '/v1/vpcs', a, { name: 'r', cidr: '10.8.0.0/24', mode: 'routed' });
    t.equal(routed.statusCode, 201);
    t.equal(routed.json().mode, 'routed');
    const overlapping = await call('POST', '/v1/vpcs', b, { name: 'r', cidr: '10.8.0.0/16', mode: 'routed' });
    t.equal(overlapping.statusCode, 409, "another tenant's routed VPC may not cover it");
    t.equal(overlapping.json().code, 'E_POOL_OVERLAP');
    t.match(overlapping.json().message, /overlaps routed VPC a\.r/);
    const vlan = await call('POST', '/v1/vpcs', a, { name: 'v', cidr: '10.0.1.0/24', mode: 'vlan' });
    t.equal(vlan.statusCode, 400);
    t.equal(vlan.json().code, 'E_UNSUPPORTED');
    t.match(vlan.json().message, /no host serves vlan mode on physical network physnet0/);
    t.equal((await store.list('/netd/v1/vpcs/a.v')).kvs.length, 0, 'nothing was created');
    t.equal(
      (await call('POST', '/v1/vpcs', a, { name: 'v', cidr: '10.0.1.0/24', mode: 'ovs' })).json().code,
      'E_INVALID_INPUT',
    );
    const patched = await call('PATCH', '/v1/vpcs/web', a, { qos: { ingressBps: 8_000_000 } });
    t.equal(patched.statusCode, 200);
    t.same(patched.json().qos, { ingressBps: 8_000_000 });
    t.same(
      JSON.parse((await store.get(modelKeys.vpc('a.web')))!.value).qos,
      { ingressBps: 8_000_000 },
      'stored for the hosts to apply',
    );
    t.equal((await call('PATCH', '/v1/vpcs/web', b, { qos: {} })).statusCode, 404, "another tenant's VPC is a 404");
    t.equal((await call('PATCH', '/v1/vpcs/web', a, { qos: { ingressBps: -1 } })).statusCode, 400);
    t.equal(
      (await call('PATCH', '/v1/vpcs/web', a, { qos: {} })).json().qos,
      undefined,
      'empty limits remove the defaults',
    );
  },
);

t.test(
  "a container's eth0 is listed with its VPC endpoint, and its limits change through the VPC's tenant",
  async (t) => {
    const { store, call } = await setup(t);
    const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json().token as string;
    const b = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'b' })).json().token as string;
    await call('POST', '/v1/vpcs', a, { name: 'web', cidr: '10.0.0.0/24' });
    await call('POST', '/v1/vpcs', b, { name: 'web', cidr: '10.0.0.0/24' });
    const ep = C1_ETH1;
    await store.put(modelKeys.endpoint('a.web', 'c1:eth1'), JSON.stringify(ep));
    await store.put(
      modelKeys.endpoint('a.web', 'c2:eth1'),
      JSON.stringify({ ...ep, id: 'c2:eth1', containerId: 'c2', ip: '10.0.0.6' }),
    );
    const ext = C1_ETH0;
    await store.put('/netd/v1/external/h1/c1:eth0', JSON.stringify(ext));
    const listed = (await call('GET', '/v1/vpcs/web/endpoints', a)).json() as Array<{
      id: string;
      external?: { ip: string };
    }>;
    t.same(
      listed.map((e) => [e.id, e.external?.ip]),
      [
        ['c1:eth1', '100.64.0.9'],
        ['c2:eth1', undefined],
      ],
      "c1's eth0 shows beside its eth1",
    );
    const patched = await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1/external', a, {
      qos: { egressBps: 50_000_000 },
    });
    t.equal(patched.statusCode, 200);
    t.same(
      JSON.parse((await store.get('/netd/v1/external/h1/c1:eth0'))!.value).qos,
      { egressBps: 50_000_000 },
      'stored on the eth0 record, for its host to apply',
    );
    t.equal(
      (await call('PATCH', '/v1/vpcs/web/endpoints/c2:eth1/external', a, { qos: {} })).json().code,
      'E_NOT_FOUND',
      'no eth0: 404',
    );
    t.equal(
      (await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1/external', b, { qos: {} })).statusCode,
      404,
      'another tenant cannot touch it (its own VPC has no such endpoint)',
    );
  },
);

t.test(
  'vlan VPCs: a VLAN id unique per physical network, E_RANGE_EXHAUSTED when none is left, freed on delete',
  async (t) => {
    const store = new MemoryStore();
    const app = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret' });
    t.teardown(async () => {
      await app.close();
      await store.close();
    });
    const call = (method: 'POST' | 'DELETE' | 'GET' | 'PUT', url: string, token: string, payload?: object) =>
      app.inject({ method, url, headers: { authorization: `Bearer ${token}` }, ...(payload && { payload }) });
    // The operator's VLAN ranges: cluster policy, the same for every API.
    const policy = await call('PUT', '/v1/policy', 'admin-secret', {
      vlanRanges: [
        { physnet: 'physnet0', min: 100, max: 101 },
        { physnet: 'dc2', min: 100, max: 100 },
      ],
    });
    t.equal(policy.statusCode, 200);
    const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json().token as string;
    const host = (name: string, physnet: string) =>
      store.put(
        modelKeys.host(name),
        JSON.stringify({
          name,
          underlayIp: '10.77.0.11',
          uplink: 'eth0',
          underlayMtu: 1500,
          modes: ['vxlan', 'routed', 'vlan'],
          vlan: { physnet, datapath: 'netdev', mtu: 1500 },
        }),
      );
    await host('h1', 'physnet0');
    const made = [];
    for (const name of ['v1', 'v2']) {
      const res = await call('POST', '/v1/vpcs', a, { name, cidr: '10.0.0.0/24', mode: 'vlan' });
      t.equal(res.statusCode, 201, `${name} created (vlan VPCs may share a CIDR)`);
      made.push(res.json() as { vlan: number; physnet: string });
    }
    t.same(made.map((v) => v.vlan).sort(), [100, 101], 'each holds its own VLAN id of the range');
    t.ok(
      made.every((v) => v.physnet === 'physnet0'),
      'on the default physical network',
    );
    t.equal(
      (await store.get(modelKeys.vlan('physnet0', made[0]!.vlan)))?.value,
      'a.v1',
      'the id is held in etcd by its VPC',
    );
    const full = await call('POST', '/v1/vpcs', a, { name: 'v3', cidr: '10.0.3.0/24', mode: 'vlan' });
    t.equal(full.statusCode, 409);
    t.equal(full.json().code, 'E_RANGE_EXHAUSTED');
    t.match(full.json().message, /every VLAN id of physical network physnet0 \(100\.\.101\) is taken/);
    t.equal((await store.list('/netd/v1/ipam/pools/a.v3')).kvs.length, 0, "the refused VPC's pool went again");

    // Another physical network has its own ids, and needs its own host.
    const dc2 = await call('POST', '/v1/vpcs', a, { name: 'w', cidr: '10.0.4.0/24', mode: 'vlan', physnet: 'dc2' });
    t.equal(dc2.json().code, 'E_UNSUPPORTED', 'no host on dc2 yet');
    await host('h2', 'dc2');
    const onDc2 = await call('POST', '/v1/vpcs', a, { name: 'w', cidr: '10.0.4.0/24', mode: 'vlan', physnet: 'dc2' });
    t.equal(onDc2.statusCode, 201);
    t.same([onDc2.json().vlan, onDc2.json().physnet], [100, 'dc2'], 'VLAN 100 again, on dc2');
    t.equal(
      (await call('POST', '/v1/vpcs', a, { name: 'x', cidr: '10.0.5.0/24', mode: 'vlan', physnet: 'nowhere' })).json()
        .code,
      'E_UNSUPPORTED',
      'a physical network without a VLAN range is refused',
    );
    t.equal(
      (await call('POST', '/v1/vpcs', a, { name: 'x', cidr: '10.0.5.0/24', mode: 'vxlan', physnet: 'dc2' })).json()
        .code,
      'E_INVALID_INPUT',
      'physnet is for vlan VPCs only',
    );
    t.equal(
      (await call('POST', '/v1/vpcs', a, { name: 'x', cidr: '10.0.5.0/24', mode: 'vlan', physnet: 'Bad!' })).json()
        .code,
      'E_INVALID_INPUT',
    );

    // Egress limits hold on every datapath (on the userspace one through each port's shaper pair).
    const patchEgress = await app.inject({
      method: 'PATCH',
      url: '/v1/vpcs/w',
      headers: { authorization: `Bearer ${a}` },
      payload: { qos: { egressBps: 10_000_000, ingressBps: 10_000_000 } },
    });
    t.equal(patchEgress.statusCode, 200, 'a vlan VPC takes egress limits on a userspace datapath too');

    // Deleting a VPC frees its id, but not for the next VPC at once: quarantined (see tenancy's directories.test).
    t.equal((await call('DELETE', '/v1/vpcs/v1', a)).statusCode, 204);
    t.match(
      (await store.get(modelKeys.vlan('physnet0', made[0]!.vlan)))?.value,
      /^freed:\d+$/,
      "v1's VLAN id is a tombstone",
    );
    const again = await call('POST', '/v1/vpcs', a, { name: 'v3', cidr: '10.0.3.0/24', mode: 'vlan' });
    t.equal(again.json().code, 'E_RANGE_EXHAUSTED', "v1's id is not given out again at once");
    t.match(again.json().message, /1 freed less than 60 min ago/);
  },
);

t.test("routed VPCs must lie within the operator's routed ranges when it set some", async (t) => {
  const store = new MemoryStore();
  const app = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret' });
  t.teardown(async () => {
    await app.close();
    await store.close();
  });
  const put = (payload: object, token = 'admin-secret') =>
    app.inject({ method: 'PUT', url: '/v1/policy', headers: { authorization: `Bearer ${token}` }, payload });
  t.equal((await put({ routedRanges: ['10.8.0.0/16'] }, 'not-the-admin')).statusCode, 401, "policy is the admin's");
  t.equal((await put({ routedRanges: ['10.8.0.0/33'] })).json().code, 'E_INVALID_INPUT', 'a bad CIDR is refused');
  t.equal(
    (await put({ vlanRanges: [{ physnet: 'p', min: 5, max: 4095 }] })).json().code,
    'E_INVALID_INPUT',
    'so is a VLAN range beyond 4094',
  );
  t.equal((await put({ routedRanges: ['10.8.0.0/16', '172.20.0.0/14'] })).statusCode, 200);
  t.same(
    (await app.inject({ method: 'GET', url: '/v1/policy', headers: { authorization: 'Bearer admin-secret' } })).json(),
    { routedRanges: ['10.8.0.0/16', '172.20.0.0/14'] },
  );
  const call = (payload: object, token: string) =>
    app.inject({ method: 'POST', url: '/v1/vpcs', headers: { authorization: `Bearer ${token}` }, payload });
  const a = (
    await app.inject({
      method: 'POST',
      url: '/v1/tenants',
      headers: { authorization: 'Bearer admin-secret' },
      payload: { name: 'a' },
    })
  ).json().token as string;
  t.equal((await call({ name: 'in', cidr: '10.8.4.0/24', mode: 'routed' }, a)).statusCode, 201, 'inside a range');
  t.equal((await call({ name: 'in2', cidr: '172.21.0.0/16', mode: 'routed' }, a)).statusCode, 201, 'inside the other');
  const out = await call({ name: 'out', cidr: '10.9.0.0/24', mode: 'routed' }, a);
  t.equal(out.statusCode, 403);
  t.equal(out.json().code, 'E_FORBIDDEN');
  t.match(out.json().message, /must lie within the operator's routed ranges \(10\.8\.0\.0\/16, 172\.20\.0\.0\/14\)/);
  const wider = await call({ name: 'wide', cidr: '10.0.0.0/8', mode: 'routed' }, a);
  t.equal(wider.json().code, 'E_FORBIDDEN', 'a CIDR covering a range is not inside it');
  t.equal((await store.list('/netd/v1/ipam/pools/a.out')).kvs.length, 0, 'the refused VPC left no pool');
  t.equal((await call({ name: 'vx', cidr: '10.9.0.0/24' }, a)).statusCode, 201, 'vxlan VPCs are not limited');
});

t.test(
  "operator caps: only the admin sets them; a tenant's limits above them are refused, and none leaves them in force",
  async (t) => {
    const { store, call } = await setup(t);
    const a = (await call('POST', '/v1/tenants', 'admin-secret', { name: 'a' })).json().token as string;
    const caps = { eth0: { egressBps: 20_000_000 }, eth1: { ingressBps: 50_000_000, egressBps: 30_000_000 } };
    t.equal((await call('PUT', '/v1/tenants/a/caps', a, caps)).statusCode, 401, 'a tenant cannot set caps');
    t.equal((await call('PUT', '/v1/tenants/zz/caps', 'admin-secret', caps)).json().code, 'E_NOT_FOUND');
    const low = await call('PUT', '/v1/tenants/a/caps', 'admin-secret', { eth1: { egressBps: 10 } });
    t.equal(low.json().code, 'E_INVALID_INPUT', 'a cap is a valid rate');
    const set = await call('PUT', '/v1/tenants/a/caps', 'admin-secret', caps);
    t.equal(set.statusCode, 200);
    t.same(set.json().caps, caps);
    t.same((await call('GET', '/v1/tenant', a)).json().caps, caps, 'the tenant sees its plan');

    const over = await call('POST', '/v1/vpcs', a, {
      name: 'web',
      cidr: '10.0.0.0/24',
      qos: { egressBps: 40_000_000 },
    });
    t.equal(over.statusCode, 403);
    t.equal(over.json().code, 'E_OVER_CAP');
    t.match(over.json().message, /eth1 egress 40000000 bits\/s exceeds the operator's cap of 30000000/);
    t.notOk(await store.get(modelKeys.vpc('a.web')), 'nothing was created');
    t.equal((await call('POST', '/v1/vpcs', a, { name: 'web', cidr: '10.0.0.0/24' })).statusCode, 201);
    t.equal((await call('PATCH', '/v1/vpcs/web', a, { qos: { ingressBps: 60_000_000 } })).json().code, 'E_OVER_CAP');
    t.equal(
      (await call('PATCH', '/v1/vpcs/web', a, { qos: { ingressBps: 50_000_000 } })).statusCode,
      200,
      'at the cap',
    );

    const ep = C1_ETH1;
    await store.put(modelKeys.endpoint('a.web', 'c1:eth1'), JSON.stringify({ ...ep, qos: { egressBps: 5_000_000 } }));
    const ext = C1_ETH0;
    await store.put('/netd/v1/external/h1/c1:eth0', JSON.stringify(ext));
    const epOver = await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1', a, { qos: { egressBps: 31_000_000 } });
    t.equal(epOver.json().code, 'E_OVER_CAP');
    t.same(
      JSON.parse((await store.get(modelKeys.endpoint('a.web', 'c1:eth1')))!.value).qos,
      { egressBps: 5_000_000 },
      'the refused change lost nothing',
    );
    t.equal(
      (await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1', a, { qos: {} })).statusCode,
      200,
      'removing limits is allowed',
    );
    t.equal(
      (await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1/external', a, { qos: { egressBps: 21_000_000 } })).json()
        .code,
      'E_OVER_CAP',
      'eth0 has its own cap',
    );
    t.equal(
      (await call('PATCH', '/v1/vpcs/web/endpoints/c1:eth1/external', a, { qos: { ingressBps: 900_000_000 } }))
        .statusCode,
      200,
      'a direction without a cap is free',
    );

    const cleared = await call('PUT', '/v1/tenants/a/caps', 'admin-secret', {});
    t.equal(cleared.statusCode, 200);
    t.equal(cleared.json().caps, undefined, '{} removes the caps');
    t.notOk(JSON.parse((await store.get(modelKeys.tenant('a')))!.value).caps);
    t.equal((await call('PATCH', '/v1/vpcs/web', a, { qos: { ingressBps: 60_000_000 } })).statusCode, 200);
  },
);

t.test("the policy's infrastructure ranges and allow-list are validated and kept", async (t) => {
  const { call } = await setup(t);
  const bad = [
    { infraAllow: [{ cidr: '10.0.0.1/32', proto: 'icmp', port: 1 }] },
    { infraAllow: [{ cidr: '10.0.0.1/32', proto: 'tcp', port: 70000 }] },
    { infraAllow: [{ cidr: 'fd00::1/128', proto: 'tcp', port: 53 }] },
    { infraRanges: ['10.0.0.1/8'] },
  ];
  for (const body of bad)
    t.equal((await call('PUT', '/v1/policy', 'admin-secret', body)).statusCode, 400, JSON.stringify(body));
  const good = { infraRanges: ['192.168.0.0/16'], infraAllow: [{ cidr: '10.0.0.53/32', proto: 'udp', port: 53 }] };
  t.same((await call('PUT', '/v1/policy', 'admin-secret', good)).json(), good);
  t.same((await call('GET', '/v1/policy', 'admin-secret')).json(), good);
});
