import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { EtcdStore } from '../../../store/etcd.js';
import { modelKeys } from '../../../tenancy/keys.js';

/**
 * The API's newest routes driven by curl (a client nobody here wrote) over a host netd's Unix
 * socket: /readyz says what the host builds, the admin's policy is set and read back, and
 * malformed bodies are refused with stable codes without changing what is stored.
 */
t.test('curl against netd: /readyz capabilities, PUT/GET /v1/policy, malformed bodies refused', async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, with: ['netd'] }, async (s) => {
    const d = s.cluster.description;
    const socket = s.cluster.host('h1').daemons.netdApi!.replace('unix://', '');
    const curl = async (method: string, path: string, body?: string, token = d.adminToken) => {
      const { stdout } = await s.runner.run({
        argv: [
          'curl',
          '-sS',
          '--unix-socket',
          socket,
          '-X',
          method,
          '-H',
          `authorization: Bearer ${token}`,
          ...(body !== undefined ? ['-H', 'content-type: application/json', '--data-binary', body] : []),
          '-w',
          '\n%{http_code}',
          `http://netd${path}`,
        ],
      });
      const cut = stdout.lastIndexOf('\n');
      return {
        status: Number(stdout.slice(cut + 1)),
        body: JSON.parse(stdout.slice(0, cut) || '{}') as Record<string, unknown>,
      };
    };
    const ready = await curl('GET', '/readyz');
    t.equal(ready.status, 200);
    t.same(ready.body.modes, ['vxlan', 'routed'], 'no trunk here: vxlan and routed');
    t.match(String((ready.body.refused as Record<string, unknown>).vlan), /no VLAN trunk configured/);

    const set = await curl('PUT', '/v1/policy', JSON.stringify({ routedRanges: ['10.8.0.0/16'] }));
    t.same([set.status, set.body], [200, { routedRanges: ['10.8.0.0/16'] }], 'the admin sets the policy');
    const store = new EtcdStore(d.etcd.client);
    t.teardown(() => store.close());
    const stored = async () => (await store.get(modelKeys.policy()))?.value;
    const before = await stored();
    for (const [body, code] of [
      ['{"routedRanges": ["10.8.0.0/16"', 'E_INVALID_INPUT'], // truncated JSON
      ['{"routedRanges": ["not-a-cidr"]}', 'E_INVALID_INPUT'],
      ['{"vlanRanges": [{"physnet": "Bad!", "min": 1, "max": 2}]}', 'E_INVALID_INPUT'],
      ['{"vlanRanges": [{"physnet": "p", "min": 9, "max": 5}]}', 'E_INVALID_INPUT'],
      ['{"surprise": true}', 'E_INVALID_INPUT'],
      ['[]', 'E_INVALID_INPUT'],
    ] as const) {
      const r = await curl('PUT', '/v1/policy', body);
      t.same([r.status, r.body.code], [400, code], `${body} → 400 ${code}`);
    }
    t.equal(await stored(), before, 'nothing malformed changed the stored policy');
    const tenant = await curl('PUT', '/v1/policy', '{}', 'a-tenant-token-that-is-not-the-admin');
    t.equal(tenant.status, 401, 'only the admin sets the policy');
    t.same((await curl('GET', '/v1/policy')).body, { routedRanges: ['10.8.0.0/16'] }, 'read back as set');
    await store.delete(modelKeys.policy());
  });
});
