import t from 'tap';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes } from '../../../core/errors.js';
import { etcdConnection, etcdInputFromEnv, mergeEtcdInput, refusePasswordFlag } from '../../etcd-config.js';

const CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----\n';

function files(t: { teardown(fn: () => unknown): unknown }) {
  const dir = mkdtempSync(join(tmpdir(), 'etcd-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, text: string, mode = 0o600) => {
    const p = join(dir, name);
    writeFileSync(p, text, { mode });
    return p;
  };
  return {
    dir,
    ca: write('ca.crt', CERT, 0o644),
    cert: write('netd.crt', CERT, 0o644),
    key: write('netd.key', KEY),
    password: write('password', 's3cret\n'),
    write,
  };
}

const invalid = (message: RegExp) => ({ code: ErrorCodes.INVALID_INPUT, message });

t.test('plain endpoints; TLS files read into bytes; unixs:// is TLS on a socket', async (t) => {
  t.same(etcdConnection({ endpoints: 'http://10.0.0.1:2379, http://10.0.0.2:2379' }), {
    endpoints: ['http://10.0.0.1:2379', 'http://10.0.0.2:2379'],
  });
  const f = files(t);
  const tls = etcdConnection({ endpoints: ['https://etcd1:2379'], ca: f.ca, cert: f.cert, key: f.key });
  t.same(tls.endpoints, ['https://etcd1:2379']);
  t.equal(tls.tls?.ca.toString(), CERT, 'the CA bytes, read now');
  t.equal(tls.tls?.key?.toString(), KEY);
  const sock = etcdConnection({ endpoints: 'unixs:///run/etcd/etcd.sock', ca: f.ca });
  t.same(sock.endpoints, ['unix:///run/etcd/etcd.sock'], 'grpc knows unix:, TLS comes from the CA');
  t.same(etcdConnection({ endpoints: 'unix:///run/etcd.sock' }).endpoints, ['unix:///run/etcd.sock']);
});

t.test('every mistake is E_INVALID_INPUT naming the flag (and env) to fix', async (t) => {
  const f = files(t);
  t.throws(() => etcdConnection({}), invalid(/--etcd \(or \$NETD_ETCD_ENDPOINTS\) is required/));
  t.throws(() => etcdConnection({ endpoints: 'ftp://x' }), invalid(/"ftp:\/\/x" is not an etcd URL/));
  t.throws(() => etcdConnection({ endpoints: '10.0.0.1:2379' }), invalid(/not an etcd URL/), 'a URL needs a scheme');
  t.throws(
    () => etcdConnection({ endpoints: 'https://etcd:2379' }),
    invalid(/uses TLS: --etcd-ca \(or \$NETD_ETCD_CA\) must name the CA/),
    'https without a CA',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'http://a:2379,https://b:2379', ca: f.ca }),
    invalid(/http:\/\/ endpoints are plain text/),
    'a mix of plain and TLS',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'http://a:2379', ca: f.ca }),
    invalid(/every endpoint must be https/),
    'a CA with plain endpoints',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: f.ca, cert: f.cert }),
    invalid(/--etcd-cert \(or \$NETD_ETCD_CERT\) is given: --etcd-key \(or \$NETD_ETCD_KEY\) must name its key/),
    'a certificate without its key',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: f.ca, key: f.key }),
    invalid(/--etcd-key .* needs --etcd-cert/),
    'a key without its certificate',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'http://a:2379', cert: f.cert, key: f.key }),
    invalid(/needs TLS: give --etcd-ca/),
    'a client certificate without TLS',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: join(f.dir, 'missing.crt') }),
    invalid(/--etcd-ca .*: cannot read .*missing\.crt: ENOENT/),
    'a missing file, by name',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: f.key }),
    invalid(/holds no PEM certificate/),
    'a key where the CA should be',
  );
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: f.ca, cert: f.key, key: f.cert }),
    invalid(/--etcd-cert .* holds no PEM certificate/),
    'certificate and key swapped',
  );
  const open = f.write('open.key', KEY, 0o644);
  t.throws(
    () => etcdConnection({ endpoints: 'https://a:2379', ca: f.ca, cert: f.cert, key: open }),
    invalid(/readable by every user \(mode 644\); chmod 600/),
    'a world-readable key',
  );
});

t.test('a password only from a file or the environment, and only with a user', async (t) => {
  const f = files(t);
  const base = { endpoints: 'https://a:2379', ca: f.ca };
  t.same(etcdConnection({ ...base, user: 'netd', passwordFile: f.password }).auth, {
    username: 'netd',
    password: 's3cret',
  });
  t.same(etcdConnection({ ...base, user: 'netd', password: 'from-env' }).auth, {
    username: 'netd',
    password: 'from-env',
  });
  t.throws(
    () => etcdConnection({ ...base, user: 'netd' }),
    invalid(/password comes from --etcd-password-file .* or \$NETD_ETCD_PASSWORD \(never a flag value\)/),
  );
  t.throws(() => etcdConnection({ ...base, passwordFile: f.password }), invalid(/--etcd-user .* must name the user/));
  t.throws(
    () => etcdConnection({ ...base, user: 'netd', passwordFile: f.password, password: 'x' }),
    invalid(/give the etcd password once/),
  );
  t.throws(() => etcdConnection({ ...base, user: 'netd', passwordFile: f.write('empty', '') }), invalid(/is empty/));
  t.throws(() => etcdConnection({ ...base, user: 'a b', password: 'x' }), invalid(/not a plain user name/));
  t.throws(() => refusePasswordFlag(['--host', 'h1', '--etcd-password', 'x']), invalid(/not accepted.*ps/));
  t.throws(() => refusePasswordFlag(['--etcd-password=x']), invalid(/--etcd-password-file/));
  t.doesNotThrow(() => refusePasswordFlag(['--etcd-password-file', f.password]));
});

t.test('flags win over the environment, field by field', async (t) => {
  const env = etcdInputFromEnv({
    NETD_ETCD_ENDPOINTS: 'https://env:2379',
    NETD_ETCD_CA: '/env/ca.crt',
    NETD_ETCD_USER: '',
    OTHER: 'x',
  });
  t.same(mergeEtcdInput({ endpoints: 'https://flag:2379', cert: '/flag/c.crt' }, env), {
    endpoints: 'https://flag:2379',
    ca: '/env/ca.crt',
    cert: '/flag/c.crt',
  });
});
