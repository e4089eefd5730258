import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Etcd3 } from 'etcd3';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { NetnsTarget } from '../sys/runner.js';
import { startDaemon, stopDaemon, killDaemon, isRunning, type DaemonHandle } from '../sys/process.js';
import type { EtcdConnectionOptions } from '../store/etcd.js';

/**
 * A real etcd member for tests, the demo and benchmarks. In the root namespace it listens on
 * 127.0.0.1 (free ports asked from the kernel, so parallel tests never collide); inside a namespace
 * it listens on that namespace's address, plus a Unix socket in its directory that the root
 * namespace can reach (a filesystem socket is not scoped to a network namespace).
 *
 * With `tls`, clients and peers speak TLS and must show a certificate of the same CA
 * (--client-cert-auth, --peer-client-cert-auth); the Unix socket is then `unixs://` (TLS too).
 * Several members form one cluster through `initialCluster`.
 */

export interface EtcdServerTls {
  /** The CA, and the certificate + key this member serves clients and peers with. */
  ca: string;
  cert: string;
  key: string;
  /** The client certificate the harness itself uses (readiness, status, setup). */
  client: { cert: string; key: string };
}

export interface EtcdServerOptions {
  /** Holds etcd.log and etcd.sock:0 (and data/, unless dataDir says otherwise). Created if missing. */
  dir: string;
  /** Default: DIR/data. */
  dataDir?: string;
  /** Member name. Default "default". */
  name?: string;
  /** Run inside this network namespace; default: the root namespace on 127.0.0.1. */
  netns?: NetnsTarget;
  /** With netns: the address to listen on, for clients in other namespaces and for peers. */
  listenAddress?: string;
  clientPort?: number;
  peerPort?: number;
  /** Every member of a new multi-member cluster, this one included. Default: this member alone. */
  initialCluster?: ReadonlyArray<{ name: string; peerUrl: string }>;
  clusterToken?: string;
  tls?: EtcdServerTls;
  /** Outlive the creating process (for the test-netns CLI). */
  detached?: boolean;
  startTimeoutMs?: number;
}

export interface EtcdServerState {
  /** Everything needed to restart it from another process. */
  options: EtcdServerOptions;
  pid: number;
  startTime: string;
  clientPort: number;
  peerPort: number;
  /** Reachable from the root namespace. */
  endpoints: string[];
  /** Reachable from other namespaces over their network (empty in the root namespace). */
  networkEndpoints: string[];
}

export interface EtcdMemberStatus {
  /** This member's id, and the id of the leader it knows (0: none). */
  memberId: string;
  leaderId: string;
  revision: bigint;
  raftTerm: bigint;
}

export class EtcdServer {
  private handle: DaemonHandle;

  private constructor(
    private readonly opts: EtcdServerOptions,
    readonly clientPort: number,
    readonly peerPort: number,
    handle: DaemonHandle,
    private readonly onRelaunch?: (state: EtcdServerState) => void,
  ) {
    this.handle = handle;
  }

  /** Starts and waits until it serves (which, in a cluster, needs a quorum of members). */
  static async start(opts: EtcdServerOptions): Promise<EtcdServer> {
    const server = await EtcdServer.launch(opts);
    try {
      await server.ready();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  /**
   * Starts the process without waiting for it: members of a new cluster only become ready together,
   * and a caller records the PID before waiting (so a crash in between leaks nothing).
   */
  static async launch(opts: EtcdServerOptions): Promise<EtcdServer> {
    mkdirSync(opts.dir, { recursive: true, mode: 0o700 });
    mkdirSync(opts.dataDir ?? join(opts.dir, 'data'), { recursive: true, mode: 0o700 });
    const inNamespace = opts.netns !== undefined;
    const clientPort = opts.clientPort ?? (inNamespace ? 2379 : await freePort());
    const peerPort = opts.peerPort ?? (inNamespace ? 2380 : await freePort());
    const fixed = { ...opts, clientPort, peerPort };
    return new EtcdServer(fixed, clientPort, peerPort, launch(fixed, clientPort, peerPort));
  }

  /**
   * Re-attaches to a server started by another process (the CLI's `up`), e.g. to stop or restart it.
   * `onRelaunch` learns the new process of a restart (whoever tears down must know its PID).
   */
  static attach(state: EtcdServerState, onRelaunch?: (state: EtcdServerState) => void): EtcdServer {
    return new EtcdServer(
      state.options,
      state.clientPort,
      state.peerPort,
      {
        pid: state.pid,
        startTime: state.startTime,
        argv: [],
        exited: new Promise(() => undefined), // not our child: never observed
      },
      onRelaunch,
    );
  }

  get name(): string {
    return this.opts.name ?? 'default';
  }

  get pid(): number {
    return this.handle.pid;
  }

  get endpoints(): string[] {
    // grpc resolves unix:// paths; etcd names the socket after the URL's host part (see launch()).
    return this.opts.netns
      ? [`unix://${join(this.opts.dir, 'etcd.sock:0')}`]
      : [`${this.scheme}://127.0.0.1:${this.clientPort}`];
  }

  get networkEndpoints(): string[] {
    return this.opts.netns && this.opts.listenAddress
      ? [`${this.scheme}://${this.opts.listenAddress}:${this.clientPort}`]
      : [];
  }

  get peerUrl(): string {
    return peerUrlOf(this.opts, this.peerPort);
  }

  /** How the harness reaches this member from the root namespace (with its own client certificate). */
  clientOptions(): EtcdConnectionOptions {
    const tls = this.opts.tls;
    return {
      endpoints: this.endpoints,
      ...(tls && { tls: { ca: tls.ca, cert: tls.client.cert, key: tls.client.key } }),
    };
  }

  state(): EtcdServerState {
    return {
      options: this.opts,
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

  /** Stops (if running) and starts again on the same data, ports and addresses. */
  async restart(): Promise<void> {
    await this.stop();
    this.handle = launch(this.opts, this.clientPort, this.peerPort);
    this.onRelaunch?.(this.state());
    await this.ready();
  }

  /** This member's view: its id and its leader's (maintenance status; needs no etcd user). */
  async status(timeoutMs = 2_000): Promise<EtcdMemberStatus> {
    const client = this.client(timeoutMs);
    try {
      const s = await client.maintenance.status({ deadline: Date.now() + timeoutMs });
      return {
        memberId: String(s.header.member_id),
        leaderId: String(s.leader),
        revision: BigInt(s.header.revision),
        raftTerm: BigInt(s.raftTerm),
      };
    } finally {
      client.close();
    }
  }

  /** Waits until the member serves clients: in a cluster, once it has joined with a leader. */
  async ready(timeoutMs = this.opts.startTimeoutMs ?? 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        // A fresh client per attempt: grpc's reconnect backoff would otherwise add seconds. A refused
        // connection fails at once; an accepted one is answered as soon as etcd serves (it accepts
        // before it serves), so the attempt may wait that long.
        const s = await this.status(Math.max(500, Math.min(3_000, deadline - Date.now())));
        if (s.leaderId !== '0') return;
      } catch (err) {
        if (!this.running()) {
          throw new AppError(ErrorCodes.INTERNAL, `etcd exited during start; see ${join(this.opts.dir, 'etcd.log')}`);
        }
        if (Date.now() > deadline) {
          throw new AppError(ErrorCodes.STORE_UNAVAILABLE, `etcd not ready after ${timeoutMs} ms`, {}, { cause: err });
        }
      }
      if (Date.now() > deadline)
        throw new AppError(
          ErrorCodes.STORE_UNAVAILABLE,
          `etcd member ${this.name} has no leader after ${timeoutMs} ms`,
        );
      await sleep(50);
    }
  }

  private client(dialTimeoutMs: number): Etcd3 {
    const tls = this.opts.tls;
    return new Etcd3({
      hosts: this.endpoints,
      dialTimeout: dialTimeoutMs,
      ...(tls && {
        credentials: {
          rootCertificate: readFileSync(tls.ca),
          certChain: readFileSync(tls.client.cert),
          privateKey: readFileSync(tls.client.key),
        },
      }),
    });
  }

  private get scheme(): 'http' | 'https' {
    return this.opts.tls ? 'https' : 'http';
  }
}

/** The index, in `members`, of the member every reachable member calls leader; undefined if none agree. */
export async function findLeader(members: readonly EtcdServer[]): Promise<number | undefined> {
  const statuses = await Promise.all(members.map((m) => (m.running() ? m.status().catch(() => undefined) : undefined)));
  const leaders = new Set(statuses.flatMap((s) => (s && s.leaderId !== '0' ? [s.leaderId] : [])));
  if (leaders.size !== 1) return undefined;
  const [leader] = leaders;
  const index = statuses.findIndex((s) => s?.memberId === leader);
  return index >= 0 ? index : undefined;
}

function peerUrlOf(opts: EtcdServerOptions, peerPort: number): string {
  const host = opts.netns ? (opts.listenAddress ?? '127.0.0.1') : '127.0.0.1';
  return `${opts.tls ? 'https' : 'http'}://${host}:${peerPort}`;
}

function launch(opts: EtcdServerOptions, clientPort: number, peerPort: number): DaemonHandle {
  const host = opts.netns ? (opts.listenAddress ?? '127.0.0.1') : '127.0.0.1';
  const scheme = opts.tls ? 'https' : 'http';
  const clientUrls = [`${scheme}://${host}:${clientPort}`];
  // etcd takes a unix URL's host part as a path relative to its working directory. A killed etcd
  // leaves its socket file behind, and would then fail to bind it.
  if (opts.netns) {
    rmSync(join(opts.dir, 'etcd.sock:0'), { force: true });
    clientUrls.push(opts.tls ? 'unixs://etcd.sock:0' : 'unix://etcd.sock:0');
  }
  const name = opts.name ?? 'default';
  const peerUrl = peerUrlOf(opts, peerPort);
  const initialCluster = opts.initialCluster ?? [{ name, peerUrl }];
  const tls = opts.tls;
  return startDaemon({
    argv: [
      'etcd',
      '--name',
      name,
      '--data-dir',
      opts.dataDir ?? join(opts.dir, 'data'),
      '--listen-client-urls',
      clientUrls.join(','),
      '--advertise-client-urls',
      `${scheme}://${host}:${clientPort}`,
      '--listen-peer-urls',
      peerUrl,
      '--initial-advertise-peer-urls',
      peerUrl,
      '--initial-cluster',
      initialCluster.map((m) => `${m.name}=${m.peerUrl}`).join(','),
      '--initial-cluster-token',
      opts.clusterToken ?? 'etcd-cluster',
      ...(tls
        ? [
            '--cert-file',
            tls.cert,
            '--key-file',
            tls.key,
            '--trusted-ca-file',
            tls.ca,
            '--client-cert-auth',
            '--peer-cert-file',
            tls.cert,
            '--peer-key-file',
            tls.key,
            '--peer-trusted-ca-file',
            tls.ca,
            '--peer-client-cert-auth',
          ]
        : []),
      // Throwaway clusters: a cheap password hash (production keeps etcd's default, 10).
      '--bcrypt-cost',
      '4',
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
