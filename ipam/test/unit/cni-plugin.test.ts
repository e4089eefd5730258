import t from 'tap';
import { MemoryStore } from '../../../store/memory.js';
import { Ipam } from '../../allocator.js';
import { ipamConfig, runIpamPlugin } from '../../cni-plugin.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCniRequest, toCniError, CniErrorCodes } from '../../../core/cni.js';
import { contains, parseCidr, parseIp } from '../../../core/cidr.js';

/** Runs the plugin logic on a MemoryStore the way netd-ipam runs it on etcd. */
async function invoke(
  store: MemoryStore,
  env: Record<string, string>,
  config: object,
): Promise<{ out?: unknown; error?: { code: number; msg: string } }> {
  try {
    const req = parseCniRequest(env, JSON.stringify(config));
    const noClose = Object.assign(Object.create(store) as MemoryStore, { close: async () => undefined });
    return { out: await runIpamPlugin(req, env, () => noClose) };
  } catch (err) {
    return { error: toCniError(err, '1.0.0') };
  }
}

const conf = (extra: object = {}, version = '1.0.0') => ({
  cniVersion: version,
  name: 'n1',
  type: 'bridge',
  ipam: {
    type: 'netd-ipam',
    pool: 'p',
    host: 'h1',
    etcdEndpoints: ['http://127.0.0.1:1'],
    routes: [{ dst: '0.0.0.0/0' }],
  },
  ...extra,
});
const add = (id: string, extra: Record<string, string> = {}) => ({
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: id,
  CNI_IFNAME: 'eth1',
  CNI_NETNS: `/run/netns/${id}`,
  ...extra,
});

t.test('ADD returns a spec result; static addresses from the ips capability and CNI_ARGS; sticky names', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  await new Ipam({ store, host: 'admin' }).createPool({ name: 'p', cidr: '10.40.0.0/24', kind: 'vpc' });
  const r = await invoke(store, add('c1'), conf());
  t.match(r.out, {
    cniVersion: '1.0.0',
    ips: [{ address: /^10\.40\.0\.\d+\/24$/, gateway: '10.40.0.1' }],
    routes: [{ dst: '0.0.0.0/0' }],
  });
  const legacy = await invoke(store, add('c0'), conf({}, '0.3.1'));
  t.match(legacy.out, { ips: [{ version: '4' }] }, '0.3.x results carry the IP version');
  const cap = await invoke(store, add('c2'), conf({ runtimeConfig: { ips: ['10.40.0.77/24'] } }));
  t.match(cap.out, { ips: [{ address: '10.40.0.77/24' }] }, 'ips capability');
  const args = await invoke(store, add('c3', { CNI_ARGS: 'IgnoreUnknown=1;IP=10.40.0.78' }), conf());
  t.match(args.out, { ips: [{ address: '10.40.0.78/24' }] }, 'CNI_ARGS IP=');
  const taken = await invoke(store, add('c4', { CNI_ARGS: 'IP=10.40.0.78' }), conf());
  t.equal(taken.error?.code, CniErrorCodes.ADDRESS_IN_USE);
  const sticky1 = await invoke(store, add('db-a', { CNI_ARGS: 'NETD_STICKY=db-0' }), conf());
  await invoke(store, { ...add('db-a'), CNI_COMMAND: 'DEL' }, conf());
  const sticky2 = await invoke(store, add('db-b', { CNI_ARGS: 'NETD_STICKY=db-0' }), conf());
  t.same(
    (sticky2.out as { ips: unknown[] }).ips,
    (sticky1.out as { ips: unknown[] }).ips,
    'sticky name keeps its address',
  );
});

t.test('CHECK, DEL, GC and STATUS', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  await new Ipam({ store, host: 'admin' }).createPool({ name: 'p', cidr: '10.41.0.0/24', kind: 'vpc' });
  const r = await invoke(store, add('c1'), conf());
  t.equal(
    (await invoke(store, { ...add('c1'), CNI_COMMAND: 'CHECK' }, conf({ prevResult: r.out }))).error,
    undefined,
    'CHECK ok',
  );
  const wrong = await invoke(
    store,
    { ...add('c1'), CNI_COMMAND: 'CHECK' },
    conf({ prevResult: { cniVersion: '1.0.0', ips: [{ address: '10.41.0.200/24' }] } }),
  );
  t.equal(wrong.error?.code, CniErrorCodes.CONTAINER_UNKNOWN, 'CHECK catches a mismatch');
  t.equal((await invoke(store, { ...add('c1'), CNI_COMMAND: 'DEL' }, conf())).error, undefined);
  t.equal((await invoke(store, { ...add('c1'), CNI_COMMAND: 'DEL' }, conf())).error, undefined, 'DEL twice');
  const missing = await invoke(store, { ...add('c1'), CNI_COMMAND: 'CHECK' }, conf());
  t.equal(missing.error?.code, CniErrorCodes.CONTAINER_UNKNOWN);
  await invoke(store, add('keep'), conf());
  await invoke(store, add('drop'), conf());
  await invoke(
    store,
    { CNI_COMMAND: 'GC' },
    conf({ 'cni.dev/valid-attachments': [{ containerID: 'keep', ifname: 'eth1' }] }, '1.1.0'),
  );
  const ipam = new Ipam({ store, host: 'h1' });
  t.equal((await ipam.getHandle('h1:keep:eth1')).length, 1);
  t.equal((await ipam.getHandle('h1:drop:eth1')).length, 0, 'GC released the unlisted one');
  // A GC whose list is missing or malformed is an error, never "nothing is valid" (a purge).
  for (const bad of [
    {},
    { 'cni.dev/valid-attachments': 'keep' },
    { 'cni.dev/valid-attachments': [{ containerID: 'keep' }] },
  ]) {
    const r = await invoke(store, { CNI_COMMAND: 'GC' }, conf(bad, '1.1.0'));
    t.equal(r.error?.code, CniErrorCodes.INVALID_NETWORK_CONFIG, `GC with ${JSON.stringify(bad)} refused`);
  }
  t.equal((await ipam.getHandle('h1:keep:eth1')).length, 1, 'and released nothing');
  t.equal((await invoke(store, { CNI_COMMAND: 'STATUS' }, conf({}, '1.1.0'))).error, undefined);
});

t.test('the same container id on two hosts: two attachments, two addresses; DEL on one leaves the other', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  await new Ipam({ store, host: 'admin' }).createPool({ name: 'p', cidr: '10.44.0.0/24', kind: 'vpc' });
  const on = (host: string, extra: object = {}) => conf({ ipam: { ...conf().ipam, host }, ...extra });
  const a = await invoke(store, add('same'), on('h1'));
  const b = await invoke(store, add('same'), on('h2'));
  const ipOf = (r: { out?: unknown }) => (r.out as { ips: Array<{ address: string }> }).ips[0]!.address;
  t.not(ipOf(a), ipOf(b), `h1 got ${ipOf(a)}, h2 ${ipOf(b)}`);
  t.equal((await invoke(store, { ...add('same'), CNI_COMMAND: 'DEL' }, on('h2'))).error, undefined);
  const ipam = new Ipam({ store, host: 'h1' });
  t.equal((await ipam.getHandle('h1:same:eth1')).length, 1, "h1's address is still held");
  t.equal((await ipam.getHandle('h2:same:eth1')).length, 0, "h2's is released");
});

t.test('etcd unreachable is CNI code 11 (try again later) and leaves nothing behind', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  await new Ipam({ store, host: 'admin' }).createPool({ name: 'p', cidr: '10.42.0.0/24', kind: 'vpc' });
  store.setAvailable(false);
  const r = await invoke(store, add('c1'), conf());
  t.equal(r.error?.code, CniErrorCodes.TRY_AGAIN_LATER);
  const status = await invoke(store, { CNI_COMMAND: 'STATUS' }, conf({}, '1.1.0'));
  t.equal(status.error?.code, CniErrorCodes.PLUGIN_NOT_AVAILABLE);
  store.setAvailable(true);
  t.same((await store.list('/netd/v1/ipam/handles/')).kvs, []);
});

t.test('dual-stack: one attachment, an IPv4 and an IPv6 pool', async (t) => {
  const store = new MemoryStore();
  t.teardown(() => store.close());
  const ipam = new Ipam({ store, host: 'h1' });
  await ipam.createPool({ name: 'v4', cidr: '10.43.0.0/24', kind: 'vpc' });
  await ipam.createPool({ name: 'v6', cidr: 'fd00:43::/64', kind: 'vpc' });
  const a4 = await ipam.allocate({ pool: 'v4', handle: 'c:eth1' });
  const a6 = await ipam.allocate({ pool: 'v6', handle: 'c:eth1' });
  t.match(a4.cidr, /^10\.43\.0\.\d+\/24$/);
  t.ok(
    contains(parseCidr('fd00:43::/64'), parseIp(a6.ip)) && a6.cidr.endsWith('/64'),
    `${a6.cidr} is in the IPv6 pool`,
  );
  t.equal(a6.gateway, 'fd00:43::1');
  t.equal((await ipam.blocks('v6'))[0]?.cidr.endsWith('/122'), true, 'IPv6 blocks are /122');
  t.equal(await ipam.releaseHandle('c:eth1'), 2, 'both families released by handle');
});

t.test('the etcd settings: an ipam.etcd object (TLS files), the older etcdEndpoints, the environment', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ipam-etcd-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pem = (name: string, label: string, mode: number) => {
    const p = join(dir, name);
    writeFileSync(p, `-----BEGIN ${label}-----\nMIIB\n-----END ${label}-----\n`, { mode });
    return p;
  };
  const ca = pem('ca.crt', 'CERTIFICATE', 0o644);
  const cert = pem('h1.crt', 'CERTIFICATE', 0o644);
  const key = pem('h1.key', 'PRIVATE KEY', 0o600);
  const env = add('c1');
  const cfg = (ipam: object, extraEnv: Record<string, string> = {}) =>
    ipamConfig(
      parseCniRequest(
        { ...env, ...extraEnv },
        JSON.stringify({
          cniVersion: '1.0.0',
          name: 'n',
          type: 'bridge',
          ipam: { type: 'netd-ipam', pool: 'p', host: 'h1', ...ipam },
        }),
      ),
      { ...env, ...extraEnv },
    );
  const tls = cfg({ etcd: { endpoints: ['https://10.0.0.1:2379'], ca, cert, key } }).etcd;
  t.same(tls.endpoints, ['https://10.0.0.1:2379']);
  t.ok(tls.tls?.ca.includes('BEGIN CERTIFICATE') && tls.tls.key?.includes('PRIVATE KEY'), 'files read');
  t.same(cfg({ etcdEndpoints: ['http://10.0.0.1:2379'] }).etcd, { endpoints: ['http://10.0.0.1:2379'] }, 'older form');
  const fromEnv = cfg(
    {},
    { NETD_ETCD_ENDPOINTS: 'https://e:2379', NETD_ETCD_CA: ca, NETD_ETCD_CERT: cert, NETD_ETCD_KEY: key },
  ).etcd;
  t.same(fromEnv.endpoints, ['https://e:2379'], 'everything from the environment');
  t.ok(fromEnv.tls?.cert, 'including the client certificate');
  const mixed = cfg({ etcd: { endpoints: ['https://x:2379'] } }, { NETD_ETCD_CA: ca }).etcd;
  t.ok(mixed.tls?.ca, 'the config names endpoints, the environment the CA');

  const bad = (ipam: object, message: RegExp, what: string) =>
    t.throws(() => cfg(ipam), { code: CniErrorCodes.INVALID_NETWORK_CONFIG, message }, what);
  bad(
    { etcd: { endpoints: ['https://x:2379'] } },
    /ipam\.etcd\.ca \(or \$NETD_ETCD_CA\) must name the CA/,
    'https without a CA',
  );
  bad(
    { etcd: { endpoints: ['https://x:2379'], ca, cert } },
    /ipam\.etcd\.key .* must name its key/,
    'cert without key',
  );
  bad(
    { etcd: { endpoints: ['https://x:2379'], ca, password: 'p' } },
    /password is not accepted.*passwordFile/,
    'a password',
  );
  bad({ etcd: { endpoints: ['https://x:2379'], tls: true } }, /ipam\.etcd\.tls is not a known setting/, 'unknown key');
  bad(
    { etcd: { endpoints: ['http://x:2379'] }, etcdEndpoints: ['http://y:2379'] },
    /give the etcd endpoints once/,
    'both',
  );
  bad({ etcd: ['http://x:2379'] }, /ipam\.etcd must be an object/, 'a list');
  bad({ etcd: { endpoints: ['https://x:2379'], ca: join(dir, 'nope') } }, /cannot read .*nope/, 'a missing file');
  bad({}, /ipam\.etcd\.endpoints \(or \$NETD_ETCD_ENDPOINTS\) is required/, 'nothing at all');
});
