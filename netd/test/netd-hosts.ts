import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ClusterSession } from '../../test-netns/harness.js';
import { etcdFlags } from '../../test-netns/etcd-cluster.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../../sys/process.js';
import { isCommandError } from '../../sys/runner.js';

/** Starts netd on every host of a virtual cluster, as separate processes in the hosts' namespaces. */

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', 'main.js');

export async function eventually(check: () => Promise<boolean>, timeoutMs: number, stepMs = 50): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await sleep(stepMs);
  }
  return false;
}

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
      '--uplink',
      h.uplink,
      ...etcdFlags(s.cluster.description),
      '--lease-ttl',
      String(opts.leaseTtl ?? 2),
      '--cni-socket-dir',
      opts.socketDir,
      ...(opts.externalPool ? ['--external-pool', opts.externalPool] : []),
      ...(opts.externalMode ? ['--external-mode', opts.externalMode] : []),
      ...(opts.extraArgs ?? []),
    ],
    netns: { name: h.netns },
    logFile: log,
    env: { LOG_LEVEL: 'warn' },
  });
  return { host, handle, log };
}

export async function waitReady(n: NetdHost, timeoutMs = 15_000): Promise<boolean> {
  return eventually(async () => readFileSync(n.log, 'utf8').includes('ready'), timeoutMs);
}

export async function startNetdEverywhere(s: ClusterSession, opts: NetdOptions): Promise<NetdHost[]> {
  const all = s.cluster.description.hosts.map((h) => startNetd(s, h.name, opts));
  for (const n of all) {
    if (!(await waitReady(n)))
      throw new Error(`netd on ${n.host} did not start: ${readFileSync(n.log, 'utf8').slice(-2000)}`);
  }
  return all;
}

export async function stopNetd(all: readonly NetdHost[]): Promise<void> {
  for (const n of all) await stopDaemon(n.handle);
}

/** Invokes an installed `netd` plugin in a host's netns, as a runtime on that host would. */
export async function invokePlugin(
  s: ClusterSession,
  binDir: string,
  host: string,
  command: string,
  config: object | string,
  cniEnv: Record<string, string>,
): Promise<{ ok: boolean; out: Record<string, unknown>; ms: number }> {
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
    if (isCommandError(err))
      return {
        ok: false,
        out: JSON.parse(err.stdout || '{}') as Record<string, unknown>,
        ms: performance.now() - started,
      };
    throw err;
  }
}
