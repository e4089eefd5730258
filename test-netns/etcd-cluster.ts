import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import { EtcdStore } from '../store/etcd.js';
import { EtcdServer, freePort, type EtcdServerOptions, type EtcdServerState } from './etcd.js';
import { createEtcdPki, type CertPair, type EtcdPki } from './pki.js';

/**
 * etcd the way production runs it, for a virtual cluster or a test: one or more members, TLS for
 * clients and peers with client certificates required, and etcd's RBAC on:
 *
 * - user `root` (role root): the harness, tests, admin tools. It also has a password (a 0600 file).
 * - one user per component, read-write on its own prefix only (`netd`: /netd/). No password: under
 *   --client-cert-auth etcd 3.4 takes the user from the certificate's CN when a request carries no
 *   token, so a daemon's identity is its certificate.
 */

/** Component users and the key prefixes each may read and write. */
export const ETCD_COMPONENT_USERS: Readonly<Record<string, readonly string[]>> = { netd: ['/netd/'] };

/** What a client needs to reach etcd as one user: EtcdStore options with file paths (JSON-safe). */
export interface EtcdClientFiles {
  endpoints: string[];
  tls: { ca: string; cert: string; key: string };
}

export interface EtcdMemberDescription {
  name: string;
  /** Its address (on the fabric bridge in a virtual cluster; 127.0.0.1 in the root namespace). */
  address: string;
  /** From other namespaces (the hosts); empty in the root namespace. */
  clientUrl: string;
  peerUrl: string;
  /** From the root namespace. */
  endpoint: string;
  dataDir: string;
}

export interface ClusterEtcd {
  members: EtcdMemberDescription[];
  /** From the root namespace, as user root: `new EtcdStore(d.etcd.client)`. */
  client: EtcdClientFiles;
  /** For daemons on the hosts (underlay URLs), as user netd: `etcdFlags(d)` renders it as netd flags. */
  hostClient: EtcdClientFiles;
  /** The CA certificate, and a client certificate per etcd user (CN = user). */
  ca: string;
  users: Record<string, CertPair>;
  /** The password of user root, in a 0600 file (e.g. for `etcdctl --user root`). */
  rootPasswordFile: string;
}

export interface EtcdClusterOptions {
  /** Member count (1, 3, 5, ...). */
  members: number;
  /** PKI, member logs and sockets: DIR/pki, DIR/etcd-mN. */
  dir: string;
  /** Member data: DATAROOT/mN. */
  dataRoot: string;
  /** Names the CA and the cluster token. */
  name: string;
  /** Members run in this namespace, member i on addresses[i]; without it, on 127.0.0.1. */
  netns?: NetnsTarget;
  addresses?: readonly string[];
  /** Certificates made beforehand (clients: root, the component users and extraUsers); default: made here. */
  pki?: EtcdPki;
  /** Users beyond root and the component users, with no permission (tests of refusal). */
  extraUsers?: readonly string[];
  detached?: boolean;
  startTimeoutMs?: number;
  /** Called once every member process exists, before waiting for them: record their PIDs here. */
  onLaunched?: (states: EtcdServerState[]) => void;
}

export interface EtcdCluster {
  servers: EtcdServer[];
  description: ClusterEtcd;
}

/** Members whose processes run; `ready()` waits for them, turns auth on and describes the cluster. */
export interface LaunchedEtcdCluster {
  servers: EtcdServer[];
  ready(): Promise<EtcdCluster>;
}

export async function startEtcdCluster(runner: CommandRunner, opts: EtcdClusterOptions): Promise<EtcdCluster> {
  return (await launchEtcdCluster(runner, opts)).ready();
}

/**
 * Starts the member processes and returns without waiting for them, so a caller can do other work
 * while etcd starts (the virtual cluster wires its hosts meanwhile). A failure in ready() stops them.
 */
export async function launchEtcdCluster(runner: CommandRunner, opts: EtcdClusterOptions): Promise<LaunchedEtcdCluster> {
  if (!Number.isInteger(opts.members) || opts.members < 1)
    throw new AppError(ErrorCodes.INVALID_INPUT, `etcd members must be a whole number >= 1, got ${opts.members}`);
  if (opts.netns && (opts.addresses?.length ?? 0) < opts.members)
    throw new AppError(ErrorCodes.INVALID_INPUT, `${opts.members} etcd members need as many addresses`);
  const addresses = Array.from({ length: opts.members }, (_, i) => (opts.netns ? opts.addresses![i]! : '127.0.0.1'));
  const users = ['root', ...Object.keys(ETCD_COMPONENT_USERS), ...(opts.extraUsers ?? [])];
  const pki =
    opts.pki ??
    (await createEtcdPki(runner, {
      dir: join(opts.dir, 'pki'),
      name: opts.name,
      serverIps: addresses,
      clients: users,
    }));
  const missing = users.filter((u) => !pki.clients[u]);
  if (missing.length > 0)
    throw new AppError(ErrorCodes.INTERNAL, `the etcd PKI has no client certificate for ${missing.join(', ')}`);
  const rootPassword = randomBytes(18).toString('base64url');
  const rootPasswordFile = join(pki.dir, 'root.password');
  writeFileSync(rootPasswordFile, rootPassword + '\n', { mode: 0o600 });
  const tls = { ca: pki.ca.cert, cert: pki.server.cert, key: pki.server.key, client: pki.clients.root! };

  const names = addresses.map((_, i) => `m${i + 1}`);
  // In a namespace every member has its own address and the standard ports; in the root namespace
  // they share 127.0.0.1, so ports are asked from the kernel first (peers must know each other's).
  const launchOpts: Array<EtcdServerOptions & { name: string; dataDir: string; peerPort: number }> = await Promise.all(
    names.map(async (name, i) => {
      const dir = join(opts.dir, `etcd-${name}`);
      const base = { name, dir, dataDir: join(opts.dataRoot, name), tls, clusterToken: opts.name };
      if (opts.netns)
        return { ...base, netns: opts.netns, listenAddress: addresses[i]!, clientPort: 2379, peerPort: 2380 };
      return { ...base, clientPort: await freePort(), peerPort: await freePort() };
    }),
  );
  const initialCluster = launchOpts.map((o) => ({
    name: o.name,
    peerUrl: `https://${o.listenAddress ?? '127.0.0.1'}:${o.peerPort}`,
  }));
  const servers: EtcdServer[] = [];
  try {
    for (const o of launchOpts) {
      servers.push(
        await EtcdServer.launch({
          ...o,
          initialCluster,
          detached: opts.detached,
          startTimeoutMs: opts.startTimeoutMs,
        }),
      );
    }
    opts.onLaunched?.(servers.map((s) => s.state()));
  } catch (err) {
    await Promise.all(servers.map((s) => s.stop()));
    throw err;
  }
  return {
    servers,
    ready: async () => {
      try {
        await Promise.all(servers.map((s) => s.ready()));
        await enableAuth(servers, rootPassword, opts.extraUsers ?? []);
      } catch (err) {
        await Promise.all(servers.map((s) => s.stop()));
        throw err;
      }
      return { servers, description: describe(servers, addresses, launchOpts, pki, rootPasswordFile, opts) };
    },
  };
}

function describe(
  servers: readonly EtcdServer[],
  addresses: readonly string[],
  launchOpts: ReadonlyArray<{ dataDir: string }>,
  pki: EtcdPki,
  rootPasswordFile: string,
  opts: EtcdClusterOptions,
): ClusterEtcd {
  const members: EtcdMemberDescription[] = servers.map((s, i) => ({
    name: s.name,
    address: addresses[i]!,
    clientUrl: s.networkEndpoints[0] ?? '',
    peerUrl: s.peerUrl,
    endpoint: s.endpoints[0]!,
    dataDir: launchOpts[i]!.dataDir,
  }));
  const as = (user: string, endpoints: string[]): EtcdClientFiles => ({
    endpoints,
    tls: { ca: pki.ca.cert, cert: pki.clients[user]!.cert, key: pki.clients[user]!.key },
  });
  const rootEndpoints = members.map((m) => m.endpoint);
  const hostEndpoints = opts.netns ? members.map((m) => m.clientUrl) : rootEndpoints;
  return {
    members,
    client: as('root', rootEndpoints),
    hostClient: as('netd', hostEndpoints),
    ca: pki.ca.cert,
    users: pki.clients,
    rootPasswordFile,
  };
}

/**
 * Users, roles, then auth on (in that order: once auth is on, only root may change them). Root gets
 * a password too, so password auth works as well as certificates.
 */
async function enableAuth(
  servers: readonly EtcdServer[],
  rootPassword: string,
  extraUsers: readonly string[],
): Promise<void> {
  const store = new EtcdStore({ ...servers[0]!.clientOptions(), callTimeoutMs: 10_000 });
  try {
    const auth = store.client.auth;
    // Three rounds of independent requests (each is a Raft commit): users and roles, then grants.
    const components = Object.entries(ETCD_COMPONENT_USERS);
    await Promise.all([
      auth.userAdd({ name: 'root', password: rootPassword }),
      ...components.map(([user]) => auth.roleAdd({ name: user })),
      ...components.map(([user]) => auth.userAdd({ name: user, options: { no_password: true } })),
      ...extraUsers.map((user) => auth.userAdd({ name: user, options: { no_password: true } })),
    ]);
    await Promise.all([
      auth.userGrantRole({ user: 'root', role: 'root' }),
      ...components.map(([user]) => auth.userGrantRole({ user, role: user })),
      ...components.flatMap(([user, prefixes]) =>
        prefixes.map((prefix) =>
          auth.roleGrantPermission({
            name: user,
            perm: { permType: 'Readwrite', key: Buffer.from(prefix), range_end: prefixEnd(prefix) },
          }),
        ),
      ),
    ]);
    await auth.authEnable();
    // A member that has not applied the auth changes yet stamps requests with an old auth revision,
    // which etcd refuses ("revision of auth store is old"): a linearizable read through each member
    // returns only once that member has applied everything committed before it.
    await Promise.all(
      servers.slice(1).map(async (s) => {
        const each = new EtcdStore({ ...s.clientOptions(), callTimeoutMs: 10_000 });
        await each.get('/').finally(() => each.close());
      }),
    );
  } finally {
    await store.close();
  }
}

function prefixEnd(prefix: string): Buffer {
  const end = Buffer.from(prefix);
  end[end.length - 1] = end[end.length - 1]! + 1;
  return end;
}

/** netd's etcd flags for a daemon on a host of the cluster (user netd, underlay URLs). */
export function etcdFlags(d: { etcd: ClusterEtcd }, user = 'netd'): string[] {
  const c = hostEtcdClient(d, user);
  return ['--etcd', c.endpoints.join(','), '--etcd-ca', c.tls.ca, '--etcd-cert', c.tls.cert, '--etcd-key', c.tls.key];
}

/** Reaching etcd from a host of the cluster as any user (default netd): what `hostClient` is for netd. */
export function hostEtcdClient(d: { etcd: ClusterEtcd }, user = 'netd'): EtcdClientFiles {
  const pair = d.etcd.users[user];
  if (!pair) throw new AppError(ErrorCodes.NOT_FOUND, `no etcd user "${user}" in this cluster`);
  return { endpoints: d.etcd.hostClient.endpoints, tls: { ca: d.etcd.ca, cert: pair.cert, key: pair.key } };
}

/** The `etcd` object of a netd-ipam network config, for a plugin run on a host. */
export function ipamEtcdConfig(
  d: { etcd: ClusterEtcd },
  user = 'netd',
): { endpoints: string[]; ca: string; cert: string; key: string } {
  const c = hostEtcdClient(d, user);
  return { endpoints: c.endpoints, ...c.tls };
}
