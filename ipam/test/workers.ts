import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDaemon, type DaemonHandle } from '../../sys/process.js';
import type { HostDescription } from '../../test-netns/cluster.js';
import type { EtcdClientFiles } from '../../test-netns/etcd-cluster.js';

/** Runs alloc-worker processes on virtual hosts and reads back what they acknowledged. */

const WORKER = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'alloc-worker.js');

export interface WorkerRun {
  handle: DaemonHandle;
  out: string;
  log: string;
}

export function startWorker(opts: {
  host: HostDescription;
  mode: 'allocate' | 'release' | 'allocate-shared';
  /** How the worker reaches etcd from its host: e.g. `d.etcd.hostClient`. */
  etcd: EtcdClientFiles;
  pool: string;
  prefix: string;
  count: number;
  concurrency: number;
  dir: string;
  tag: string;
}): WorkerRun {
  const out = join(opts.dir, `${opts.tag}.out`);
  const log = join(opts.dir, `${opts.tag}.log`);
  const handle = startDaemon({
    argv: [
      process.execPath,
      WORKER,
      opts.mode,
      JSON.stringify(opts.etcd),
      opts.host.name,
      opts.pool,
      opts.prefix,
      String(opts.count),
      String(opts.concurrency),
      out,
    ],
    netns: { name: opts.host.netns },
    logFile: log,
  });
  return { handle, out, log };
}

/** Lines "handle value" a worker acknowledged (a torn last line from a SIGKILL is ignored). */
export function acknowledged(out: string): Map<string, string> {
  const map = new Map<string, string>();
  if (!existsSync(out)) return map;
  // Only complete lines count: a SIGKILL can tear the last one ("10.1.2.2" of "10.1.2.25").
  const lines = readFileSync(out, 'utf8').split('\n');
  lines.pop();
  for (const line of lines) {
    const [handle, value] = line.split(' ');
    if (handle && value) map.set(handle, value);
  }
  return map;
}

export interface WorkerSummary {
  done: boolean;
  count: number;
  elapsedMs: number;
  p50: number;
  p99: number;
}

export async function finished(run: WorkerRun): Promise<WorkerSummary> {
  const { code } = await run.handle.exited;
  const text = existsSync(run.log) ? readFileSync(run.log, 'utf8') : '';
  if (code !== 0) throw new Error(`worker exited ${code}: ${text.slice(-2000)}`);
  const last = text.trim().split('\n').pop() ?? '{}';
  return JSON.parse(last) as WorkerSummary;
}
