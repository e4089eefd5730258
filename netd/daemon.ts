import { describeError } from '../core/errors.js';
import { IpBatchLane } from '../sys/ip.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import { silentLogger, type Logger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import type { Ipam } from '../ipam/allocator.js';
import type { HostRecord } from '../tenancy/records.js';
import { Attacher } from './attach/template.js';
import { CniService } from './cni/service.js';
import { ownSocketPath, startCniServer } from './cni/server.js';
import { DeferredStoreWork } from './deferred.js';
import { ensureExternalEgress, type ExternalMode } from './external.js';
import { HostView } from './host-view.js';
import type { NetdMetrics } from './metrics.js';
import { vxlanMode } from './modes/vxlan.js';
import { Reconciler } from './reconciler.js';
import { recoverLocalAttachments } from './recovery.js';
import { HostRegistration } from './registration.js';
import { DeadHostSweeper } from './sweeper.js';
import type { Server } from 'node:net';

/**
 * The per-host daemon, as composition: it registers the host (HostRegistration), follows the
 * cluster (HostView), converges the kernel towards it (Reconciler), settles what an interrupted run
 * left (recovery), serves CNI (CniService over the Attacher), and takes part in sweeping dead
 * hosts (DeadHostSweeper). Stopping it leaves the data path and the registration in place.
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
  /** The one address allocator of this host (its block caches and batching lanes are shared). */
  ipam: Ipam;
  logger?: Logger;
  metrics?: NetdMetrics;
}

export class NetdDaemon {
  readonly view: HostView;
  readonly reconciler: Reconciler;
  readonly deferred: DeferredStoreWork;
  private readonly log: Logger;
  private readonly registration: HostRegistration;
  private readonly attacher: Attacher;
  private cniServer: Server | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly opts: NetdDaemonOptions,
    private readonly deps: NetdDaemonDeps,
  ) {
    const self = opts.host;
    this.log = (deps.logger ?? silentLogger()).child({ component: 'netd', host: self.name });
    const { store, runner, ipam } = deps;
    this.registration = new HostRegistration(self, { store, ttlSeconds: opts.leaseTtlSeconds ?? 10, logger: this.log });
    this.view = new HostView(self, { store, ...(deps.logger && { logger: deps.logger }) });
    // While the view is out of sync with etcd, etcd steps are queued at once (no deadline to wait out).
    this.deferred = new DeferredStoreWork(this.log, 500, () => this.view.synced);
    this.reconciler = new Reconciler({
      view: this.view,
      runner,
      ...(opts.netns && { netns: opts.netns }),
      mode: vxlanMode,
      logger: this.log,
      ...(deps.metrics && { metrics: deps.metrics }),
      ...(opts.debounceMs !== undefined && { debounceMs: opts.debounceMs }),
    });
    this.attacher = new Attacher({
      store,
      ipam,
      runner,
      self,
      ...(opts.netns && { hostNetns: opts.netns }),
      claims: this.reconciler.claims,
      deferred: this.deferred,
      hostLane: new IpBatchLane(runner, opts.netns),
      records: this.view,
      logger: this.log,
    });
    this.view.onChange(() => this.reconciler.schedule());
  }

  private get external(): { pool: string; mode: ExternalMode } | undefined {
    const pool = this.opts.externalPool;
    return pool === undefined ? undefined : { pool, mode: this.opts.externalMode ?? 'nat' };
  }

  async start(): Promise<void> {
    const { store, runner, ipam } = this.deps;
    this.deps.metrics?.countEndpointsWith(() => this.view.counts());
    await this.registration.register();
    const external = this.external;
    if (external) {
      const pool = await ipam.getPool(external.pool);
      this.reconciler.setExternal({ cidr: pool.spec.cidr, mode: external.mode });
      await ensureExternalEgress(runner, this.opts.netns, pool.spec.cidr, this.opts.host.uplink, external.mode);
    }
    await this.view.start();
    await recoverLocalAttachments({
      view: this.view,
      attacher: this.attacher,
      ipam,
      ...(external && { externalPool: external.pool }),
      logger: this.log,
    });
    await this.reconciler.run();
    if (this.opts.cniSocketDir !== undefined) {
      const service = new CniService({
        self: this.opts.host,
        store,
        runner,
        ...(this.opts.netns && { hostNetns: this.opts.netns }),
        view: this.view,
        reconciler: this.reconciler,
        attacher: this.attacher,
        ...(external && { external }),
        ...(this.deps.metrics && { metrics: this.deps.metrics }),
        logger: this.log,
      });
      this.cniServer = await startCniServer({
        path: ownSocketPath(this.opts.cniSocketDir),
        handle: (env, stdin) => service.handle(env, stdin),
        logger: this.log,
      });
    }
    this.resyncTimer = setInterval(() => this.reconciler.schedule(), this.opts.resyncIntervalMs ?? 5_000);
    this.resyncTimer.unref();
    this.startSweeping();
    this.log.info('netd started');
  }

  /** One daemon of the cluster (the lock holder) removes what dead hosts left (sweeper.ts). */
  private startSweeping(): void {
    const external = this.external;
    const sweeper = new DeadHostSweeper(
      {
        store: this.deps.store,
        ipam: this.deps.ipam,
        host: this.opts.host.name,
        logger: this.log,
        ...(external && { externalPools: [external.pool] }),
      },
      this.opts.deadHostGraceMs ?? 15 * 60_000,
    );
    let sweeping = false;
    this.sweepTimer = setInterval(() => {
      if (sweeping || this.stopped) return;
      sweeping = true;
      void sweeper
        .pass(this.registration.lease)
        .catch((err: unknown) => this.log.warn({ err: describeError(err) }, 'sweep failed; will retry'))
        .finally(() => (sweeping = false));
    }, this.opts.sweepIntervalMs ?? 30_000);
    this.sweepTimer.unref();
  }

  /**
   * Stops following etcd and leaves the data path as it is. The registration stays until the
   * lease's TTL runs out, so a restart within it does not disturb the other hosts.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.resyncTimer);
    clearInterval(this.sweepTimer);
    this.deferred.stop();
    await new Promise<void>((resolve) => (this.cniServer ? this.cniServer.close(() => resolve()) : resolve()));
    await this.view.stop();
    await this.reconciler.stop();
    this.registration.release();
  }

  /** Leaves the cluster for good: the registration goes at once and other hosts drop this one. */
  async deregister(): Promise<void> {
    await this.stop();
    await this.registration.revoke();
  }
}
