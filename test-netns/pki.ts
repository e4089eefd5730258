import { chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { invalidInput } from '../core/errors.js';
import type { CommandRunner } from '../sys/runner.js';

/**
 * A small certificate authority for one etcd cluster, made with the `openssl` CLI: a CA, one server
 * certificate that every member serves clients and peers with, and one client certificate per etcd
 * user (its CN is the user name: etcd --client-cert-auth maps CN to user). EC P-256 keys: a few
 * milliseconds each, where RSA-2048 takes tens to hundreds.
 *
 *   DIR/ca.crt  ca.key            the CA (the key stays, so a test can issue more certificates)
 *   DIR/server.crt  server.key    SANs: every member address, 127.0.0.1, localhost (see below)
 *   DIR/USER.crt  USER.key        client certificates, CN=USER
 *
 * Keys are 0600 in a 0700 directory. grpc checks a Unix-socket target against the name "localhost"
 * (its default authority for unix: URLs), so that name is always in the server certificate.
 */

export interface CertPair {
  cert: string;
  key: string;
}

export interface EtcdPki {
  dir: string;
  ca: CertPair;
  server: CertPair;
  /** Client certificates by etcd user name (= CN). */
  clients: Record<string, CertPair>;
}

export interface PkiOptions {
  dir: string;
  /** Names the CA (its CN), so certificates of different clusters are told apart. */
  name: string;
  /** IP addresses the server certificate must cover (each member's, and 127.0.0.1 is added). */
  serverIps: readonly string[];
  /** Client certificates to issue, by etcd user name. */
  clients: readonly string[];
  days?: number;
}

const USER_RE = /^[a-z][a-z0-9_-]{0,31}$/;
const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

export async function createEtcdPki(runner: CommandRunner, opts: PkiOptions): Promise<EtcdPki> {
  for (const user of opts.clients)
    if (!USER_RE.test(user)) throw invalidInput(`etcd user "${user}" must be 1-32 of a-z 0-9 _ - (it becomes a CN)`);
  mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
  const days = String(opts.days ?? 30);
  const pair = (stem: string): CertPair => ({
    cert: join(opts.dir, `${stem}.crt`),
    key: join(opts.dir, `${stem}.key`),
  });
  const ca = pair('ca');
  await openssl(runner, [
    'req',
    '-x509',
    ...EC,
    '-keyout',
    ca.key,
    '-out',
    ca.cert,
    '-days',
    days,
    '-subj',
    `/CN=${opts.name} etcd CA`,
    '-addext',
    'basicConstraints=critical,CA:TRUE',
    '-addext',
    'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  // Signed by the CA in one step (openssl 3: req -x509 -CA), no CSR files.
  const issue = (p: CertPair, cn: string, extensions: string[]) =>
    openssl(runner, [
      'req',
      '-x509',
      '-CA',
      ca.cert,
      '-CAkey',
      ca.key,
      ...EC,
      '-keyout',
      p.key,
      '-out',
      p.cert,
      '-days',
      days,
      '-subj',
      `/CN=${cn}`,
      '-addext',
      'basicConstraints=critical,CA:FALSE',
      '-addext',
      'keyUsage=critical,digitalSignature',
      ...extensions.flatMap((e) => ['-addext', e]),
    ]);
  const server = pair('server');
  const clients = Object.fromEntries(opts.clients.map((u) => [u, pair(u)]));
  const ips = [...new Set(['127.0.0.1', ...opts.serverIps])];
  await Promise.all([
    // Members dial each other with this certificate too: it is a client certificate for peers.
    issue(server, 'etcd', [
      `subjectAltName=DNS:localhost,${ips.map((ip) => `IP:${ip}`).join(',')}`,
      'extendedKeyUsage=serverAuth,clientAuth',
    ]),
    ...opts.clients.map((u) => issue(clients[u]!, u, ['extendedKeyUsage=clientAuth'])),
  ]);
  for (const p of [ca, server, ...Object.values(clients)]) chmodSync(p.key, 0o600);
  return { dir: opts.dir, ca, server, clients };
}

async function openssl(runner: CommandRunner, args: string[]): Promise<void> {
  await runner.run({ argv: ['openssl', ...args], timeoutMs: 15_000 });
}
