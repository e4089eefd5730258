import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, ErrorCodes } from '../core/errors.js';
import { isCommandError, type CommandRunner } from '../sys/runner.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../sys/process.js';

/**
 * Traffic probes between namespaces: each answers "was it delivered?", so tests can assert both
 * reachability and isolation (dropped) with the same call.
 */

const AGENT = join(dirname(fileURLToPath(import.meta.url)), 'probe-agent.js');
const NOT_DELIVERED_EXIT = 3;

export type Protocol = 'icmp' | 'tcp' | 'udp';

export interface ProbeSpec {
  from: string; // netns name
  to: string; // netns name of the target (where the server runs; unused for icmp)
  address: string;
  protocol: Protocol;
  port?: number;
  timeoutMs?: number;
}

export class Prober {
  constructor(private readonly runner: CommandRunner) {}

  /** True when one echo made the round trip within the timeout. */
  async delivered(spec: ProbeSpec): Promise<boolean> {
    const timeoutMs = spec.timeoutMs ?? 1000;
    if (spec.protocol === 'icmp') return this.ping(spec.from, spec.address, timeoutMs);
    const server = await this.serve(spec.to, spec.protocol, spec.address, spec.port ?? 7777);
    try {
      return await this.connect(spec.from, spec.protocol, spec.address, spec.port ?? 7777, timeoutMs);
    } finally {
      await server.stop();
    }
  }

  async ping(fromNetns: string, address: string, timeoutMs = 1000): Promise<boolean> {
    const seconds = String(Math.max(1, Math.ceil(timeoutMs / 1000)));
    try {
      await this.runner.run({
        argv: ['ping', '-n', '-q', '-c', '1', '-W', seconds, address],
        netns: { name: fromNetns },
      });
      return true;
    } catch (err) {
      // ping exits 1 for "no reply", 2 for other errors (e.g. no route): both mean not delivered.
      if (isCommandError(err) && (err.exitCode === 1 || err.exitCode === 2)) return false;
      throw err;
    }
  }

  /** Starts an echo server in `netns`; resolves once it listens. */
  async serve(
    netns: string,
    protocol: 'tcp' | 'udp',
    address: string,
    port: number,
  ): Promise<{ stop(): Promise<void> }> {
    const dir = mkdtempSync(join(tmpdir(), 'tn-probe-'));
    const readyFile = join(dir, 'ready');
    let handle: DaemonHandle | undefined;
    const stop = async (): Promise<void> => {
      if (handle) await stopDaemon(handle, 2000);
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      handle = startDaemon({
        argv: [process.execPath, AGENT, 'serve', protocol, address, String(port), readyFile],
        netns: { name: netns },
        logFile: join(dir, 'log'),
      });
      const deadline = Date.now() + 5000;
      while (!existsSync(readyFile)) {
        if (Date.now() > deadline) throw new AppError(ErrorCodes.INTERNAL, `probe server in ${netns} did not start`);
        await sleep(10);
      }
      return { stop };
    } catch (err) {
      await stop();
      throw err;
    }
  }

  async connect(
    fromNetns: string,
    protocol: 'tcp' | 'udp',
    address: string,
    port: number,
    timeoutMs = 1000,
  ): Promise<boolean> {
    try {
      await this.runner.run({
        argv: [process.execPath, AGENT, 'connect', protocol, address, String(port), String(timeoutMs)],
        netns: { name: fromNetns },
        timeoutMs: timeoutMs + 5000,
      });
      return true;
    } catch (err) {
      if (isCommandError(err) && err.exitCode === NOT_DELIVERED_EXIT) return false;
      throw err;
    }
  }
}
