import { describeError } from '../core/errors.js';
import { IpClient } from '../sys/ip.js';
import { BridgeClient } from '../sys/bridge.js';
import { TcClient } from '../sys/tc.js';
import { SysctlClient } from '../sys/sysctl.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import type { ExternalEndpointRecord, QosSpec } from '../tenancy/records.js';
import { createAbsent, linksOf, reconcile as reconcileL2, scopeToBridge } from './dataplane.js';
import { reconcileExternalProxies, type ExternalMode } from './external.js';
import type { HostView } from './host-view.js';
import { emptyDesired, type DesiredL2, type NetworkMode } from './modes/mode.js';
import { parseCidr } from '../core/cidr.js';
import { emptyRouting, routedFamily, routedTable, type DesiredRouting } from './modes/routed.js';
import { reconcileRouting } from './routing.js';
import type { BgpSpeaker } from './bgp.js';
import type { HostSnapshot } from './model.js';
import { linkNames } from './names.js';
import { PortClaims } from './port-claims.js';
import { qosBatch } from './qos.js';
import { capQos } from '../tenancy/qos.js';
import type { NetdMetrics } from './metrics.js';
import type { VlanHost } from './vlan-host.js';
import { guardKey, type SourceGuard } from './source-guard.js';
import type { PortGuard } from '../tagqueue/port-guard.js';
import type { PortEntry } from '../tagqueue/ruleset.js';

/**
 * Converges this host's data path to its HostView (Felix-style: desired vs actual, ordered
 * batches), debounced and one run at a time. Its desired state is the network mode's rendering
 * plus what lives beside it: eth0 ports (routed, on no bridge), rate limits per port (applied ones
 * are remembered, so only changes reach tc), and the names ADDs in flight have claimed, which it
 * leaves alone.
 */

export interface HostDesired {
  l2: DesiredL2;
  /** Routes and policy rules (routed VPCs). */
  routing: DesiredRouting;
  /** Rate limits per host port: the endpoint's own, else its VPC's defaults. */
  qos: Map<string, QosSpec>;
}

/** The pure half: what this host's data path must hold, from a snapshot of its view. */
export function desiredState(
  snapshot: HostSnapshot,
  externals: readonly ExternalEndpointRecord[],
  modes: readonly NetworkMode[],
): HostDesired {
  const l2 = emptyDesired();
  const routing = emptyRouting();
  // Each mode renders only its own VPCs: the parts never share a key.
  for (const mode of modes) {
    const part = mode.render(snapshot);
    for (const k of Object.keys(l2) as Array<keyof DesiredL2>) mergeInto(l2[k], part[k]);
    const r = mode.renderRouting?.(snapshot);
    if (r) {
      mergeInto(routing.routes, r.routes);
      mergeInto(routing.rules, r.rules);
      mergeInto(routing.guards, r.guards);
    }
  }
  const qos = new Map<string, QosSpec>();
  for (const e of snapshot.endpoints) {
    if (e.host !== snapshot.self.name) continue;
    // The endpoint's limits, else its VPC's, lowered to the tenant's cap (which stays without them).
    const q = capQos(e.qos ?? snapshot.vpcs.get(e.vpc)?.qos, snapshot.caps?.eth1(e.vpc));
    if (q && (q.ingressBps !== undefined || q.egressBps !== undefined)) qos.set(e.hostIf, q);
  }
  for (const e of externals) {
    // eth0 ports are routed, on no bridge; listing them keeps them from looking orphaned.
    l2.ports.set(e.hostIf, '');
    const q = capQos(e.qos, snapshot.caps?.eth0(e.host, e.containerId));
    if (q) qos.set(e.hostIf, q);
  }
  // An ifb per port with an egress limit, unless the mode gave the port a shaper veth of that name.
  for (const [port, q] of qos) {
    if (q.egressBps !== undefined && !isShaped(l2, port)) l2.ifbs.add(linkNames.ifbFor(port));
  }
  return { l2, routing, qos };
}

/** The port's egress is shaped on a veth of its own (vlan on OVS's userspace datapath), not an ifb. */
export function isShaped(l2: DesiredL2, port: string): boolean {
  return l2.ports.has(linkNames.ifbFor(port));
}

function mergeInto<T extends Map<unknown, unknown> | Set<unknown>>(into: T, from: T): void {
  if (into instanceof Map) for (const [k, v] of from as Map<unknown, unknown>) into.set(k, v);
  else for (const v of from as Set<unknown>) (into as Set<unknown>).add(v);
}

export interface ReconcilerDeps {
  view: HostView;
  runner: CommandRunner;
  /** Where the host's data path lives (the daemon's own namespace when undefined). */
  netns?: NetnsTarget;
  /** The network modes this host builds (each renders only its own VPCs). */
  modes: readonly NetworkMode[];
  /** The external pool's CIDR and how it leaves the host (no eth0 network when undefined). */
  external?: { cidr: string; mode: ExternalMode };
  logger: Logger;
  metrics?: NetdMetrics;
  debounceMs?: number;
  /** Announces this host's routed blocks over BGP after each run (L3 fabrics). */
  bgp?: BgpSpeaker;
  /** This host's Open vSwitch bridge (vlan VPCs): its netd ports are converged after the links. */
  vlan?: VlanHost;
  /** The sources IPv6 routed ports may send from (converged with the routes). */
  guard?: SourceGuard;
  /** tagqueue's table: eth0 and routed ports' own addresses, the host and infrastructure out of reach. */
  ports?: PortGuard;
}

export class Reconciler {
  readonly claims = new PortClaims();
  /** Rate limits as last applied per port (re-applied in full after a restart: replace is idempotent). */
  private readonly appliedQos = new Map<string, QosSpec>();
  /** Bridges the last successful run left in place. */
  private bridgesUp = new Set<string>();
  /** Ports this process has set strict rp_filter on (see ensureStrictReversePath). */
  private readonly strictPorts = new Set<string>();
  /** Routed VPC tables whose rule and routes the last run (or an ADD) put in place. */
  private routedUp = new Set<number>();
  /** Whether this host builds routed VPCs (only then are routes and rules read and converged). */
  private readonly routes: boolean;
  /** The last read found none of netd's routes or rules and none were wanted. */
  private routingClean = false;
  /** The same for IPv6 alone (its reads, and the guard's, are spared while it holds). */
  private routing6Clean = false;
  private external: ReconcilerDeps['external'];
  /** Whether appliedQos has been read from the kernel (once, after a start: it knows nothing then). */
  private seeded = false;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Runs that completed (for tests and metrics). */
  runs = 0;
  /** Runs started so far, and the number of the last one finished (see converge()). */
  private started = 0;
  private finished = 0;
  private readonly finishListeners: Array<() => void> = [];
  /** Full runs and bridge wirings take turns: neither plans from a read the other is changing. */
  private turn: Promise<unknown> = Promise.resolve();
  lastError: string | undefined;

  constructor(private readonly deps: ReconcilerDeps) {
    this.external = deps.external;
    this.routes = deps.modes.some((m) => m.renderRouting !== undefined);
  }

  /** The external pool's CIDR becomes known once its pool is read (at start). */
  setExternal(external: NonNullable<ReconcilerDeps['external']>): void {
    this.external = external;
  }

  /** A run soon (debounced): many changes in a burst cost one run. */
  schedule(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.run().catch(() => undefined), this.deps.debounceMs ?? 20);
  }

  /** One run at a time; a request during a run triggers exactly one more run after it. */
  async run(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.once();
        } while (this.again && !this.stopped);
      } finally {
        // Cleared in the same step that saw no further request: a request made after it starts a
        // new loop instead of setting `again` for a loop that has ended.
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /**
   * Resolves once a run that started after this call has finished (successful or not: callers
   * judge the part they care about). Unlike awaiting run(), it cannot be kept waiting by a stream
   * of changes that keeps the loop going.
   */
  async converge(): Promise<void> {
    const wanted = this.started + 1;
    void this.run();
    while (this.finished < wanted) await new Promise<void>((resolve) => this.finishListeners.push(resolve));
  }

  /**
   * Puts one bridge in place as the view wants it (the bridge, its VXLAN device with FDB and
   * neighbour entries) and `port` on it, reading (unless it is absent) and changing only those links: what the first
   * ADD into a VPC on this host waits for, instead of a full run that lists every link of the
   * host (the full run still follows, for everything else). Returns whether `port` is on the
   * bridge now.
   */
  async wireBridge(bridgeName: string, port: string): Promise<boolean> {
    const { view, runner, netns, logger: log } = this.deps;
    return this.inTurn(async () => {
      const scoped = scopeToBridge(desiredState(view.snapshot(), [], this.deps.modes).l2, bridgeName, [port]);
      if (!scoped.bridges.has(bridgeName) || scoped.ports.get(port) !== bridgeName) return false;
      const ip = new IpClient(runner, netns);
      const clients = { ip, bridge: new BridgeClient(runner, netns) };
      // Not up after the last run: most likely absent, so create it without reading first.
      const created = !this.bridgesUp.has(bridgeName) && (await createAbsent(scoped, clients, log));
      if (!created) await reconcileL2(scoped, clients, log, () => this.protectedPorts(), linksOf(scoped));
      this.bridgesUp.add(bridgeName);
      return true;
    });
  }

  /**
   * Puts one routed VPC's rule and table in place as the view wants them (what the first ADD into
   * that VPC on this host waits for), reading only netd's routes and rules. Later ADDs into it only
   * add their own /32.
   */
  async wireRouted(vpc: { vni: number; cidr: string }): Promise<void> {
    const table = routedTable(vpc);
    const { family } = routedFamily(vpc.cidr);
    const { view, runner, netns, logger: log } = this.deps;
    // Judged in turn: a full run planned before this ADD's record was noted may be removing the
    // VPC's rules right now (its last container gone, this one new), and leaves routedUp stale.
    await this.inTurn(async () => {
      if (this.routedUp.has(table)) return;
      // From now on, full runs read routes and rules again (until one finds none of netd's).
      this.routingClean = false;
      if (family === 6) this.routing6Clean = false;
      const { routing } = desiredState(view.snapshot(), [], this.deps.modes);
      const ip = new IpClient(runner, netns);
      await reconcileRouting(routing, ip, log, {
        protect: () => this.protectedPorts(),
        inFlight: () => this.claims.names(),
        scope: { tables: new Set([table]) },
        families: new Set([family]),
      });
      this.routedUp.add(table);
    });
  }

  /** The bridge of this VPC when the last run left it up (a new port may join it as it is created). */
  bridgeUp(vni: number): string | undefined {
    const name = linkNames.bridge(vni);
    return this.bridgesUp.has(name) ? name : undefined;
  }

  /**
   * An ADD wired `hostIf` itself: the limits it applied are remembered. Returns true when the
   * port is complete (it joined its bridge as it was created, or needs none); false when a run is
   * still needed to put it on its bridge.
   */
  noteWired(hostIf: string, done: { joinedBridge: boolean; qos?: QosSpec; wiredNow?: boolean }): boolean {
    if (done.qos) this.appliedQos.set(hostIf, done.qos);
    // An ADD that wired the port set its rp_filter as its last step (a retry that found it wired
    // did not: ensureStrictReversePath still checks that one).
    if (done.wiredNow) this.strictPorts.add(hostIf);
    return done.joinedBridge;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private async once(): Promise<void> {
    const generation = ++this.started;
    try {
      await this.inTurn(() => this.converging());
    } finally {
      this.finished = generation;
      for (const done of this.finishListeners.splice(0)) done();
    }
  }

  private inTurn<T>(work: () => Promise<T>): Promise<T> {
    const mine = this.turn.then(work);
    this.turn = mine.catch(() => undefined);
    return mine;
  }

  private async converging(): Promise<void> {
    const { view, runner, netns, logger: log } = this.deps;
    const started = performance.now();
    try {
      const desired = desiredState(view.snapshot(), view.localExternals(), this.deps.modes);
      const ip = new IpClient(runner, netns);
      await reconcileL2(desired.l2, { ip, bridge: new BridgeClient(runner, netns) }, log, () => this.protectedPorts());
      // Routes and rules are read while there are routed VPCs here, and once more after the last
      // one left (or after a start): a host without any reads nothing more on each run.
      const wantsRouting = desired.routing.rules.size > 0 || desired.routing.routes.size > 0;
      if (this.routes && (wantsRouting || !this.routingClean)) {
        // IPv6 is read while IPv6 routed VPCs are here, and once more after the last one left.
        const wantsV6 = [...desired.routing.rules.values()].some((r) => parseCidr(r.from).family === 6);
        const readV6 = wantsV6 || !this.routing6Clean || this.deps.guard?.touched === true;
        const { owned } = await reconcileRouting(desired.routing, ip, log, {
          protect: () => this.protectedPorts(),
          inFlight: () => this.claims.names(),
          currentGuards: () => this.currentGuards(),
          families: new Set(readV6 ? [4, 6] : [4]),
          ...(this.deps.guard && { guard: this.deps.guard }),
        });
        if (readV6) this.routing6Clean = !wantsV6 && owned[6] === 0;
        this.routingClean = !wantsRouting && owned[4] === 0 && this.routing6Clean;
      }
      this.routedUp = new Set([...desired.routing.rules.values()].map((r) => r.table));
      const external = this.external;
      if (external) {
        await reconcileExternalProxies(
          ip,
          view.self.uplink,
          external.cidr,
          external.mode,
          () => ({ wanted: view.localExternals().map((e) => e.ip), inFlight: this.claims.names() }),
          log,
        );
      }
      this.bridgesUp = new Set(desired.l2.bridges.keys());
      // A speaker that is not there yet (BIRD starting) is retried on the next resync, without
      // failing the rest of the run.
      const routedExternals = this.external?.mode === 'routed' ? view.localExternals().map((e) => e.ip) : [];
      if (this.deps.bgp && !(await this.deps.bgp.converge(view.snapshot(), routedExternals)))
        setTimeout(() => this.schedule(), 1000).unref();
      await this.ensureStrictReversePath();
      await this.deps.ports?.reconcile(this.guardedPorts(), () => ({
        inFlight: this.claims.names(),
        current: this.guardedPorts(),
      }));
      const shaped = (port: string) => isShaped(desired.l2, port);
      if (!this.seeded) await this.seedAppliedQos(shaped);
      await this.applyQos(desired.qos, shaped);
      await this.reconcileVlan(desired.l2.ovsPorts);
      this.runs++;
      this.lastError = undefined;
      this.deps.metrics?.observeReconcile('ok', (performance.now() - started) / 1000);
    } catch (err) {
      this.lastError = describeError(err);
      this.deps.metrics?.observeReconcile('error', (performance.now() - started) / 1000);
      log.error({ err: this.lastError }, 'reconcile failed; will retry');
      setTimeout(() => this.schedule(), 500).unref();
    }
  }

  /**
   * The OVS bridge's netd ports, last: Open vSwitch being down or restarting must not hold up
   * anything else of the run (routes, QoS, other modes). Retried soon when it fails.
   */
  private async reconcileVlan(desired: ReadonlyMap<string, number>): Promise<void> {
    const { vlan, view, logger: log } = this.deps;
    if (!vlan) return;
    try {
      await vlan.reconcile(desired, {
        protect: () => this.protectedPorts(),
        inFlight: (port) => this.claims.has(port),
        containerOf: (port) => {
          const e = view.localEndpoints().find((x) => x.hostIf === port);
          return e?.netns && e.ifname ? { netnsPath: e.netns, ifname: e.ifname } : undefined;
        },
      });
    } catch (err) {
      log.warn({ part: 'vlan', err: describeError(err) }, 'OVS ports not reconciled; will retry');
      setTimeout(() => this.schedule(), 1000).unref();
    }
  }

  /**
   * Ports not to remove, as of now (not as of when the desired state was computed): those ADDs
   * are wiring (claimed before they are created), and those of every local record the view holds
   * by now.
   */
  private protectedPorts(): Set<string> {
    const out = this.claims.names();
    for (const e of this.deps.view.localEndpoints()) {
      out.add(e.hostIf);
      // A vlan port's shaper pair goes with the port (its record may be newer than the plan).
      if (this.deps.view.vpc(e.vpc)?.mode === 'vlan') out.add(linkNames.ifbFor(e.hostIf));
    }
    for (const e of this.deps.view.localExternals()) out.add(e.hostIf);
    return out;
  }

  /** The eth0 and routed eth1 ports of this host the view holds now, as tagqueue guards them. */
  private guardedPorts(): PortEntry[] {
    const { view } = this.deps;
    const out: PortEntry[] = view
      .localExternals()
      .map((e) => ({ port: e.hostIf, kind: 'external', ip: e.ip, mac: e.mac }));
    for (const e of view.localEndpoints()) {
      if (view.vpc(e.vpc)?.mode === 'routed') out.push({ port: e.hostIf, kind: 'routed', ip: e.ip, mac: e.mac });
    }
    return out;
  }

  /** Guard keys (source-guard.ts) of the local IPv6 routed records the view holds now. */
  private currentGuards(): Set<string> {
    const out = new Set<string>();
    for (const e of this.deps.view.localEndpoints()) {
      const vpc = this.deps.view.vpc(e.vpc);
      if (vpc?.mode === 'routed' && routedFamily(vpc.cidr).family === 6)
        out.add(guardKey({ port: e.hostIf, ip: e.ip }));
    }
    return out;
  }

  /**
   * Strict reverse-path filtering on every eth0 port and routed eth1 port (their containers may
   * send only with their own address), and no IPv6 on the ports that carry only IPv4 (eth0, IPv4
   * routed: a forged IPv6 source would be routed by an IPv6 VPC's table; IPv6 routed ports have the
   * source guard). An ADD sets it before the container's side comes up; this also covers a port
   * whose ADD was cut short after wiring (recovery keeps such an attachment) and everything after a
   * restart: each port once per process.
   */
  private async ensureStrictReversePath(): Promise<void> {
    const { view, runner, netns, logger: log } = this.deps;
    // Port → whether it carries IPv4 only.
    const want = new Map(view.localExternals().map((e) => [e.hostIf, true]));
    for (const e of view.localEndpoints()) {
      const vpc = view.vpc(e.vpc);
      if (vpc?.mode === 'routed') want.set(e.hostIf, routedFamily(vpc.cidr).family === 4);
    }
    for (const port of this.strictPorts) if (!want.has(port)) this.strictPorts.delete(port);
    const sysctl = new SysctlClient(runner, netns);
    for (const [port, ipv4Only] of want) {
      if (this.strictPorts.has(port) || this.claims.has(port)) continue;
      try {
        await sysctl.setAll([
          [`net.ipv4.conf.${port}.rp_filter`, 1],
          ...(ipv4Only ? ([[`net.ipv6.conf.${port}.disable_ipv6`, 1]] as const) : []),
        ]);
        this.strictPorts.add(port);
      } catch (err) {
        // Gone meanwhile (its DEL) or not there yet: the next run looks again.
        log.debug({ err: describeError(err), port }, 'rp_filter not set');
      }
    }
  }

  /**
   * What limits the kernel holds on netd's ports, read once after a start (one `tc` for all
   * devices): limits removed while netd was down are then taken off, and unchanged ones are not
   * re-sent.
   */
  private async seedAppliedQos(shaped: (port: string) => boolean): Promise<void> {
    const qdiscs = await new TcClient(this.deps.runner, this.deps.netns).allQdiscs();
    const rate = (dev: string) => {
      const tbf = qdiscs.find((q) => q.dev === dev && q.kind === 'tbf' && q.root);
      const bytes = tbf?.options?.rate;
      return typeof bytes === 'number' ? bytes * 8 : undefined;
    };
    for (const q of qdiscs) {
      if (!/^n[ie]/.test(q.dev) || this.appliedQos.has(q.dev)) continue;
      const ingressBps = rate(q.dev);
      // A shaper veth's redirect is there for as long as the port: its root tbf is the limit.
      const redirected = !shaped(q.dev) && qdiscs.some((x) => x.dev === q.dev && x.kind === 'ingress');
      // An ingress redirect with no readable rate still counts as "egress limited": it gets removed or replaced.
      const egressBps = redirected ? (rate(linkNames.ifbFor(q.dev)) ?? 0) : rate(linkNames.ifbFor(q.dev));
      if (ingressBps === undefined && egressBps === undefined) continue;
      this.appliedQos.set(q.dev, {
        ...(ingressBps !== undefined && { ingressBps }),
        ...(egressBps !== undefined && { egressBps }),
      });
    }
    this.seeded = true;
  }

  /** Applies changed rate limits with `tc` (replace: running flows are not disturbed). */
  private async applyQos(desired: Map<string, QosSpec>, shaped: (port: string) => boolean): Promise<void> {
    const tc = new TcClient(this.deps.runner, this.deps.netns);
    for (const port of new Set([...desired.keys(), ...this.appliedQos.keys()])) {
      // An ADD wiring this port applies its limits itself and reports them when done.
      if (this.claims.has(port)) continue;
      const want = desired.get(port);
      const had = this.appliedQos.get(port);
      if (JSON.stringify(want) === JSON.stringify(had)) continue;
      try {
        await tc.apply(qosBatch(port, linkNames.ifbFor(port), want, had, { shaper: shaped(port) }));
        if (want) this.appliedQos.set(port, want);
        else this.appliedQos.delete(port);
      } catch (err) {
        // The port is gone (container deleted) or not there yet (ADD in flight): nothing to shape.
        if (!isCommandError(err, 'not-found')) throw err;
        this.appliedQos.delete(port);
      }
    }
  }
}
