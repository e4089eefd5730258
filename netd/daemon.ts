import { readFileSync } from 'node:fs';
import { describeError } from '../core/errors.js';
import { contains, parseCidr, parseIp } from '../core/cidr.js';
import { listJson } from '../store/json.js';
import { modelKeys } from '../tenancy/keys.js';
import { IpBatchLane } from '../sys/ip.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import { silentLogger, type Logger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import type { Ipam } from '../ipam/allocator.js';
import type { HostRecord, ModeName, VpcRecord } from '../tenancy/records.js';
import { Attacher } from './attach/template.js';
import { CniService } from './cni/service.js';
import { ownSocketPath, startCniServer } from './cni/server.js';
import { DeferredStoreWork } from './deferred.js';
import { ensureExternalEgress, type ExternalMode } from './external.js';
import { HostView } from './host-view.js';
import type { NetdMetrics } from './metrics.js';
import { createRoutedMode } from './modes/routed.js';
import { BgpSpeaker, type BgpOptions } from './bgp.js';
import { vxlanMode } from './modes/vxlan.js';
import { createVlanMode } from './modes/vlan.js';
import { VlanHost, type VlanHostOptions } from './vlan-host.js';
import { Reconciler } from './reconciler.js';
import { SourceGuard } from './source-guard.js';
import { PortGuard } from '../tagqueue/port-guard.js';
import type { InfraPolicy } from '../tagqueue/ruleset.js';
import { NftClient } from '../sys/nft.js';
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
  /** Announce this host's routed blocks over BGP through a BIRD speaker (L3 fabrics; see bgp.ts). */
  bgp?: BgpOptions;
  /** On an L3 fabric: the next hop for other hosts' routed blocks (the router learning them over BGP). */
  fabricGateway?: string;
  /** The same for IPv6 VPCs: the router's IPv6 address on this host's link. */
  fabricGateway6?: string;
  /** vlan mode: this host's trunk into a VLAN-aware fabric, through Open vSwitch (see vlan-host.ts). */
  vlan?: VlanHostOptions;
  /**
   * Addresses no container's eth0 may reach beside every host's underlay address and the policy's
   * infrastructure ranges: the etcd members this daemon was given (main.ts).
   */
  infrastructure?: string[];
}

/** What a host tells the cluster (its record) and /readyz about the modes it builds. */
export interface HostCapabilities {
  modes: ModeName[];
  vlan?: HostRecord['vlan'];
  /** Why a mode is not offered here (vlan without a trunk or Open vSwitch; routed with loose rp_filter). */
  refused?: Partial<Record<ModeName, string>>;
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
  private readonly vlanHost: VlanHost | undefined;
  private routedRefusal: string | undefined;
  private readonly guard: SourceGuard;
  private readonly ports: PortGuard;
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
    // With BGP, this host's own new blocks must reach its speaker at once (they are announced).
    this.view = new HostView(self, {
      store,
      ...(deps.logger && { logger: deps.logger }),
      ...(opts.bgp && { ownBlocksMatter: true }),
    });
    // While the view is out of sync with etcd, etcd steps are queued at once (no deadline to wait out).
    this.deferred = new DeferredStoreWork(this.log, 500, () => this.view.synced);
    this.vlanHost = opts.vlan
      ? new VlanHost(opts.vlan, { runner, ...(opts.netns && { netns: opts.netns }), logger: this.log })
      : undefined;
    this.guard = new SourceGuard(new NftClient(runner, opts.netns), this.log);
    this.ports = new PortGuard(new NftClient(runner, opts.netns), this.log.child({ component: 'tagqueue' }), () =>
      infrastructurePolicy(this.view, opts.infrastructure ?? []),
    );
    this.reconciler = new Reconciler({
      view: this.view,
      runner,
      guard: this.guard,
      ports: this.ports,
      ...(opts.netns && { netns: opts.netns }),
      modes: [
        vxlanMode,
        createRoutedMode({
          ...(opts.fabricGateway && { fabricGateway: opts.fabricGateway }),
          ...(opts.fabricGateway6 && { fabricGateway6: opts.fabricGateway6 }),
        }),
        ...(this.vlanHost
          ? [
              createVlanMode(
                () => this.vlanHost?.physnet,
                // Until the datapath is known (OVS away at start), shaper pairs that exist are kept.
                () => this.vlanHost?.shaping !== false,
              ),
            ]
          : []),
      ],
      ...(this.vlanHost && { vlan: this.vlanHost }),
      ...(opts.bgp && { bgp: new BgpSpeaker({ runner, options: opts.bgp, logger: this.log.child({ part: 'bgp' }) }) }),
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

  /** The modes this host builds, as its record and /readyz say. */
  capabilities(): HostCapabilities {
    const vlan = this.vlanHost?.capability;
    const refused: NonNullable<HostCapabilities['refused']> = {};
    if (!vlan) refused.vlan = this.vlanHost?.refusal ?? 'no VLAN trunk configured (netd --vlan-trunk)';
    if (this.routedRefusal) refused.routed = this.routedRefusal;
    const modes: ModeName[] = [
      'vxlan',
      ...(this.routedRefusal ? [] : ['routed' as const]),
      ...(vlan ? ['vlan' as const] : []),
    ];
    return { modes, ...(vlan && { vlan }), refused };
  }

  async start(): Promise<void> {
    const { store, runner, ipam } = this.deps;
    this.deps.metrics?.countEndpointsWith(() => this.view.counts());
    this.deps.metrics?.countDropsWith(() => this.ports.drops());
    this.routedRefusal = this.opts.netns === undefined ? looseReversePathFilter() : undefined;
    this.routedRefusal ??= await this.underlayInRoutedVpc();
    if (this.routedRefusal) this.log.error(this.routedRefusal);
    // What the host can build is found before it registers: the record says it.
    await this.vlanHost?.setup();
    const { modes, vlan } = this.capabilities();
    this.registration.describe({ ...this.opts.host, modes, ...(vlan && { vlan }) });
    await this.registration.register();
    this.registeredVlan = JSON.stringify(vlan);
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
      const routedRefusal = this.routedRefusal;
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
        ...(routedRefusal && { routedRefusal }),
        ...(this.vlanHost && { vlan: this.vlanHost }),
        guard: this.guard,
        ports: this.ports,
        logger: this.log,
      });
      this.cniServer = await startCniServer({
        path: ownSocketPath(this.opts.cniSocketDir),
        handle: (env, stdin) => service.handle(env, stdin),
        logger: this.log,
      });
    }
    this.resyncTimer = setInterval(() => {
      this.reconciler.schedule();
      void this.retryVlanSetup();
    }, this.opts.resyncIntervalMs ?? 5_000);
    this.resyncTimer.unref();
    this.startSweeping();
    this.log.info('netd started');
  }

  /**
   * Open vSwitch may start after netd (or come back after an outage): a host configured with a
   * trunk that could not set it up tries again on each resync, and once it can, says so in its
   * record (the API then accepts vlan VPCs on its physical network) and reconciles.
   */
  private vlanRetrying = false;
  /** What the registered record says about vlan (it changes when OVS comes or goes). */
  private registeredVlan: string | undefined;
  private async retryVlanSetup(): Promise<void> {
    if (!this.vlanHost || this.vlanRetrying || this.stopped) return;
    this.vlanRetrying = true;
    try {
      if (!this.vlanHost.capability && (await this.vlanHost.setup())) this.reconciler.schedule();
      // The record follows what the host can build now (set up, or lost to an OVS outage), retried
      // on each resync until etcd takes it.
      const { modes, vlan } = this.capabilities();
      if (JSON.stringify(vlan) === this.registeredVlan) return;
      await this.registration.update({ ...this.opts.host, modes, ...(vlan && { vlan }) });
      this.registeredVlan = JSON.stringify(vlan);
    } catch (err) {
      this.log.warn({ err: describeError(err) }, 'host record not updated with vlan mode; will retry');
    } finally {
      this.vlanRetrying = false;
    }
  }

  /**
   * A routed VPC's CIDR is routed as it is on every host: a host whose underlay address lies in one
   * would have its own traffic captured by the VPC's routes. VPC creation refuses CIDRs over
   * registered hosts; this is the other direction, a host joining under an existing routed VPC
   * (created while it was away). Such a host serves no routed VPC (it still starts: its other
   * containers need their DELs and repairs); the reason is logged and shown by /readyz.
   */
  private async underlayInRoutedVpc(): Promise<string | undefined> {
    const { underlayIp, underlayIp6, name } = this.opts.host;
    const own = [underlayIp, ...(underlayIp6 !== undefined ? [underlayIp6] : [])];
    for (const { value: vpc } of (await listJson<VpcRecord>(this.deps.store, modelKeys.vpcs())).kvs) {
      if (vpc.mode !== 'routed') continue;
      const inside = own.find((a) => contains(parseCidr(vpc.cidr), parseIp(a)));
      if (inside !== undefined) {
        return (
          `host ${name}'s underlay address ${inside} lies inside routed VPC ${vpc.name} (${vpc.cidr}): this ` +
          'host refuses routed attachments; give it an address outside routed VPCs'
        );
      }
    }
    return undefined;
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
    this.vlanHost?.close();
    this.registration.release();
  }

  /** Leaves the cluster for good: the registration goes at once and other hosts drop this one. */
  async deregister(): Promise<void> {
    await this.stop();
    await this.registration.revoke();
  }
}

/**
 * The kernel applies the larger of `conf.all.rp_filter` and a port's own value: with `all` at 2
 * (loose, as some distributions ship) no port can be strict, and a container could pick another
 * routed VPC's table with a forged source. Read in the daemon's own namespace.
 */
function looseReversePathFilter(): string | undefined {
  try {
    const all = readFileSync('/proc/sys/net/ipv4/conf/all/rp_filter', 'utf8').trim();
    if (all !== '2') return undefined;
    return (
      'net.ipv4.conf.all.rp_filter is 2 (loose): ports cannot filter forged source addresses, so this host refuses ' +
      'routed VPC attachments; set it to 0 or 1 (netd sets 1 on each container port)'
    );
  } catch {
    return undefined;
  }
}

/**
 * What no container's eth0 may reach, from what this host knows now: every registered host's
 * underlay address, the etcd members, and the operator's infrastructure ranges; and the operator's
 * allow-list (docs/operations.md, "tagqueue").
 */
export function infrastructurePolicy(view: HostView, etcdMembers: readonly string[]): InfraPolicy {
  const policy = view.networkPolicy();
  const hosts = [view.self, ...view.hosts.values()].map((h) => h.underlayIp);
  return { infra: [...hosts, ...etcdMembers, ...(policy.infraRanges ?? [])], allow: policy.infraAllow ?? [] };
}
