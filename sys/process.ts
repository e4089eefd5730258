import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolveArgv, type NetnsTarget } from './runner.js';

/**
 * Long-running processes (etcd, daemons, probe servers). Short commands go through CommandRunner;
 * this is its counterpart for things that outlive a call. Processes are only ever ended by the PID
 * we recorded when starting them, after checking that PID still runs the same program.
 */

export interface DaemonSpec {
  argv: readonly string[];
  netns?: NetnsTarget;
  cwd?: string;
  env?: Record<string, string>;
  /** stdout and stderr go here (appended). Without it they are discarded. */
  logFile?: string;
  /** Survive the parent's exit (own session, unref'd). */
  detached?: boolean;
}

export interface DaemonHandle {
  pid: number;
  /** The process start time (clock ticks after boot): with the PID, it names the process uniquely. */
  startTime: string;
  argv: string[];
  /** Settles when the process exits (only meaningful for children of this process). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function startDaemon(spec: DaemonSpec): DaemonHandle {
  const argv = resolveArgv({ argv: spec.argv, netns: spec.netns });
  const fd = spec.logFile ? openSync(spec.logFile, 'a') : 'ignore';
  try {
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd: spec.cwd,
      env: { ...process.env, LC_ALL: 'C', ...spec.env },
      stdio: ['ignore', fd, fd],
      detached: spec.detached ?? false,
    });
    if (child.pid === undefined) throw new Error(`could not start ${argv[0]}`);
    // Liveness is judged from /proc by PID and start time; 'exit' is for callers that supervise.
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.on('exit', (code, sig) => resolve({ code, signal: sig }));
      child.on('error', () => resolve({ code: null, signal: null }));
    });
    if (spec.detached) child.unref();
    return { pid: child.pid, startTime: processStartTime(child.pid) ?? '', argv, exited };
  } finally {
    if (typeof fd === 'number') closeSync(fd);
  }
}

/** Field 22 of /proc/PID/stat, or undefined when the process is gone. */
export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    if (fields[0] === 'Z') return undefined; // a zombie has exited already
    return fields[19];
  } catch {
    return undefined;
  }
}

/** True while the very process we started (same PID and start time) runs. */
export function isRunning(handle: Pick<DaemonHandle, 'pid' | 'startTime'>): boolean {
  const now = processStartTime(handle.pid);
  return now !== undefined && (handle.startTime === '' || now === handle.startTime);
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopDaemon(handle: Pick<DaemonHandle, 'pid' | 'startTime'>, graceMs = 5_000): Promise<void> {
  if (!isRunning(handle)) return;
  signal(handle.pid, 'SIGTERM');
  if (await waitForExit(handle, graceMs)) return;
  signal(handle.pid, 'SIGKILL');
  await waitForExit(handle, 5_000);
}

export function killDaemon(handle: Pick<DaemonHandle, 'pid' | 'startTime'>, sig: NodeJS.Signals = 'SIGKILL'): void {
  if (isRunning(handle)) signal(handle.pid, sig);
}

export async function waitForExit(
  handle: Pick<DaemonHandle, 'pid' | 'startTime'>,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!isRunning(handle)) return true;
    await sleep(20);
  }
  return !isRunning(handle);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err;
  }
}
