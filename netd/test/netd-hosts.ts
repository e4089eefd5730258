import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ClusterSession } from '../../test-netns/harness.js';
import { etcdFlags } from '../../test-netns/etcd-cluster.js';
import { eventually } from '../../test-netns/testing.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../../sys/process.js';
import { isCommandError, type CommandRunner } from '../../sys/runner.js';
import { IpClient } from '../../sys/ip.js';
import { NftClient } from '../../sys/nft.js';
import { GUARD_TABLE } from '../source-guard.js';
import { ROUTED_PROTO } from '../modes/routed.js';
import { OvsClient } from '../../sys/ovs.js';
import { DEFAULT_OVS_BRIDGE } from '../vlan-host.js';
import { OWNED_LINK_RE } from '../names.js';
import { EtcdStore } from '../../store/etcd.js';
import type { Store } from '../../store/types.js';
import { Ipam } from '../../ipam/allocator.js';
import { installNetdPlugin } from '../install-cni.js';
import { modelKeys } from '../../tenancy/keys.js';
import type { DirectDeps as AttachDeps } from './direct-attach.js';
import type { HostRecord, VpcRecord } from '../../tenancy/records.js';

/** Starts netd on the hosts of a virtual cluster, as separate processes in the hosts' namespaces. */

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.js');

export interface NetdHost {
  host: string;
  handle: DaemonHandle;
  log: string;
}

export interface NetdOptions {
  dir: string;
  socketDir: string;
  leaseTtl?: number;
  externalPool?: string;
  externalMode?: 'nat' | 'routed';
  extraArgs?: string[];
}

export function startNetd(s: ClusterSession, host: string, opts: NetdOptions): NetdHost {
  const h = s.cluster.host(host);
  const log = join(opts.dir, `netd-${host}-${Date.now()}.log`);
  const handle = startDaemon({
    argv: [
      process.execPath,
      MAIN,
      '--host',
      h.name,
      '--underlay-ip',
      h.underlayIp,
      '--underlay-ip6',
      h.underlayIp6,
      '--uplink',
      h.uplink,
      ...etcdFlags(s.cluster.description),
      '--lease-ttl',
      String(opts.leaseTtl ?? 2),
      '--cni-socket-dir',
      opts.socketDir,
      ...(opts.externalPool ? ['--external-pool', opts.externalPool] : []),
      ...(opts.externalMode ? ['--external-mode', opts.externalMode] : []),
      // A host with a trunk (a cluster made with `vlan`) serves vlan VPCs.
      ...(h.vlan ? ['--vlan-trunk', h.vlan.trunk, '--ovs-db', h.vlan.ovsDb] : []),
      ...(opts.extraArgs ?? []),
    ],
    netns: { name: h.netns },
    logFile: log,
    // NETD_TEST_LOG_LEVEL=debug shows every command a daemon ran, when a test needs explaining.
    env: { LOG_LEVEL: process.env.NETD_TEST_LOG_LEVEL ?? 'warn' },
  });
  return { host, handle, log };
}

export async function waitReady(n: NetdHost, timeoutMs = 15_000): Promise<boolean> {
  return eventually(async () => readFileSync(n.log, 'utf8').includes(`netd ${n.host} ready`), timeoutMs);
}

export interface PluginAnswer {
  ok: boolean;
  out: Record<string, unknown>;
  ms: number;
}

/** Invokes an installed `netd` plugin in a host's netns, as a runtime on that host would. */
export async function invokePlugin(
  s: ClusterSession,
  binDir: string,
  host: string,
  command: string,
  config: object | string,
  cniEnv: Record<string, string>,
): Promise<PluginAnswer> {
  const started = performance.now();
  try {
    const { stdout } = await s.runner.run({
      argv: [join(binDir, 'netd')],
      stdin: typeof config === 'string' ? config : JSON.stringify(config),
      netns: { name: s.cluster.host(host).netns },
      env: { CNI_COMMAND: command, CNI_PATH: binDir, ...cniEnv },
      timeoutMs: 60_000,
    });
    return {
      ok: true,
      out: stdout.trim() ? (JSON.parse(stdout) as Record<string, unknown>) : {},
      ms: performance.now() - started,
    };
  } catch (err) {
    if (!isCommandError(err)) throw err;
    // A failure must still be a CNI error object on stdout; anything else is kept for the test to see.
    let out: Record<string, unknown>;
    try {
      out = JSON.parse(err.stdout || '{}') as Record<string, unknown>;
    } catch {
      out = { unparsable: err.stdout, stderr: err.stderr };
    }
    return { ok: false, out, ms: performance.now() - started };
  }
}

/** Whether a host namespace is free of netd's routes and rules (routed mode's, `proto 78`). */
export async function noNetdRouting(runner: CommandRunner, netns: string): Promise<boolean> {
  const ip = new IpClient(runner, { name: netns });
  for (const family of [4, 6] as const) {
    if ((await ip.routesByProto(ROUTED_PROTO, family)).length > 0) return false;
    if ((await ip.rules(family)).some((r) => r.protocol === String(ROUTED_PROTO))) return false;
  }
  // The IPv6 source guard may stay (an empty table), but guards no port that is gone.
  const guard = await new NftClient(runner, { name: netns }).table('ip6', GUARD_TABLE);
  return (guard?.sets ?? []).every((set) => (set.elem ?? []).length === 0);
}

/** A vlan VPC's VLAN fields (VLAN `id` on physnet0) for a record of `mode`; none for the other modes. */
export function vlanOf(mode: string, id: number): Partial<VpcRecord> {
  return mode === 'vlan' ? { vlan: id, physnet: 'physnet0' } : {};
}

/** netd's ports on a host's Open vSwitch bridge (a cluster made with `vlan`), with their VLANs. */
export async function netdOvsPorts(s: ClusterSession, host: string): Promise<Map<string, number | undefined>> {
  const ovs = new OvsClient(s.runner, { dbSocket: s.cluster.host(host).vlan!.ovsDb });
  const ports = await ovs.bridgePorts(DEFAULT_OVS_BRIDGE);
  // Named by the container port behind each: on the userspace datapath OVS has its shaper's peer.
  return new Map([...ports].filter(([p]) => OWNED_LINK_RE.test(p)).map(([p, tag]) => [p.replace(/^no/, 'ni'), tag]));
}

/** Puts each VPC's record and creates its address pool. */
export async function putVpcs(store: Store, vpcs: readonly VpcRecord[]): Promise<void> {
  const ipam = new Ipam({ store, host: 'admin' });
  for (const v of vpcs) {
    await store.put(modelKeys.vpc(v.name), JSON.stringify(v));
    await ipam.createPool({ name: v.name, cidr: v.cidr, kind: 'vpc' });
  }
}

/** What a daemon of the testbed can be given beyond what the testbed sets itself. */
export type NetdDaemonOptions = Omit<NetdOptions, 'dir' | 'socketDir' | 'externalPool'>;

export interface NetdTestbedOptions {
  /** VPC records to put, each with its address pool. */
  vpcs?: readonly VpcRecord[];
  /** An external (eth0) pool to create; every daemon then gets `--external-pool`. */
  externalPool?: { name: string; cidr: string };
  /** netd on every host (true, the default), on none yet (false), or on these hosts. */
  start?: boolean | readonly string[];
  /** Daemon options: the same for every host, or chosen per host. */
  netd?: NetdDaemonOptions | ((host: string) => NetdDaemonOptions);
  /** Names the temporary directory (`netd-<label>-*`). */
  label?: string;
}

/** A cluster with netd's CNI plugin installed, VPCs and pools in etcd, and netd on its hosts. */
export interface NetdTestbed {
  s: ClusterSession;
  store: EtcdStore;
  /** The admin's ipam (pools). */
  ipam: Ipam;
  /** Temporary directory: logs, `bin` and `socketDir` live in it. */
  dir: string;
  /** The CNI bin directory holding the installed `netd` plugin. */
  bin: string;
  socketDir: string;
  /** The daemon last started on each host. */
  daemons: Map<string, NetdHost>;
  /**
   * Starts netd on these hosts (default: all) and waits until each is ready, asserting it
   * ("netd on hN ready"); throws with the log's tail when one is not. A host's previous daemon
   * must have been stopped.
   */
  start(hosts?: readonly string[], opts?: NetdDaemonOptions): Promise<NetdHost[]>;
  /** Gracefully stops every daemon the testbed started (before a residue check). */
  stopAll(): Promise<void>;
  /** Invokes the installed plugin in a host's namespace, as a runtime on that host would. */
  plugin(
    host: string,
    command: string,
    config: object | string,
    cniEnv?: Record<string, string>,
  ): Promise<PluginAnswer>;
  /** The host's record, as its netd registers it. */
  hostRecord(host: string): HostRecord;
  /** What attachInternal/detachInternal need to act as the host's CNI side, outside a daemon. */
  attachDeps(host: string): AttachDeps;
}

export interface TestbedTest {
  ok(value: unknown, message: string): unknown;
  teardown(fn: () => unknown): unknown;
}

/**
 * The setup netd's integration tests share. Registers its teardown on `t` (daemons stopped,
 * store closed, directory removed), which runs even when the test fails.
 */
export async function netdTestbed(
  t: TestbedTest,
  s: ClusterSession,
  opts: NetdTestbedOptions = {},
): Promise<NetdTestbed> {
  const dir = mkdtempSync(join(tmpdir(), `netd-${opts.label ?? 'test'}-`));
  const started: NetdHost[] = [];
  const d = s.cluster.description;
  const store = new EtcdStore(d.etcd.client);
  t.teardown(async () => {
    for (const n of started) await stopDaemon(n.handle);
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const socketDir = join(dir, 'sock');
  const bin = join(dir, 'bin');
  installNetdPlugin(bin, socketDir);
  const ipam = new Ipam({ store, host: 'admin' });
  await putVpcs(store, opts.vpcs ?? []);
  if (opts.externalPool) await ipam.createPool({ ...opts.externalPool, kind: 'external' });
  const daemons = new Map<string, NetdHost>();
  const optionsFor = (host: string): NetdDaemonOptions =>
    typeof opts.netd === 'function' ? opts.netd(host) : (opts.netd ?? {});

  const hostRecord = (host: string): HostRecord => {
    const h = s.cluster.host(host);
    return {
      name: h.name,
      underlayIp: h.underlayIp,
      underlayIp6: h.underlayIp6,
      uplink: h.uplink,
      underlayMtu: d.underlay.mtu,
    };
  };
  const testbed: NetdTestbed = {
    s,
    store,
    ipam,
    dir,
    bin,
    socketDir,
    daemons,
    async start(hosts = d.hosts.map((h) => h.name), extra) {
      const now = hosts.map((host) => {
        const n = startNetd(s, host, {
          ...optionsFor(host),
          ...extra,
          dir,
          socketDir,
          externalPool: opts.externalPool?.name,
        });
        started.push(n);
        daemons.set(host, n);
        return n;
      });
      for (const n of now) {
        const ready = await waitReady(n);
        t.ok(ready, `netd on ${n.host} ready`);
        if (!ready) throw new Error(`netd on ${n.host} did not start: ${readFileSync(n.log, 'utf8').slice(-2000)}`);
      }
      return now;
    },
    async stopAll() {
      for (const n of started) await stopDaemon(n.handle);
    },
    plugin: (host, command, config, cniEnv = {}) => invokePlugin(s, bin, host, command, config, cniEnv),
    hostRecord,
    attachDeps: (host) => ({
      store,
      ipam: new Ipam({ store, host }),
      runner: s.runner,
      host: hostRecord(host),
      hostNetns: { name: s.cluster.host(host).netns },
      ...(s.cluster.host(host).vlan && { vlan: s.cluster.host(host).vlan }),
    }),
  };
  const start = opts.start ?? true;
  if (start !== false) await testbed.start(start === true ? undefined : start);
  return testbed;
}
