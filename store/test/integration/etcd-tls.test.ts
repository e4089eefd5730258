import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes } from '../../../core/errors.js';
import { ExecRunner } from '../../../sys/runner.js';
import { createEtcdPki } from '../../../test-netns/pki.js';
import { EtcdStore, type EtcdStoreOptions } from '../../etcd.js';
import { etcdConnection } from '../../etcd-config.js';
import { storeContract } from '../contract.js';
import { eventually } from '../../../test-netns/testing.js';
import { startSecureEtcd, type TeardownHost } from '../helpers.js';
import { TcpProxy } from '../tcp-proxy.js';

/** Short deadlines: a refusal or partition must show quickly. */
function client(t: TeardownHost, opts: EtcdStoreOptions): EtcdStore {
  const s = new EtcdStore({ callTimeoutMs: 2_000, dialTimeoutMs: 1_000, watchConnectTimeoutMs: 3_000, ...opts });
  t.teardown(() => s.close());
  return s;
}

// The whole store contract, over TLS with a client certificate, against etcd with RBAC on (as root).
storeContract(t, 'EtcdStore over TLS', async (t) => {
  const { servers, description: d } = await startSecureEtcd(t);
  const proxy = await TcpProxy.start({ host: '127.0.0.1', port: servers[0]!.clientPort });
  t.teardown(() => proxy.close());
  return {
    store: client(t, { ...d.client, endpoints: [proxy.url.replace('http:', 'https:')] }),
    direct: client(t, d.client),
    cut: () => proxy.cut(),
    restore: () => proxy.restore(),
  };
});

t.test('a client without a certificate, or with one from another CA, is refused', async (t) => {
  const { servers, description: d } = await startSecureEtcd(t);
  const good = client(t, d.client);
  await good.put('/tls/probe', 'ok');

  const noCert = client(t, { endpoints: d.client.endpoints, tls: { ca: d.ca } });
  await t.rejects(
    noCert.get('/tls/probe'),
    { code: ErrorCodes.STORE_ACCESS_DENIED, message: /TLS handshake with etcd failed/ },
    'no client certificate: the handshake is refused',
  );

  const otherDir = mkdtempSync(join(tmpdir(), 'store-other-ca-'));
  t.teardown(() => rmSync(otherDir, { recursive: true, force: true }));
  const other = await createEtcdPki(new ExecRunner(), {
    dir: otherDir,
    name: 'intruder',
    serverIps: ['127.0.0.1'],
    clients: ['root'],
  });
  // A certificate that says CN=root, signed by a CA etcd does not trust.
  const foreign = client(t, {
    endpoints: d.client.endpoints,
    tls: { ca: d.ca, cert: other.clients.root!.cert, key: other.clients.root!.key },
  });
  await t.rejects(
    foreign.put('/tls/probe', 'stolen'),
    { code: ErrorCodes.STORE_ACCESS_DENIED },
    'a certificate of another CA (even CN=root) is refused',
  );
  // And the other way round: a server this client's CA did not sign is not trusted.
  const wrongCa = client(t, { ...d.client, tls: { ...d.client.tls, ca: other.ca.cert } });
  await t.rejects(wrongCa.get('/tls/probe'), { code: ErrorCodes.STORE_ACCESS_DENIED }, 'an untrusted server');

  t.equal((await good.get('/tls/probe'))?.value, 'ok', 'etcd served the right client all along, unchanged');
  const log = readFileSync(join(servers[0]!.state().options.dir, 'etcd.log'), 'utf8');
  t.match(log, /rejected connection.*client didn't provide a certificate/, 'etcd logged the missing certificate');
  t.match(log, /rejected connection.*certificate signed by unknown authority/, 'and the foreign one');
  await good.delete('/tls/probe');
});

t.test('user/password auth works; a wrong password is refused with a clear error', async (t) => {
  // "nobody" has a certificate (the TLS layer requires one) and no rights of its own.
  const { description: d } = await startSecureEtcd(t, { extraUsers: ['nobody'] });
  const nobody = { endpoints: d.client.endpoints, tls: { ca: d.ca, ...d.users.nobody! } };
  await t.rejects(
    client(t, nobody).put('/pw/x', '1'),
    { code: ErrorCodes.STORE_ACCESS_DENIED, message: /denied this user access/ },
    'the certificate alone (CN=nobody) may not write',
  );

  // The password comes from a file, through the same parsing netd uses.
  const password = readFileSync(d.rootPasswordFile, 'utf8').trim();
  const asRoot = client(t, {
    ...etcdConnection({
      endpoints: d.client.endpoints,
      ca: d.ca,
      cert: d.users.nobody!.cert,
      key: d.users.nobody!.key,
      user: 'root',
      passwordFile: d.rootPasswordFile,
    }),
  });
  await asRoot.put('/pw/x', '1');
  t.equal((await client(t, d.client).get('/pw/x'))?.value, '1', 'the password made the same certificate root');

  const wrong = client(t, { ...nobody, auth: { username: 'root', password: `${password}x` } });
  const err = await wrong.put('/pw/y', '1').then(
    () => undefined,
    (e: unknown) => e,
  );
  t.match(
    err,
    { code: ErrorCodes.STORE_ACCESS_DENIED, message: /refused the user name or password/, details: { user: 'root' } },
    'a wrong password: E_STORE_ACCESS_DENIED, saying so and naming the user',
  );
  t.equal(await client(t, d.client).get('/pw/y'), undefined, 'nothing was written');
  const unknown = client(t, { ...nobody, auth: { username: 'ghost', password: 'x' } });
  await t.rejects(unknown.get('/pw/x'), { code: ErrorCodes.STORE_ACCESS_DENIED }, 'an unknown user too');
  await client(t, d.client).deletePrefix('/pw/');
});

t.test('the netd user reads and writes under /netd/ only', async (t) => {
  const { description: d } = await startSecureEtcd(t);
  const root = client(t, d.client);
  const netd = client(t, { ...d.hostClient, probeKey: '/netd/' });
  await netd.put('/netd/v1/x', '1');
  t.equal((await netd.get('/netd/v1/x'))?.value, '1', 'inside /netd/: read and write');
  t.ok((await netd.currentRevision()) > 0n, 'revision probes inside /netd/ work');

  await t.rejects(netd.put('/storaged/v1/x', '1'), { code: ErrorCodes.STORE_ACCESS_DENIED }, 'no write outside');
  await t.rejects(netd.put('/netd', '1'), { code: ErrorCodes.STORE_ACCESS_DENIED }, 'not even next to the prefix');
  await root.put('/secret', 's');
  await t.rejects(netd.get('/secret'), { code: ErrorCodes.STORE_ACCESS_DENIED }, 'no read outside');
  await t.rejects(
    netd.txn({
      compare: [],
      success: [
        { type: 'put', key: '/netd/v1/y', value: '1' },
        { type: 'delete', key: '/secret' },
      ],
    }),
    { code: ErrorCodes.STORE_ACCESS_DENIED },
    'a transaction touching one key outside is refused whole',
  );
  t.equal(await root.get('/netd/v1/y'), undefined, 'and wrote nothing');
  await t.rejects(
    (async () => {
      for await (const _ of netd.watch('/', 1n, new AbortController().signal)) void _;
    })(),
    { code: ErrorCodes.STORE_ACCESS_DENIED },
    'no watch outside',
  );
  const defaultProbe = client(t, d.hostClient);
  await t.rejects(
    defaultProbe.currentRevision(),
    { code: ErrorCodes.STORE_ACCESS_DENIED },
    'the default probe key is outside /netd/: why netd sets probeKey',
  );

  // A watch inside /netd/ follows writes.
  const ac = new AbortController();
  t.teardown(() => ac.abort());
  const from = (await netd.currentRevision()) + 1n;
  const seen: string[] = [];
  void (async () => {
    for await (const b of netd.watch('/netd/', from, ac.signal)) seen.push(...b.events.map((e) => e.kv.key));
  })().catch(() => undefined);
  await root.put('/netd/v1/z', '1');
  t.ok(await eventually(() => seen.includes('/netd/v1/z'), 5_000), 'a netd watch inside /netd/ sees a write');
  await root.deletePrefix('/netd/');
  await root.delete('/secret');
});

t.test('EtcdStore refuses unreadable TLS files by name', async (t) => {
  t.throws(() => new EtcdStore({ endpoints: ['https://127.0.0.1:1'], tls: { ca: '/nonexistent/ca.crt' } }), {
    code: ErrorCodes.INVALID_INPUT,
    message: /etcd CA certificate \/nonexistent\/ca.crt/,
  });
  const dir = mkdtempSync(join(tmpdir(), 'store-pem-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'ca.crt'), 'not a certificate');
  t.throws(() => new EtcdStore({ endpoints: ['https://127.0.0.1:1'], tls: { ca: join(dir, 'ca.crt') } }), {
    code: ErrorCodes.INVALID_INPUT,
    message: /is not PEM/,
  });
  t.throws(
    () => new EtcdStore({ endpoints: ['https://127.0.0.1:1'], tls: { ca: Buffer.from('-----BEGIN '), cert: 'x' } }),
    { code: ErrorCodes.INVALID_INPUT, message: /needs its key/ },
  );
});
