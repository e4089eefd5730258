import { describeError } from '../core/errors.js';
import { IpBatchLane, IpClient } from '../sys/ip.js';
import { BridgeClient } from '../sys/bridge.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import type { Lease, Store, WatchEvent } from '../store/types.js';
import { WatchConsumer } from '../store/watch-consumer.js';
import { reconcile } from './dataplane.js';
import { netdKeys, externalKeys } from './keys.js';
import {
  ensureExternalEgress,
  reconcileExternalProxies,
  type ExternalEndpointRecord,
  type ExternalMode,
} from './external.js';
import type { EndpointRecord, HostRecord, HostView, QosSpec, VpcRecord } from './model.js';
import { TcClient } from '../sys/tc.js';
import { isCommandError } from '../sys/runner.js';
import { qosBatch } from './qos.js';
import { recoverLocalAttachments } from './recovery.js';
import type { ConvergeHints } from './attach.js';
import { linkNames } from './names.js';
import { vxlanMode } from './modes/vxlan.js';
import { Ipam } from '../ipam/allocator.js';
import { handleCni } from './cni-handler.js';
import { ownSocketPath, startCniServer } from './cni-server.js';
import type { Server } from 'node:net';
import type { NetdMetrics } from './metrics.js';
import { DeadHostSweeper } from './sweeper.js';

/**
 * The per-host daemon's control loop: registers the host with a lease, follows VPCs, hosts and
 * endpoints in etcd, and converges the host's data path after every change (debounced, one
 * reconcile at a time). Stopping it leaves the data path and the registration in place: the lease
 * is released, not revoked, so a restart within the TTL is invisible to the other hosts.
 */

export interface NetdDaemonOptions {
  host: HostRecord;
  leaseTtlSeconds?: number;
  /** Where the host's data path lives (the daemon's own namespace when undefined). */
  netns?: NetnsTarget;
  debounceMs?: number;
  /**
   * A full reconcile at least this often (default 5 s), whatever etcd says: it repairs what changed
   * behind netd's back and ports that appeared after the event that named them.
   */
  resyncIntervalMs?: number;
  /** Serve CNI requests on the socket of this namespace (in this directory). Off when undefined. */
  cniSocketDir?: string;
  /** The ipam pool of eth0 addresses (external network); no external network when undefined. */
  externalPool?: string;
  /** eth0 traffic NAT'd to the host's address (default) or routed with the container's own. */
  externalMode?: ExternalMode;
  /**
   * How long a host may stay unregistered before its endpoint records and addresses are removed
   * (default 15 min; see sweeper.ts). Its FDB entries go at once, whatever this says.
   */
  deadHostGraceMs?: number;
  /** How often the sweeper looks (default 30 s). */
  sweepIntervalMs?: number;
}

export interface NetdDaemonDeps {
  store: Store;
  runner: CommandRunner;
  logger?: Logger;
  metrics?: NetdMetrics;
}

const CNI_VERBS = new Set(['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION']);

export class NetdDaemon {
  private readonly log: Logger;
  private readonly vpcs = new Map<string, VpcRecord>();
  private readonly hosts = new Map<string, HostRecord>();
  private readonly endpoints = new Map<string, EndpointRecord>();
  private readonly externals = new Map<string, ExternalEndpointRecord>();
  private readonly consumers: WatchConsumer[] = [];
  private lease: Lease | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private cniServer: Server | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Rate limits as last applied per port (re-applied in full after a restart: replace is idempotent). */
  private readonly appliedQos = new Map<string, QosSpec>();
  /** Host ports ADDs are wiring right now (see plan()). */
  private readonly portsInFlight = new Map<string, number>();
  /** Bridges the last successful reconcile left in place. */
  private bridgesUp = new Set<string>();
  /** The external pool's CIDR, once read at start. */
  private externalCidr: string | undefined;
  /** Reconciles that ran (for tests and metrics). */
  reconciles = 0;
  lastError: string | undefined;

  constructor(
    private readonly opts: NetdDaemonOptions,
    private readonly deps: NetdDaemonDeps,
  ) {
    this.log = (deps.logger ?? silentLogger()).child({ component: 'netd', host: opts.host.name });
  }

  async start(): Promise<void> {
    this.deps.metrics?.countEndpointsWith(() => this.countEndpoints());
    await this.register();
    const follow = <T>(prefix: string, into: Map<string, T>) =>
      new WatchConsumer({
        store: this.deps.store,
        prefix,
        logger: this.deps.logger,
        handler: {
          onEvents: (events: WatchEvent[]) => {
            let changed = false;
            for (const e of events) {
              const known = into.get(e.kv.key);
              if (e.type === 'delete') changed = into.delete(e.kv.key) || changed;
              // A record this daemon wrote and noted already (an ADD) changes nothing: at 16 ADDs
              // in flight, a reconcile per ADD would keep a core busy listing every link.
              else if (known === undefined || JSON.stringify(known) !== e.kv.value) {
                into.set(e.kv.key, JSON.parse(e.kv.value) as T);
                changed = true;
              }
            }
            if (changed) this.schedule();
          },
        },
      });
    this.consumers.push(
      follow(netdKeys.vpcs(), this.vpcs),
      follow(netdKeys.hosts(), this.hosts),
      follow(netdKeys.endpoints(), this.endpoints),
      follow(externalKeys.host(this.opts.host.name), this.externals),
    );
    if (this.opts.externalPool !== undefined) {
      const pool = await new Ipam({ store: this.deps.store, host: this.opts.host.name }).getPool(
        this.opts.externalPool,
      );
      this.externalCidr = pool.spec.cidr;
      await ensureExternalEgress(
        this.deps.runner,
        this.opts.netns,
        pool.spec.cidr,
        this.opts.host.uplink,
        this.externalMode,
      );
    }
    await Promise.all(this.consumers.map((c) => c.start()));
    await this.recover();
    await this.reconcileNow();
    if (this.opts.cniSocketDir !== undefined) await this.serveCni(this.opts.cniSocketDir);
    this.resyncTimer = setInterval(() => this.schedule(), this.opts.resyncIntervalMs ?? 5_000);
    this.resyncTimer.unref();
    const sweeper = new DeadHostSweeper(
      {
        store: this.deps.store,
        ipam: new Ipam({ store: this.deps.store, host: this.opts.host.name, logger: this.deps.logger }),
        host: this.opts.host.name,
        logger: this.log,
        ...(this.opts.externalPool !== undefined && { externalPools: [this.opts.externalPool] }),
      },
      this.opts.deadHostGraceMs ?? 15 * 60_000,
    );
    let sweeping = false;
    this.sweepTimer = setInterval(() => {
      if (sweeping || this.stopped) return;
      sweeping = true;
      void sweeper
        .pass(this.lease)
        .catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'sweep failed; will retry'))
        .finally(() => (sweeping = false));
    }, this.opts.sweepIntervalMs ?? 30_000);
    this.sweepTimer.unref();
    this.log.info('netd started');
  }

  /** Before serving CNI: settle what an interrupted run left (see recovery.ts). */
  private async recover(): Promise<void> {
    const self = this.opts.host.name;
    const ipam = new Ipam({ store: this.deps.store, host: self, logger: this.deps.logger });
    const deps = {
      store: this.deps.store,
      ipam,
      runner: this.deps.runner,
      host: this.opts.host,
      hostNetns: this.opts.netns,
      logger: this.deps.logger,
      externalMode: this.externalMode,
    };
    const report = await recoverLocalAttachments({
      internal: [...this.endpoints.values()].filter((e) => e.host === self),
      external: [...this.externals.values()],
      deps,
      ipam,
      logger: this.log,
      pools: new Set([
        ...[...this.vpcs.values()].map((v) => v.name),
        ...(this.opts.externalPool !== undefined ? [this.opts.externalPool] : []),
      ]),
    });
    for (const id of report.removed) {
      for (const [key, e] of this.endpoints) if (e.id === id && e.host === self) this.endpoints.delete(key);
      for (const [key, e] of this.externals) if (e.id === id) this.externals.delete(key);
    }
  }

  private async serveCni(dir: string): Promise<void> {
    const ipam = new Ipam({ store: this.deps.store, host: this.opts.host.name, logger: this.deps.logger });
    const deps = {
      store: this.deps.store,
      ipam,
      runner: this.deps.runner,
      host: this.opts.host,
      hostNetns: this.opts.netns,
      logger: this.deps.logger,
      hostLane: new IpBatchLane(this.deps.runner, this.opts.netns),
      converge: async (e: EndpointRecord, hints?: ConvergeHints) => {
        this.noteLocalEndpoint(e);
        if (hints?.qos) this.appliedQos.set(e.hostIf, hints.qos);
        // The port joined its bridge and got its limits in the ADD itself: nothing is left to do
        // on this host (other hosts add its FDB entry from the record).
        if (hints?.joinedBridge) return;
        await this.reconcileNow();
        if (this.lastError) throw new Error(`data path not converged: ${this.lastError}`);
      },
      claimPort: (hostIf: string) => {
        this.portsInFlight.set(hostIf, (this.portsInFlight.get(hostIf) ?? 0) + 1);
        return () => {
          const n = (this.portsInFlight.get(hostIf) ?? 1) - 1;
          if (n <= 0) this.portsInFlight.delete(hostIf);
          else this.portsInFlight.set(hostIf, n);
        };
      },
      view: {
        vpc: (name: string) => this.vpcByName(name),
        bridgeUp: (vpc: VpcRecord) => {
          const name = linkNames.bridge(vpc.vni);
          return this.bridgesUp.has(name) ? name : undefined;
        },
        record: (key: string) => {
          if (!this.consumers.every((c) => c.status === 'synced')) return undefined;
          const known = this.endpoints.get(key) ?? this.externals.get(key);
          return known ? JSON.stringify(known) : null;
        },
      },
      localEndpoints: () => [...this.endpoints.values()].filter((e) => e.host === this.opts.host.name),
      localExternalEndpoints: () => [...this.externals.values()],
      externalPool: this.opts.externalPool,
      externalMode: this.externalMode,
      convergeExternal: async (e: ExternalEndpointRecord, qosApplied?: QosSpec) => {
        // eth0 is on no bridge and the ADD routed it and applied its limits: nothing to wait for.
        this.externals.set(externalKeys.endpoint(e.host, e.id), e);
        if (qosApplied) this.appliedQos.set(e.hostIf, qosApplied);
      },
      ready: () => this.consumers.every((c) => c.status === 'synced'),
    };
    const metrics = this.deps.metrics;
    const handle = metrics
      ? async (env: Record<string, string | undefined>, stdin: string) => {
          const started = performance.now();
          const reply = await handleCni(env, stdin, deps);
          const verb = CNI_VERBS.has(env.CNI_COMMAND ?? '') ? env.CNI_COMMAND! : 'invalid';
          const code = reply.exitCode === 0 ? undefined : (JSON.parse(reply.stdout) as { code?: number }).code;
          metrics.observeCni(verb, reply.exitCode === 0 ? 'ok' : 'error', (performance.now() - started) / 1000, code);
          return reply;
        }
      : (env: Record<string, string | undefined>, stdin: string) => handleCni(env, stdin, deps);
    this.cniServer = await startCniServer({ path: ownSocketPath(dir), handle, logger: this.log });
  }

  /** Registers (or re-registers) this host under a fresh lease. */
  private async register(): Promise<void> {
    this.lease = await this.deps.store.lease(this.opts.leaseTtlSeconds ?? 10);
    this.lease.onLost((err) => {
      if (this.stopped) return;
      this.log.warn({ err: err.message }, 'host lease lost; registering again');
      void this.register().catch((e: unknown) => this.log.error({ err: describeError(e) }, 're-registration failed'));
    });
    await this.deps.store.put(netdKeys.host(this.opts.host.name), JSON.stringify(this.opts.host), {
      lease: this.lease.id,
    });
  }

  /** The cluster as this host sees it right now. */
  view(): HostView {
    const hosts = new Map([...this.hosts.values()].map((h) => [h.name, h]));
    hosts.set(this.opts.host.name, this.opts.host);
    const vpcs = new Map([...this.vpcs.values()].map((v) => [v.name, v]));
    return { self: this.opts.host, hosts, vpcs, endpoints: [...this.endpoints.values()] };
  }

  /** Makes a local endpoint part of the view before its watch event arrives (the ADD fast path). */
  noteLocalEndpoint(e: EndpointRecord): void {
    this.endpoints.set(netdKeys.endpoint(e.vpc, e.id), e);
  }

  schedule(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.reconcileNow().catch(() => undefined), this.opts.debounceMs ?? 20);
  }

  /** One reconcile at a time; a request during a run triggers exactly one more run after it. */
  async reconcileNow(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        const started = performance.now();
        try {
          const ns = this.opts.netns;
          const desired = vxlanMode.render(this.view());
          // eth0 ports are routed, on no bridge; listing them keeps them from looking orphaned.
          for (const e of this.externals.values()) desired.ports.set(e.hostIf, '');
          const qos = this.desiredQos();
          for (const [port, q] of qos) if (q.egressBps !== undefined) desired.ifbs.add(linkNames.ifbFor(port));
          const ip = new IpClient(this.deps.runner, ns);
          await reconcile(desired, { ip, bridge: new BridgeClient(this.deps.runner, ns) }, this.log, () =>
            this.protectedPorts(),
          );
          if (this.externalCidr !== undefined) {
            await reconcileExternalProxies(
              ip,
              this.opts.host.uplink,
              this.externalCidr,
              this.externalMode,
              () => ({
                wanted: [...this.externals.values()].map((e) => e.ip),
                inFlight: new Set(this.portsInFlight.keys()),
              }),
              this.log,
            );
          }
          this.bridgesUp = new Set(desired.bridges.keys());
          await this.applyQos(qos);
          this.reconciles++;
          this.lastError = undefined;
          this.deps.metrics?.observeReconcile('ok', (performance.now() - started) / 1000);
        } catch (err) {
          this.lastError = describeError(err);
          this.deps.metrics?.observeReconcile('error', (performance.now() - started) / 1000);
          this.log.error({ err: this.lastError }, 'reconcile failed; will retry');
          setTimeout(() => this.schedule(), 500).unref();
        }
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /**
   * Ports not to remove, as of now (not as of when `desired` was computed): those ADDs are wiring,
   * and those of every local endpoint the view holds by now.
   */
  private protectedPorts(): Set<string> {
    const out = new Set(this.portsInFlight.keys());
    for (const e of this.endpoints.values()) if (e.host === this.opts.host.name) out.add(e.hostIf);
    for (const e of this.externals.values()) out.add(e.hostIf);
    return out;
  }

  /** Rate limits of this host's ports: the endpoint's own, else its VPC's defaults. */
  private desiredQos(): Map<string, QosSpec> {
    const out = new Map<string, QosSpec>();
    for (const e of this.endpoints.values()) {
      if (e.host !== this.opts.host.name) continue;
      const q = e.qos ?? this.vpcByName(e.vpc)?.qos;
      if (q && (q.ingressBps !== undefined || q.egressBps !== undefined)) out.set(e.hostIf, q);
    }
    for (const e of this.externals.values()) if (e.qos) out.set(e.hostIf, e.qos);
    return out;
  }

  private get externalMode(): ExternalMode {
    return this.opts.externalMode ?? 'nat';
  }

  private countEndpoints(): { vpc: number; external: number } {
    let vpc = 0;
    for (const e of this.endpoints.values()) if (e.host === this.opts.host.name) vpc++;
    return { vpc, external: this.externals.size };
  }

  private vpcByName(name: string): VpcRecord | undefined {
    return this.vpcs.get(netdKeys.vpc(name));
  }

  /** Applies changed rate limits with `tc` (replace: running flows are not disturbed). */
  private async applyQos(desired: Map<string, QosSpec>): Promise<void> {
    const tc = new TcClient(this.deps.runner, this.opts.netns);
    for (const port of new Set([...desired.keys(), ...this.appliedQos.keys()])) {
      // An ADD wiring this port applies its limits itself and reports them when done.
      if (this.portsInFlight.has(port)) continue;
      const want = desired.get(port);
      const had = this.appliedQos.get(port);
      if (JSON.stringify(want) === JSON.stringify(had)) continue;
      try {
        await tc.apply(qosBatch(port, linkNames.ifbFor(port), want, had));
        if (want) this.appliedQos.set(port, want);
        else this.appliedQos.delete(port);
      } catch (err) {
        // The port is gone (container deleted) or not there yet (ADD in flight): nothing to shape.
        if (!isCommandError(err, 'not-found')) throw err;
        this.appliedQos.delete(port);
      }
    }
  }

  /**
   * Stops following etcd and leaves the data path as it is. The registration stays until the
   * lease's TTL runs out, so a restart within it does not disturb the other hosts.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.resyncTimer);
    clearInterval(this.sweepTimer);
    await new Promise<void>((resolve) => (this.cniServer ? this.cniServer.close(() => resolve()) : resolve()));
    await Promise.all(this.consumers.map((c) => c.stop()));
    await this.running;
    this.lease?.release();
  }

  /** Leaves the cluster for good: the registration goes at once and other hosts drop this one. */
  async deregister(): Promise<void> {
    await this.stop();
    await this.lease?.revoke();
  }
}
