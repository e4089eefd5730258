import { mkdtempSync, rmSync, symlinkSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { SpawnerRunner, type CommandRunner } from '../../sys/runner.js';
import { startDaemon, stopDaemon, processStartTime, type DaemonHandle } from '../../sys/process.js';
import { VirtualCluster, teardownCluster } from '../../test-netns/cluster.js';
import { uniqueSuffix } from '../../test-netns/testing.js';
import { EtcdStore } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { installNetdPlugin } from '../../netd/install-cni.js';
import { modelKeys } from '../../tenancy/keys.js';

/**
 * One virtual host running netd (a VPC `bench` and an external pool), with the netd plugin and the
 * reference plugins installed side by side, for the netd benchmarks. Plugins are invoked as a
 * runtime would: one process per call, in the host's namespace.
 */

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'netd', 'main.js');
export const REFERENCE_PLUGINS = ['bridge', 'host-local', 'bandwidth'] as const;

export interface CniCall {
  plugin: string;
  command: 'ADD' | 'DEL' | 'CHECK';
  config: object;
  containerId: string;
  ifname: string;
  netnsPath: string;
}

export class NetdBenchHost {
  cluster: VirtualCluster | undefined;
  dir = '';
  daemon: DaemonHandle | undefined;

  /**
   * Plugins are started through the posix_spawn helper, as a Go runtime starts them: Node's own
   * spawn would fork this harness for every call and load the CPU both sides share.
   */
  private readonly plugins = new SpawnerRunner();

  constructor(private readonly runner: CommandRunner) {}

  get netns(): string {
    return this.cluster!.host('h1').netns;
  }

  get binDir(): string {
    return join(this.dir, 'bin');
  }

  async setup(opts: { vpcCidr: string; externalCidr?: string }): Promise<void> {
    this.dir = mkdtempSync(join(tmpdir(), 'bench-netd-'));
    this.cluster = await VirtualCluster.up({ prefix: `bc${uniqueSuffix(2)}`, hosts: 1 }, { runner: this.runner });
    const d = this.cluster.description;
    const store = new EtcdStore({ endpoints: d.etcd.endpoints });
    try {
      await store.put(
        modelKeys.vpc('bench'),
        JSON.stringify({ name: 'bench', tenant: 't', mode: 'vxlan', cidr: opts.vpcCidr, vni: 4000 }),
      );
      const ipam = new Ipam({ store, host: 'admin' });
      await ipam.createPool({ name: 'bench', cidr: opts.vpcCidr, kind: 'vpc' });
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
        '--uplink',
        h.uplink,
        '--etcd',
        d.etcd.underlayEndpoints.join(','),
        '--cni-socket-dir',
        join(this.dir, 'sock'),
        ...(opts.externalCidr ? ['--external-pool', 'ext'] : []),
      ],
      netns: { name: h.netns },
      logFile: log,
      env: { LOG_LEVEL: 'warn' },
    });
    for (let i = 0; i < 300 && !readFileSync(log, 'utf8').includes('ready'); i++) await sleep(50);
    if (!readFileSync(log, 'utf8').includes('ready'))
      throw new Error(`netd did not start: ${readFileSync(log, 'utf8').slice(-2000)}`);
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
    if (this.daemon) await stopDaemon(this.daemon);
    if (this.cluster) await teardownCluster(this.cluster.prefix, { runner: this.runner });
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Waits until the machine is mostly idle (or `maxMs` passed): deleting hundreds of namespaces
 * leaves the kernel cleaning up in the background for seconds, which would slow whichever side
 * runs next.
 */
export async function waitQuiet(maxMs = 30_000, idleShare = 0.8): Promise<void> {
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
