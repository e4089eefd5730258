import { copyFileSync, existsSync, mkdtempSync, rmSync, symlinkSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpawnerRunner, type CommandRunner } from '../../sys/runner.js';
import { startDaemon, stopDaemon, processStartTime, type DaemonHandle } from '../../sys/process.js';
import type { EtcdStore } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { installNetdPlugin } from '../../netd/install-cni.js';
import { modelKeys } from '../../tenancy/keys.js';
import { BenchCluster, describeFilesystem, type EtcdMembers } from './bench-cluster.js';
import { parsePrometheus } from '../prometheus.js';

/**
 * One virtual host running netd (VPCs and an optional external pool), with the netd plugin and the
 * reference plugins installed side by side, for the netd benchmarks. Plugins are invoked as a
 * runtime would: one process per call, in the host's namespace. Everything the benchmarks need
 * from netd and test-netns goes through here (and bench-cluster.ts).
 */

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'netd', 'main.js');
export const REFERENCE_PLUGINS = ['bridge', 'ptp', 'host-local', 'bandwidth'] as const;

/** A Linux bridge takes at most 1023 ports (BR_MAX_PORTS); netd's VXLAN device is one of them. */
export const PORTS_PER_BRIDGE = 1000;

export interface CniCall {
  plugin: string;
  command: 'ADD' | 'DEL' | 'CHECK' | 'STATUS';
  config: object;
  containerId: string;
  ifname: string;
  netnsPath: string;
}

export interface VpcSpec {
  name: string;
  cidr: string;
  /** vxlan unless said. */
  mode?: 'vxlan' | 'routed' | 'vlan';
}

export interface NetdHostOptions {
  vpcs: VpcSpec[];
  externalCidr?: string;
  etcdMembers: EtcdMembers;
}

/** The figures netd's /metrics gives that the benchmarks use. */
export interface NetdCounters {
  reconciles: number;
  reconcileSeconds: number;
  /** CNI requests served by the daemon (by verb) and the time spent serving them. */
  cni: Record<string, { count: number; seconds: number }>;
}

export class NetdBenchHost {
  cluster: BenchCluster | undefined;
  dir = '';
  daemon: DaemonHandle | undefined;

  /**
   * Plugins are started through the posix_spawn helper, as a Go runtime starts them: Node's own
   * spawn would fork this harness for every call and load the CPU both sides share.
   */
  readonly plugins = new SpawnerRunner();

  constructor(private readonly runner: CommandRunner) {}

  get netns(): string {
    return this.cluster!.host('h1').netns;
  }

  get binDir(): string {
    return join(this.dir, 'bin');
  }

  private get apiSocket(): string {
    return join(this.dir, 'api.sock');
  }

  async setup(opts: NetdHostOptions): Promise<void> {
    this.dir = mkdtempSync(join(tmpdir(), 'bench-netd-'));
    const vlan = opts.vpcs.some((v) => v.mode === 'vlan');
    this.cluster = await BenchCluster.up({ prefix: 'bc', hosts: 1, etcdMembers: opts.etcdMembers, vlan }, this.runner);
    const store = this.cluster.openStore();
    try {
      const ipam = new Ipam({ store, host: 'admin' });
      for (const [i, vpc] of opts.vpcs.entries()) {
        await store.put(
          modelKeys.vpc(vpc.name),
          JSON.stringify({
            name: vpc.name,
            tenant: 't',
            mode: vpc.mode ?? 'vxlan',
            cidr: vpc.cidr,
            vni: 4000 + i,
            ...(vpc.mode === 'vlan' && { vlan: 100 + i, physnet: 'physnet0' }),
          }),
        );
        await ipam.createPool({ name: vpc.name, cidr: vpc.cidr, kind: 'vpc' });
      }
      if (opts.externalCidr) await ipam.createPool({ name: 'ext', cidr: opts.externalCidr, kind: 'external' });
    } finally {
      await store.close();
    }
    installNetdPlugin(this.binDir, join(this.dir, 'sock'));
    for (const p of REFERENCE_PLUGINS) symlinkSync(join('/usr/lib/cni', p), join(this.binDir, p));
    const h = this.cluster.host('h1');
    const log = join(this.dir, 'netd.log');
    this.daemon = startDaemon({
      argv: [
        process.execPath,
        MAIN,
        '--host',
        'h1',
        '--underlay-ip',
        h.underlayIp,
        '--underlay-ip6',
        h.underlayIp6,
        '--uplink',
        h.uplink,
        ...this.cluster.etcdFlags(),
        '--cni-socket-dir',
        join(this.dir, 'sock'),
        // For /metrics (reconciles, time spent serving CNI calls); scraped only between phases.
        '--api-socket',
        this.apiSocket,
        ...(opts.externalCidr ? ['--external-pool', 'ext'] : []),
        ...(h.vlan ? ['--vlan-trunk', h.vlan.trunk, '--ovs-db', h.vlan.ovsDb] : []),
      ],
      netns: { name: h.netns },
      logFile: log,
      // BENCH_NETD_LOG_LEVEL=debug shows the batches netd sends, to see where a call's time goes.
      env: {
        LOG_LEVEL: process.env.BENCH_NETD_LOG_LEVEL ?? 'warn',
        NETD_ADMIN_TOKEN: randomBytes(24).toString('base64url'),
      },
    });
    for (let i = 0; i < 300 && !readFileSync(log, 'utf8').includes(`netd ${h.name} ready`); i++) await sleep(50);
    if (!readFileSync(log, 'utf8').includes(`netd ${h.name} ready`))
      throw new Error(`netd did not start: ${readFileSync(log, 'utf8').slice(-2000)}`);
  }

  /** Where each side keeps its state, for the report. */
  describeStore(): string {
    return (
      `netd: ${this.cluster!.describe()}. ` +
      `Reference: host-local files on ${describeFilesystem(this.dir)}, no fsync; no cluster state.`
    );
  }

  openStore(): EtcdStore {
    return this.cluster!.openStore();
  }

  /** Runs one plugin call; returns its stdout (parsed) and how long it took. */
  async invoke(call: CniCall): Promise<{ ms: number; result: Record<string, unknown> }> {
    const started = performance.now();
    const { stdout } = await this.plugins.run({
      argv: [join(this.binDir, call.plugin)],
      stdin: JSON.stringify(call.config),
      netns: { name: this.netns },
      env: {
        CNI_COMMAND: call.command,
        CNI_CONTAINERID: call.containerId,
        CNI_NETNS: call.netnsPath,
        CNI_IFNAME: call.ifname,
        CNI_PATH: this.binDir,
      },
      timeoutMs: 120_000,
    });
    return {
      ms: performance.now() - started,
      result: stdout.trim() ? (JSON.parse(stdout) as Record<string, unknown>) : {},
    };
  }

  /**
   * Runs a network config list the way libcni does: ADD through the plugins in order, each given
   * the previous result; DEL in reverse order. Capabilities go in as runtimeConfig.
   */
  async invokeList(
    list: { cniVersion: string; name: string; plugins: Array<Record<string, unknown>> },
    command: 'ADD' | 'DEL',
    at: Omit<CniCall, 'plugin' | 'command' | 'config'>,
    runtimeConfig: Record<string, unknown> = {},
  ): Promise<number> {
    const started = performance.now();
    const plugins = command === 'ADD' ? list.plugins : [...list.plugins].reverse();
    let prevResult: Record<string, unknown> | undefined;
    for (const p of plugins) {
      const caps = (p.capabilities ?? {}) as Record<string, boolean>;
      const rc = Object.fromEntries(Object.entries(runtimeConfig).filter(([k]) => caps[k]));
      const config = {
        cniVersion: list.cniVersion,
        name: list.name,
        ...p,
        ...(Object.keys(rc).length && { runtimeConfig: rc }),
        ...(prevResult && { prevResult }),
      };
      const { result } = await this.invoke({ ...at, plugin: String(p.type), command, config });
      if (command === 'ADD') prevResult = result;
    }
    return performance.now() - started;
  }

  /** netd's counters from its /metrics (over its API socket). */
  async counters(): Promise<NetdCounters> {
    const text = await new Promise<string>((resolve, reject) => {
      const req = request({ socketPath: this.apiSocket, path: '/metrics', method: 'GET' }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end();
    });
    const samples = parsePrometheus(text);
    const sum = (name: string, match: Record<string, string> = {}) =>
      samples
        .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
        .reduce((a, s) => a + s.value, 0);
    const cni: NetdCounters['cni'] = {};
    for (const verb of ['ADD', 'DEL', 'STATUS', 'CHECK']) {
      cni[verb] = {
        count: sum('netd_cni_request_duration_seconds_count', { verb }),
        seconds: sum('netd_cni_request_duration_seconds_sum', { verb }),
      };
    }
    return {
      reconciles: sum('netd_reconciles_total'),
      reconcileSeconds: sum('netd_reconcile_duration_seconds_sum'),
      cni,
    };
  }

  /** Address blocks this host holds (each claim is an extra etcd transaction on some ADD). */
  async blocksHeld(): Promise<number> {
    const store = this.openStore();
    try {
      return (await store.list('/netd/v1/ipam/affinity/h1/')).kvs.length;
    } finally {
      await store.close();
    }
  }

  /** netd's resident memory, in KiB. */
  rssKb(): number {
    if (!this.daemon || processStartTime(this.daemon.pid) === undefined) return 0;
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${this.daemon.pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  }

  /** netd's CPU time so far (user + system), in seconds. */
  cpuSeconds(): number {
    if (!this.daemon) return 0;
    const fields = readFileSync(`/proc/${this.daemon.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  }

  async teardown(): Promise<void> {
    this.plugins.close();
    try {
      if (this.daemon) await stopDaemon(this.daemon);
      if (this.cluster) await this.cluster.teardown();
    } finally {
      // A log asked for (BENCH_NETD_LOG_LEVEL) outlives the run; the rest of the directory does not.
      const log = join(this.dir, 'netd.log');
      if (this.dir && process.env.BENCH_NETD_LOG_LEVEL && existsSync(log))
        copyFileSync(log, join(tmpdir(), 'bench-netd-last.log'));
      if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    }
  }
}

/** Counters accumulated between two readings. */
export function counterDelta(before: NetdCounters, after: NetdCounters): NetdCounters {
  const cni: NetdCounters['cni'] = {};
  for (const verb of Object.keys(after.cni)) {
    cni[verb] = {
      count: after.cni[verb]!.count - (before.cni[verb]?.count ?? 0),
      seconds: after.cni[verb]!.seconds - (before.cni[verb]?.seconds ?? 0),
    };
  }
  return {
    reconciles: after.reconciles - before.reconciles,
    reconcileSeconds: after.reconcileSeconds - before.reconcileSeconds,
    cni,
  };
}

/**
 * Waits until the machine is mostly idle (or `maxMs` passed): deleting hundreds of namespaces
 * leaves the kernel cleaning up in the background for seconds, which would slow whichever side
 * runs next. (BENCH_QUIET_MAX_MS caps the wait on a machine that is never idle.)
 */
export async function waitQuiet(
  maxMs = Number(process.env.BENCH_QUIET_MAX_MS ?? 30_000),
  idleShare = 0.8,
): Promise<void> {
  const read = () => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3]! + f[4]!;
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  const deadline = Date.now() + maxMs;
  while (Date.now() < deadline) {
    const a = read();
    await sleep(500);
    const b = read();
    if (b.total > a.total && (b.idle - a.idle) / (b.total - a.total) >= idleShare) return;
  }
}
