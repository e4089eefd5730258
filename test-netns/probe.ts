import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AppError, ErrorCodes } from '../core/errors.js';
import { isCommandError, type CommandRunner } from '../sys/runner.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../sys/process.js';
import { eventually, uniqueSuffix } from './testing.js';

/**
 * Traffic probes between namespaces: each answers "was it delivered?", so tests can assert both
 * reachability and isolation (dropped) with the same call.
 */

const AGENT = join(dirname(fileURLToPath(import.meta.url)), 'probe-agent.js');
const NOT_DELIVERED_EXIT = 3;

export type Protocol = 'icmp' | 'tcp' | 'udp';

/** Packets counted at a receiver: see Prober.countIn. */
export interface PacketCounter {
  /** Packets that matched so far. */
  read(): Promise<number>;
  /** Removes the counter's table (the namespace may be gone already). */
  remove(): Promise<void>;
}

/** An nft match: tokens, operators and sets, never a statement separator, block or comment. */
const NFT_MATCH_RE = /^[A-Za-z0-9 ._:/,|&=!<>()-]+$/;

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

  /**
   * Counts the packets matching `match` (an nft expression, e.g. `tcp dport 9090`) that reach
   * `netns` for a local socket (the input hook, before any filtering), so a test can tell at the
   * receiver whether traffic arrived — a refused connection still counts its SYN, a dropped one
   * does not. The table is named `tn_c<random>`, so the leak check knows it as ours.
   */
  async countIn(netns: string, match: string): Promise<PacketCounter> {
    if (!NFT_MATCH_RE.test(match)) throw new AppError(ErrorCodes.INVALID_INPUT, `unsafe nft match "${match}"`);
    const table = `tn_c${uniqueSuffix()}`;
    const target = { name: netns };
    await this.runner.run({
      argv: ['nft', '-f', '-'],
      netns: target,
      stdin: [
        `table inet ${table} {`,
        '  counter seen { }',
        '  chain input {',
        '    type filter hook input priority raw; policy accept;',
        `    ${match} counter name seen`,
        '  }',
        '}',
        '',
      ].join('\n'),
    });
    return {
      read: async () => {
        const { stdout } = await this.runner.run({
          argv: ['nft', '-j', 'list', 'counter', 'inet', table, 'seen'],
          netns: target,
        });
        const parsed = JSON.parse(stdout) as { nftables: Array<{ counter?: { packets: number } }> };
        const counter = parsed.nftables.find((e) => e.counter)?.counter;
        if (!counter) throw new AppError(ErrorCodes.INTERNAL, `nft counter ${table} in ${netns} not found`);
        return counter.packets;
      },
      remove: async () => {
        await this.runner
          .run({ argv: ['nft', 'delete', 'table', 'inet', table], netns: target })
          .catch((err: unknown) => {
            if (!isCommandError(err)) throw err; // gone with its namespace, or already removed
          });
      },
    };
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
      if (!(await eventually(() => existsSync(readyFile), 5000, 10)))
        throw new AppError(ErrorCodes.INTERNAL, `probe server in ${netns} did not start`);
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
