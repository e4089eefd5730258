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
import { killDaemon, startDaemon, stopDaemon, waitForExit } from '../sys/process.js';
import { EtcdStore } from '../store/etcd.js';
import { Ipam } from '../ipam/allocator.js';
import { installNetdPlugin } from '../netd/install-cni.js';
import { socketPathForNetns } from '../netd/cni/server.js';
import { EtcdServer, type EtcdServerState } from './etcd.js';
import { etcdFlags, launchEtcdCluster, type ClusterEtcd } from './etcd-cluster.js';
import { createEtcdPki } from './pki.js';
import { checkPrefix, names, FABRIC_BRIDGE, HOST_UPLINK, NETNS_DIR } from './names.js';
import { underlayPlan, MAX_HOSTS, MAX_ETCD_MEMBERS } from './addressing.js';
import { eventually } from './testing.js';
import { HOST_TRUNK, TRUNK_BRIDGE, startHostOvs } from './ovs.js';
import { EthtoolClient } from '../sys/ethtool.js';

/**
 * A virtual multi-host cluster made of network namespaces:
 *
 *   tn-P-fab   bridge "fabric" (control address .1, etcd member m1 listens there; mN on .N)
 *     ├── veth ── tn-P-h1  "uplink" 10.77.0.11/24, fd00:10:77::11/64
 *     ├── veth ── tn-P-h2  "uplink" 10.77.0.12/24, fd00:10:77::12/64
 *     └── veth ── tn-P-out "uplink" 10.77.0.254/24, fd00:10:77::254/64  (the outside world)
 *   with `vlan`: bridge "trunks" (802.1Q frames pass as they are)
 *     ├── veth ── tn-P-h1  "trunk" (on h1's Open vSwitch: ovsdb-server + ovs-vswitchd in tn-P-h1)
 *     └── veth ── tn-P-h2  "trunk"
 *
 * Nothing is created in the root namespace. All state needed to tear the cluster down is written to
 * /run/test-netns/P/cluster.json before anything is created, so `down` works after a crash at any point.
 * etcd (TLS, client certificates, RBAC: see etcd-cluster.ts) keeps its data on disk under
 * /var/lib/test-netns/P, which `down` removes too.
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
  /** etcd members, each on its own fabric address (default 1). */
  etcdMembers?: number;
  /** A VLAN trunk per host into a fabric segment of its own, and Open vSwitch on every host (vlan mode). */
  vlan?: boolean;
}

export interface HostDescription {
  name: string;
  netns: string;
  netnsPath: string;
  underlayIp: string;
  /** The host's IPv6 address on the same segment (IPv6 routed VPCs route between hosts by it). */
  underlayIp6: string;
  uplink: string;
  /** URLs of the project's daemons running on this host, by component. */
  daemons: Record<string, string>;
  /** With `vlan`: the host's trunk and its Open vSwitch database socket. */
  vlan?: { trunk: string; ovsDb: string };
}

export interface ClusterDescription {
  prefix: string;
  stateDir: string;
  underlay: { cidr: string; cidr6: string; mtu: number };
  fabric: { netns: string; bridge: string; controlIp: string };
  hosts: HostDescription[];
  outside: { netns: string; netnsPath: string; address: string; address6: string };
  /** `new EtcdStore(d.etcd.client)` from here; `etcdFlags(d)` for a daemon on a host. */
  etcd: ClusterEtcd;
  adminToken: string;
  /** With netd: where its CNI plugin is installed, and its external (eth0) pool. */
  cni?: { binDir: string; socketDir: string; externalPool: string; externalCidr: string };
}

/** What `down` needs, persisted as soon as it is known. */
interface ClusterState {
  status: 'creating' | 'up';
  description?: ClusterDescription;
  etcdMembers?: EtcdServerState[];
  /** Component daemons (and the hosts' Open vSwitch) started on the hosts, ended by PID at teardown. */
  daemons?: Array<{ component: Component | 'ovs'; host: string; pid: number; startTime: string }>;
}

export interface ClusterDeps {
  runner: CommandRunner;
  logger?: Logger;
}

export class VirtualCluster {
  private constructor(
    readonly description: ClusterDescription,
    private readonly deps: ClusterDeps,
    private readonly etcdStates: EtcdServerState[],
  ) {}

  static async up(opts: ClusterOptions, deps: ClusterDeps): Promise<VirtualCluster> {
    const prefix = checkPrefix(opts.prefix);
    validateOptions(opts);
    const log = (deps.logger ?? silentLogger()).child({ component: 'test-netns', prefix });
    const stateDir = names.stateDir(prefix);
    if (existsSync(stateDir) || existsSync(names.dataDir(prefix)) || (await clusterNamespaces(prefix)).length > 0) {
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
      return new VirtualCluster(description, deps, [...(state.etcdMembers ?? [])]);
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
    return new VirtualCluster(state.description, deps, state.etcdMembers ?? []);
  }

  get prefix(): string {
    return this.description.prefix;
  }

  host(name: string): HostDescription {
    const host = this.description.hosts.find((h) => h.name === name);
    if (!host) throw new AppError(ErrorCodes.NOT_FOUND, `no host "${name}" in cluster ${this.prefix}`);
    return host;
  }

  /** The etcd server process of a one-member cluster, for tests that stop or restart it. */
  etcdServer(): EtcdServer {
    if (this.etcdStates.length !== 1)
      throw new AppError(
        ErrorCodes.INVALID_INPUT,
        `etcdServer() is for a one-member etcd; this cluster has ${this.etcdStates.length}: use etcdMember(i)`,
      );
    return this.etcdMember(0);
  }

  /** etcd member i (0-based; named m<i+1>), to kill or restart it like a host. */
  etcdMember(index: number): EtcdServer {
    const state = this.etcdStates[index];
    if (!state)
      throw new AppError(ErrorCodes.NOT_FOUND, `no etcd member ${index} (cluster has ${this.etcdStates.length})`);
    // A restart makes a new process: cluster.json must name it, or teardown would miss it.
    return EtcdServer.attach(state, (relaunched) => {
      this.etcdStates[index] = relaunched;
      const saved = readState(this.prefix);
      if (saved?.etcdMembers) {
        saved.etcdMembers[index] = relaunched;
        writeState(this.prefix, saved);
      }
    });
  }

  /** Stops a host's Open vSwitch (a cluster made with `vlan`): its database stays on disk. */
  async stopOvs(host: string): Promise<void> {
    const state = readState(this.prefix);
    const ovs = (state?.daemons ?? []).filter((d) => d.component === 'ovs' && d.host === host);
    for (const d of ovs.reverse()) await stopDaemon(d, 5_000);
    if (state?.daemons) {
      state.daemons = state.daemons.filter((d) => !(d.component === 'ovs' && d.host === host));
      writeState(this.prefix, state);
    }
  }

  /** Starts a host's Open vSwitch again on its database (after stopOvs). */
  async startOvs(host: string): Promise<void> {
    const h = this.host(host);
    await startHostOvs(this.deps.runner, {
      dir: join(this.description.stateDir, `ovs-${h.name}`),
      netns: h.netns,
      onStarted: (p) => {
        const state = readState(this.prefix);
        if (!state) return;
        (state.daemons ??= []).push({ component: 'ovs', host: h.name, pid: p.pid, startTime: p.startTime });
        writeState(this.prefix, state);
      },
    });
  }

  etcdMembers(): EtcdServer[] {
    return this.etcdStates.map((_, i) => this.etcdMember(i));
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
  const members = opts.etcdMembers ?? 1;
  if (!Number.isInteger(members) || members < 1 || members > MAX_ETCD_MEMBERS)
    throw invalidInput(`--etcd-members must be an integer from 1 to ${MAX_ETCD_MEMBERS}`, { etcdMembers: members });
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
  const etcdIps = Array.from({ length: opts.etcdMembers ?? 1 }, (_, i) => plan.etcdIp(i));
  // Certificates are made while the namespaces are (openssl is a few processes; hide their cost).
  const stateDir = names.stateDir(prefix);
  const pki = createEtcdPki(runner, {
    dir: join(stateDir, 'pki'),
    name: `test-netns ${prefix}`,
    serverIps: etcdIps,
    clients: ['root', 'netd'],
  });
  pki.catch(() => undefined); // awaited below; not an unhandled rejection meanwhile
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
    .linkSet(FABRIC_BRIDGE, { up: true });
  for (const ip of etcdIps) fabricBatch.addrAdd(`${ip}/${plan.prefixLength}`, FABRIC_BRIDGE);
  for (const e of edges) {
    fabricBatch
      .linkAddVeth(e.port, HOST_UPLINK, { peerNetns: e.netns, mtu })
      .linkSet(e.port, { master: FABRIC_BRIDGE, up: true });
  }
  if (opts.vlan) {
    fabricBatch.linkAddBridge(TRUNK_BRIDGE, { mtu }).linkSet(TRUNK_BRIDGE, { up: true });
    for (const h of hostNames) {
      fabricBatch
        .linkAddVeth(`t-${h}`, HOST_TRUNK, { peerNetns: names.hostNetns(prefix, h), mtu })
        .linkSet(`t-${h}`, { master: TRUNK_BRIDGE, up: true });
    }
  }
  await ip.in({ name: fabric }).apply(fabricBatch);

  // etcd starts (a few hundred ms) while the hosts are wired; its PIDs are on disk before that.
  const etcdLaunch = await launchEtcdCluster(runner, {
    members: etcdIps.length,
    dir: stateDir,
    dataRoot: names.dataDir(prefix),
    name: `test-netns ${prefix}`,
    netns: { name: fabric },
    addresses: etcdIps,
    pki: await pki,
    detached: true,
    onLaunched: (members) => {
      state.etcdMembers = members;
      writeState(prefix, state);
    },
  });

  const uplinkBatch = (address: string, address6: string) =>
    new IpBatch()
      .linkSet('lo', { up: true })
      .linkSet(HOST_UPLINK, { up: true })
      .addrAdd(`${address}/${plan.prefixLength}`, HOST_UPLINK)
      .addrAdd(`${address6}/64`, HOST_UPLINK, { nodad: true });
  // Like real hosts, virtual hosts have a default route: the outside world is their gateway.
  const hostBatch = (address: string, address6: string) =>
    uplinkBatch(address, address6).routeReplace('default', { via: plan.outsideIp, dev: HOST_UPLINK });
  const hosts: HostDescription[] = [];
  for (const [i, host] of hostNames.entries()) {
    const netns = names.hostNetns(prefix, host);
    const underlayIp = plan.hostIp(i);
    const underlayIp6 = plan.hostIp6(i);
    await ip.in({ name: netns }).apply(hostBatch(underlayIp, underlayIp6));
    // Hosts route for their containers, as real hosts would.
    await runner.run({
      argv: ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'],
      netns: { name: netns },
    });
    hosts.push({
      name: host,
      netns,
      netnsPath: names.netnsPath(netns),
      underlayIp,
      underlayIp6,
      uplink: HOST_UPLINK,
      daemons: {},
    });
  }
  if (opts.vlan) {
    state.daemons ??= [];
    for (const h of hosts) {
      await ip.in({ name: h.netns }).apply(new IpBatch().linkSet(HOST_TRUNK, { up: true }));
      // The fabric end computes its own checksums too (DESIGN.md: both ends of a veth OVS reads).
      await new EthtoolClient(runner, { name: fabric }).txChecksumOff(`t-${h.name}`);
      const ovs = await startHostOvs(runner, {
        dir: join(stateDir, `ovs-${h.name}`),
        netns: h.netns,
        onStarted: (p) => {
          state.daemons!.push({ component: 'ovs', host: h.name, pid: p.pid, startTime: p.startTime });
          writeState(prefix, state);
        },
      });
      h.vlan = { trunk: HOST_TRUNK, ovsDb: ovs.dbSocket };
    }
  }
  await ip.in({ name: outside }).apply(uplinkBatch(plan.outsideIp, plan.outsideIp6));

  const etcd = await etcdLaunch.ready();
  log.debug({ pids: etcd.servers.map((s) => s.pid) }, 'etcd started');

  const description: ClusterDescription = {
    prefix,
    stateDir: names.stateDir(prefix),
    underlay: { cidr: plan.cidr, cidr6: plan.cidr6, mtu },
    fabric: { netns: fabric, bridge: FABRIC_BRIDGE, controlIp: plan.controlIp },
    hosts,
    outside: {
      netns: outside,
      netnsPath: names.netnsPath(outside),
      address: plan.outsideIp,
      address6: plan.outsideIp6,
    },
    etcd: etcd.description,
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
  const store = new EtcdStore(d.etcd.client);
  try {
    await new Ipam({ store, host: 'admin' }).createPool({ ...EXTERNAL_POOL, kind: 'external' });
  } finally {
    await store.close();
  }
  state.daemons ??= [];
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
        '--underlay-ip6',
        h.underlayIp6,
        '--uplink',
        h.uplink,
        '--mtu',
        String(d.underlay.mtu),
        ...etcdFlags(d),
        '--lease-ttl',
        '5',
        '--cni-socket-dir',
        socketDir,
        '--external-pool',
        EXTERNAL_POOL.name,
        '--api-socket',
        join(socketDir, `api-${h.name}.sock`),
        ...(h.vlan ? ['--vlan-trunk', h.vlan.trunk, '--ovs-db', h.vlan.ovsDb] : []),
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
    if (
      !(await eventually(() => existsSync(log) && readFileSync(log, 'utf8').includes(`netd ${h.name} ready`), 20_000))
    )
      throw new AppError(ErrorCodes.INTERNAL, `netd on ${h.name} did not start; see ${log}`);
  }
  return { binDir, socketDir, externalPool: EXTERNAL_POOL.name, externalCidr: EXTERNAL_POOL.cidr };
}

/**
 * Removes everything cluster P made, from whatever state it is in: processes by recorded PID (and
 * start time), then every `tn-P-*` namespace (which takes its links with it), then the state dir
 * and etcd's data dir. Safe to run twice and after a crash.
 */
export async function teardownCluster(prefix: string, deps: ClusterDeps): Promise<void> {
  checkPrefix(prefix);
  const state = readState(prefix);
  // Newest first: netd before the Open vSwitch it uses, ovs-vswitchd before its database.
  for (const daemon of [...(state?.daemons ?? [])].reverse()) await stopDaemon(daemon, 10_000);
  // etcd's data goes next, so nothing is lost by a SIGKILL; a graceful stop of several members
  // costs seconds (each hands leadership on, or waits for peers that are stopping too).
  const members = state?.etcdMembers ?? [];
  for (const m of members) killDaemon(m);
  await Promise.all(members.map((m) => waitForExit(m, 10_000)));
  const ip = new IpClient(deps.runner);
  // One forced batch: it keeps going past a namespace that vanished meanwhile.
  await ip.deleteNetns(await clusterNamespaces(prefix));
  const left = await clusterNamespaces(prefix);
  for (const n of left) {
    await deps.runner.run({ argv: ['ip', 'netns', 'del', n] }).catch(() => undefined);
  }
  rmSync(names.stateDir(prefix), { recursive: true, force: true });
  rmSync(names.dataDir(prefix), { recursive: true, force: true });
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
