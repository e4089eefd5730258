import {
  mkdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  existsSync,
  readdirSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join, dirname } from 'node:path';

const NETD_MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'netd', 'main.js');
import { randomBytes } from 'node:crypto';
import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import type { CommandRunner } from '../sys/runner.js';
import { IpBatch, IpClient } from '../sys/ip.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import { startDaemon, stopDaemon } from '../sys/process.js';
import { EtcdStore } from '../store/etcd.js';
import { Ipam } from '../ipam/allocator.js';
import { installNetdPlugin } from '../netd/install-cni.js';
import { socketPathForNetns } from '../netd/cni/server.js';
import { EtcdServer, type EtcdServerState } from './etcd.js';
import { checkPrefix, names, FABRIC_BRIDGE, HOST_UPLINK, NETNS_DIR } from './names.js';
import { underlayPlan, MAX_HOSTS } from './addressing.js';
import { eventually } from './testing.js';

/**
 * A virtual multi-host cluster made of network namespaces:
 *
 *   tn-P-fab   bridge "fabric" (control address .1, etcd listens there)
 *     ├── veth ── tn-P-h1  "uplink" 10.77.0.11/24
 *     ├── veth ── tn-P-h2  "uplink" 10.77.0.12/24
 *     └── veth ── tn-P-out "uplink" 10.77.0.254/24  (the outside world)
 *
 * Nothing is created in the root namespace. All state needed to tear the cluster down is written to
 * /run/test-netns/P/cluster.json before anything is created, so `down` works after a crash at any point.
 */

export const COMPONENTS = ['netd', 'storaged'] as const;
export type Component = (typeof COMPONENTS)[number];

export interface ClusterOptions {
  prefix: string;
  hosts: number;
  glusterNodes?: number;
  with?: readonly Component[];
  underlayBase?: string;
  mtu?: number;
}

export interface HostDescription {
  name: string;
  netns: string;
  netnsPath: string;
  underlayIp: string;
  uplink: string;
  /** URLs of the project's daemons running on this host, by component. */
  daemons: Record<string, string>;
}

export interface ClusterDescription {
  prefix: string;
  stateDir: string;
  underlay: { cidr: string; mtu: number };
  fabric: { netns: string; bridge: string; controlIp: string };
  hosts: HostDescription[];
  outside: { netns: string; netnsPath: string; address: string };
  etcd: { endpoints: string[]; underlayEndpoints: string[] };
  adminToken: string;
  /** With netd: where its CNI plugin is installed, and its external (eth0) pool. */
  cni?: { binDir: string; socketDir: string; externalPool: string; externalCidr: string };
}

/** What `down` needs, persisted as soon as it is known. */
interface ClusterState {
  status: 'creating' | 'up';
  description?: ClusterDescription;
  etcd?: EtcdServerState;
  /** Component daemons started on the hosts, to be ended by PID at teardown. */
  daemons?: Array<{ component: Component; host: string; pid: number; startTime: string }>;
}

export interface ClusterDeps {
  runner: CommandRunner;
  logger?: Logger;
}

export class VirtualCluster {
  private constructor(
    readonly description: ClusterDescription,
    private readonly deps: ClusterDeps,
    private readonly etcdState: EtcdServerState | undefined,
  ) {}

  static async up(opts: ClusterOptions, deps: ClusterDeps): Promise<VirtualCluster> {
    const prefix = checkPrefix(opts.prefix);
    validateOptions(opts);
    const log = (deps.logger ?? silentLogger()).child({ component: 'test-netns', prefix });
    const stateDir = names.stateDir(prefix);
    if (existsSync(stateDir) || (await clusterNamespaces(prefix)).length > 0) {
      throw new AppError(
        ErrorCodes.ALREADY_EXISTS,
        `cluster "${prefix}" exists already (run: test-netns down --prefix ${prefix})`,
        { prefix },
      );
    }
    mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    const state: ClusterState = { status: 'creating' };
    writeState(prefix, state);
    try {
      const description = await build(prefix, opts, deps, log, state);
      state.status = 'up';
      writeState(prefix, state);
      log.info({ hosts: description.hosts.length }, 'cluster up');
      return new VirtualCluster(description, deps, state.etcd);
    } catch (err) {
      log.error({ err }, 'cluster up failed; tearing down');
      await teardownCluster(prefix, deps);
      throw err;
    }
  }

  /** The cluster a previous `up` (maybe another process) created. */
  static load(prefix: string, deps: ClusterDeps): VirtualCluster {
    const state = readState(checkPrefix(prefix));
    if (!state?.description || state.status !== 'up') {
      throw new AppError(ErrorCodes.NOT_FOUND, `no running cluster "${prefix}"`, { prefix });
    }
    return new VirtualCluster(state.description, deps, state.etcd);
  }

  get prefix(): string {
    return this.description.prefix;
  }

  host(name: string): HostDescription {
    const host = this.description.hosts.find((h) => h.name === name);
    if (!host) throw new AppError(ErrorCodes.NOT_FOUND, `no host "${name}" in cluster ${this.prefix}`);
    return host;
  }

  /** The etcd server process, for tests that stop or restart it. */
  etcdServer(): EtcdServer {
    if (!this.etcdState) throw new AppError(ErrorCodes.INTERNAL, 'cluster has no etcd');
    return EtcdServer.attach(this.etcdState);
  }

  async down(): Promise<void> {
    await teardownCluster(this.prefix, this.deps);
  }
}

function validateOptions(opts: ClusterOptions): void {
  if (!Number.isInteger(opts.hosts) || opts.hosts < 1 || opts.hosts > MAX_HOSTS) {
    throw invalidInput(`--hosts must be an integer from 1 to ${MAX_HOSTS}`, { hosts: opts.hosts });
  }
  const mtu = opts.mtu ?? 1500;
  if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 9000) throw invalidInput('--mtu must be 1280..9000', { mtu });
  for (const c of opts.with ?? []) {
    if (!COMPONENTS.includes(c)) throw invalidInput(`unknown component "${c}" (known: ${COMPONENTS.join(', ')})`);
  }
  // storaged and gluster nodes arrive with their own issue; say so instead of pretending.
  if ((opts.with ?? []).includes('storaged')) {
    throw new AppError(ErrorCodes.UNSUPPORTED, '--with storaged: storaged is not built yet');
  }
  if ((opts.glusterNodes ?? 0) > 0) {
    throw new AppError(
      ErrorCodes.UNSUPPORTED,
      '--gluster-nodes: gluster nodes arrive with storaged and are not built yet',
    );
  }
}

async function build(
  prefix: string,
  opts: ClusterOptions,
  deps: ClusterDeps,
  log: Logger,
  state: ClusterState,
): Promise<ClusterDescription> {
  const { runner } = deps;
  const plan = underlayPlan(opts.underlayBase);
  const mtu = opts.mtu ?? 1500;
  const fabric = names.fabricNetns(prefix);
  const outside = names.outsideNetns(prefix);
  const hostNames = Array.from({ length: opts.hosts }, (_, i) => names.hostName(i));
  const edges = [
    ...hostNames.map((h) => ({ port: h, netns: names.hostNetns(prefix, h) })),
    { port: 'out', netns: outside },
  ];

  // One `ip -batch` creates every namespace; one more wires the whole fabric.
  const ip = new IpClient(runner);
  await ip.addNetns([fabric, ...edges.map((e) => e.netns)]);
  const fabricBatch = new IpBatch()
    .linkSet('lo', { up: true })
    .linkAddBridge(FABRIC_BRIDGE, { mtu })
    .linkSet(FABRIC_BRIDGE, { up: true })
    .addrAdd(`${plan.controlIp}/${plan.prefixLength}`, FABRIC_BRIDGE);
  for (const e of edges) {
    fabricBatch
      .linkAddVeth(e.port, HOST_UPLINK, { peerNetns: e.netns, mtu })
      .linkSet(e.port, { master: FABRIC_BRIDGE, up: true });
  }
  await ip.in({ name: fabric }).apply(fabricBatch);

  const uplinkBatch = (address: string) =>
    new IpBatch()
      .linkSet('lo', { up: true })
      .linkSet(HOST_UPLINK, { up: true })
      .addrAdd(`${address}/${plan.prefixLength}`, HOST_UPLINK);
  // Like real hosts, virtual hosts have a default route: the outside world is their gateway.
  const hostBatch = (address: string) =>
    uplinkBatch(address).routeReplace('default', { via: plan.outsideIp, dev: HOST_UPLINK });
  const hosts: HostDescription[] = [];
  for (const [i, host] of hostNames.entries()) {
    const netns = names.hostNetns(prefix, host);
    const underlayIp = plan.hostIp(i);
    await ip.in({ name: netns }).apply(hostBatch(underlayIp));
    // Hosts route for their containers, as real hosts would.
    await runner.run({
      argv: ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'],
      netns: { name: netns },
    });
    hosts.push({ name: host, netns, netnsPath: names.netnsPath(netns), underlayIp, uplink: HOST_UPLINK, daemons: {} });
  }
  await ip.in({ name: outside }).apply(uplinkBatch(plan.outsideIp));

  const etcd = await EtcdServer.start({
    dir: join(names.stateDir(prefix), 'etcd'),
    netns: { name: fabric },
    listenAddress: plan.controlIp,
    detached: true,
  });
  state.etcd = etcd.state();
  writeState(prefix, state);
  log.debug({ pid: etcd.pid }, 'etcd started');

  const description: ClusterDescription = {
    prefix,
    stateDir: names.stateDir(prefix),
    underlay: { cidr: plan.cidr, mtu },
    fabric: { netns: fabric, bridge: FABRIC_BRIDGE, controlIp: plan.controlIp },
    hosts,
    outside: { netns: outside, netnsPath: names.netnsPath(outside), address: plan.outsideIp },
    etcd: { endpoints: etcd.endpoints, underlayEndpoints: etcd.networkEndpoints },
    adminToken: randomBytes(24).toString('base64url'),
  };
  state.description = description;
  if ((opts.with ?? []).includes('netd')) {
    description.cni = await startNetdOnHosts(description, deps, state);
  }
  return description;
}

const EXTERNAL_POOL = { name: 'external', cidr: '100.64.0.0/16' };

/**
 * Installs the netd CNI plugin for this cluster, creates the external (eth0) pool, and starts one
 * netd per host in its namespace. Each host's description then names its daemon's socket.
 */
async function startNetdOnHosts(
  d: ClusterDescription,
  deps: ClusterDeps,
  state: ClusterState,
): Promise<NonNullable<ClusterDescription['cni']>> {
  const binDir = join(d.stateDir, 'cni-bin');
  const socketDir = join(d.stateDir, 'netd-sock');
  const logDir = join(d.stateDir, 'logs');
  mkdirSync(logDir, { recursive: true });
  installNetdPlugin(binDir, socketDir);
  for (const p of ['bridge', 'host-local', 'loopback', 'bandwidth']) {
    if (existsSync(`/usr/lib/cni/${p}`)) symlinkSync(`/usr/lib/cni/${p}`, join(binDir, p));
  }
  const store = new EtcdStore({ endpoints: d.etcd.endpoints });
  try {
    await new Ipam({ store, host: 'admin' }).createPool({ ...EXTERNAL_POOL, kind: 'external' });
  } finally {
    await store.close();
  }
  state.daemons = [];
  for (const h of d.hosts) {
    const log = join(logDir, `netd-${h.name}.log`);
    const handle = startDaemon({
      argv: [
        process.execPath,
        NETD_MAIN,
        '--host',
        h.name,
        '--underlay-ip',
        h.underlayIp,
        '--uplink',
        h.uplink,
        '--mtu',
        String(d.underlay.mtu),
        '--etcd',
        d.etcd.underlayEndpoints.join(','),
        '--lease-ttl',
        '5',
        '--cni-socket-dir',
        socketDir,
        '--external-pool',
        EXTERNAL_POOL.name,
        '--api-socket',
        join(socketDir, `api-${h.name}.sock`),
      ],
      netns: { name: h.netns },
      logFile: log,
      detached: true,
      env: { LOG_LEVEL: process.env.LOG_LEVEL ?? 'info', NETD_ADMIN_TOKEN: d.adminToken },
    });
    state.daemons.push({ component: 'netd', host: h.name, pid: handle.pid, startTime: handle.startTime });
    writeState(d.prefix, state);
    h.daemons.netd = `unix://${socketPathForNetns(statSync(h.netnsPath).ino, socketDir)}`;
    h.daemons.netdApi = `unix://${join(socketDir, `api-${h.name}.sock`)}`;
  }
  for (const h of d.hosts) {
    const log = join(logDir, `netd-${h.name}.log`);
    if (!(await eventually(() => existsSync(log) && readFileSync(log, 'utf8').includes('ready'), 20_000)))
      throw new AppError(ErrorCodes.INTERNAL, `netd on ${h.name} did not start; see ${log}`);
  }
  return { binDir, socketDir, externalPool: EXTERNAL_POOL.name, externalCidr: EXTERNAL_POOL.cidr };
}

/**
 * Removes everything cluster P made, from whatever state it is in: processes by recorded PID (and
 * start time), then every `tn-P-*` namespace (which takes its links with it), then the state dir.
 * Safe to run twice and after a crash.
 */
export async function teardownCluster(prefix: string, deps: ClusterDeps): Promise<void> {
  checkPrefix(prefix);
  const state = readState(prefix);
  for (const daemon of state?.daemons ?? []) await stopDaemon(daemon, 10_000);
  if (state?.etcd) await stopDaemon(state.etcd, 10_000);
  const ip = new IpClient(deps.runner);
  // One forced batch: it keeps going past a namespace that vanished meanwhile.
  await ip.deleteNetns(await clusterNamespaces(prefix));
  const left = await clusterNamespaces(prefix);
  for (const n of left) {
    await deps.runner.run({ argv: ['ip', 'netns', 'del', n] }).catch(() => undefined);
  }
  rmSync(names.stateDir(prefix), { recursive: true, force: true });
}

/** Namespaces named `tn-P-*` (container namespaces included). */
export async function clusterNamespaces(prefix: string): Promise<string[]> {
  const stem = names.clusterNetnsStem(prefix);
  try {
    return readdirSync(NETNS_DIR).filter((n) => n.startsWith(stem));
  } catch {
    return [];
  }
}

function statePath(prefix: string): string {
  return join(names.stateDir(prefix), 'cluster.json');
}

function writeState(prefix: string, state: ClusterState): void {
  writeFileSync(statePath(prefix), JSON.stringify(state, null, 2), { mode: 0o600 });
}

export function readState(prefix: string): ClusterState | undefined {
  try {
    return JSON.parse(readFileSync(statePath(prefix), 'utf8')) as ClusterState;
  } catch {
    return undefined;
  }
}
