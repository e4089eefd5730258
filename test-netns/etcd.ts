import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { NetnsTarget } from '../sys/runner.js';
import { startDaemon, stopDaemon, killDaemon, isRunning, type DaemonHandle } from '../sys/process.js';

/**
 * A real etcd server for tests, the demo and benchmarks. In the root namespace it listens on
 * 127.0.0.1 (free ports asked from the kernel, so parallel tests never collide); inside a namespace
 * it listens on that namespace's address, plus a Unix socket in its directory that the root
 * namespace can reach (a filesystem socket is not scoped to a network namespace).
 */

export interface EtcdServerOptions {
  /** Holds data/, etcd.sock and etcd.log. Created if missing. */
  dir: string;
  /** Run inside this network namespace; default: the root namespace on 127.0.0.1. */
  netns?: NetnsTarget;
  /** With netns: the address to listen on for clients in other namespaces (e.g. the underlay). */
  listenAddress?: string;
  clientPort?: number;
  peerPort?: number;
  /** Outlive the creating process (for the test-netns CLI). */
  detached?: boolean;
  startTimeoutMs?: number;
}

export interface EtcdServerState {
  dir: string;
  pid: number;
  startTime: string;
  clientPort: number;
  peerPort: number;
  /** Reachable from the root namespace. */
  endpoints: string[];
  /** Reachable from other namespaces over their network (empty in the root namespace). */
  networkEndpoints: string[];
}

export class EtcdServer {
  private handle: DaemonHandle;

  private constructor(
    private readonly opts: EtcdServerOptions,
    readonly clientPort: number,
    readonly peerPort: number,
    handle: DaemonHandle,
  ) {
    this.handle = handle;
  }

  static async start(opts: EtcdServerOptions): Promise<EtcdServer> {
    mkdirSync(join(opts.dir, 'data'), { recursive: true, mode: 0o700 });
    const inNamespace = opts.netns !== undefined;
    const clientPort = opts.clientPort ?? (inNamespace ? 2379 : await freePort());
    const peerPort = opts.peerPort ?? (inNamespace ? 2380 : await freePort());
    const server = new EtcdServer(opts, clientPort, peerPort, launch(opts, clientPort, peerPort));
    await server.waitReady(opts.startTimeoutMs ?? 15_000);
    return server;
  }

  /** Re-attaches to a server started by another process (the CLI's `up`), e.g. to stop it. */
  static attach(state: EtcdServerState): EtcdServer {
    return new EtcdServer({ dir: state.dir }, state.clientPort, state.peerPort, {
      pid: state.pid,
      startTime: state.startTime,
      argv: [],
      exited: new Promise(() => undefined), // not our child: never observed
    });
  }

  get pid(): number {
    return this.handle.pid;
  }

  get endpoints(): string[] {
    // grpc resolves unix:// paths; etcd names the socket after the URL's host part (see launch()).
    return this.opts.netns ? [`unix://${join(this.opts.dir, 'etcd.sock:0')}`] : [`http://127.0.0.1:${this.clientPort}`];
  }

  get networkEndpoints(): string[] {
    return this.opts.netns && this.opts.listenAddress ? [`http://${this.opts.listenAddress}:${this.clientPort}`] : [];
  }

  state(): EtcdServerState {
    return {
      dir: this.opts.dir,
      pid: this.handle.pid,
      startTime: this.handle.startTime,
      clientPort: this.clientPort,
      peerPort: this.peerPort,
      endpoints: this.endpoints,
      networkEndpoints: this.networkEndpoints,
    };
  }

  running(): boolean {
    return isRunning(this.handle);
  }

  async stop(): Promise<void> {
    await stopDaemon(this.handle, 10_000);
  }

  /** SIGKILL: a crash, not a shutdown. */
  kill(): void {
    killDaemon(this.handle);
  }

  /** Stops and starts again on the same data, ports and addresses. */
  async restart(): Promise<void> {
    await this.stop();
    this.handle = launch(this.opts, this.clientPort, this.peerPort);
    await this.waitReady(this.opts.startTimeoutMs ?? 15_000);
  }

  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      // A fresh client per attempt: grpc's reconnect backoff would otherwise add seconds.
      const client = new Etcd3({ hosts: this.endpoints, dialTimeout: 300 });
      try {
        await client.maintenance.status();
        return;
      } catch (err) {
        if (!this.running()) {
          throw new AppError(ErrorCodes.INTERNAL, `etcd exited during start; see ${join(this.opts.dir, 'etcd.log')}`);
        }
        if (Date.now() > deadline) {
          throw new AppError(ErrorCodes.STORE_UNAVAILABLE, `etcd not ready after ${timeoutMs} ms`, {}, { cause: err });
        }
        await sleep(50);
      } finally {
        client.close();
      }
    }
  }
}

function launch(opts: EtcdServerOptions, clientPort: number, peerPort: number): DaemonHandle {
  const host = opts.netns ? (opts.listenAddress ?? '127.0.0.1') : '127.0.0.1';
  const clientUrls = [`http://${host}:${clientPort}`];
  // etcd takes a unix URL's host part as a path relative to its working directory.
  if (opts.netns) clientUrls.push('unix://etcd.sock:0');
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  return startDaemon({
    argv: [
      'etcd',
      '--name',
      'default',
      '--data-dir',
      join(opts.dir, 'data'),
      '--listen-client-urls',
      clientUrls.join(','),
      '--advertise-client-urls',
      `http://${host}:${clientPort}`,
      '--listen-peer-urls',
      peerUrl,
      '--initial-advertise-peer-urls',
      peerUrl,
      '--initial-cluster',
      `default=${peerUrl}`,
      '--log-level',
      'warn',
      '--logger',
      'zap',
    ],
    netns: opts.netns,
    cwd: opts.dir,
    logFile: join(opts.dir, 'etcd.log'),
    detached: opts.detached,
  });
}

/** Asks the kernel for a free TCP port on loopback. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}
