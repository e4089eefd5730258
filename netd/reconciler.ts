import { describeError } from '../core/errors.js';
import { IpClient } from '../sys/ip.js';
import { BridgeClient } from '../sys/bridge.js';
import { TcClient } from '../sys/tc.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import type { ExternalEndpointRecord, QosSpec } from '../tenancy/records.js';
import { createAbsent, linksOf, reconcile as reconcileL2, scopeToBridge } from './dataplane.js';
import { reconcileExternalProxies, type ExternalMode } from './external.js';
import type { HostView } from './host-view.js';
import type { DesiredL2, NetworkMode } from './modes/mode.js';
import type { HostSnapshot } from './model.js';
import { linkNames } from './names.js';
import { PortClaims } from './port-claims.js';
import { qosBatch } from './qos.js';
import type { NetdMetrics } from './metrics.js';

/**
 * Converges this host's data path to its HostView (Felix-style: desired vs actual, ordered
 * batches), debounced and one run at a time. Its desired state is the network mode's rendering
 * plus what lives beside it: eth0 ports (routed, on no bridge), rate limits per port (applied ones
 * are remembered, so only changes reach tc), and the names ADDs in flight have claimed, which it
 * leaves alone.
 */

export interface HostDesired {
  l2: DesiredL2;
  /** Rate limits per host port: the endpoint's own, else its VPC's defaults. */
  qos: Map<string, QosSpec>;
}

/** The pure half: what this host's data path must hold, from a snapshot of its view. */
export function desiredState(
  snapshot: HostSnapshot,
  externals: readonly ExternalEndpointRecord[],
  mode: NetworkMode,
): HostDesired {
  const l2 = mode.render(snapshot);
  const qos = new Map<string, QosSpec>();
  for (const e of snapshot.endpoints) {
    if (e.host !== snapshot.self.name) continue;
    const q = e.qos ?? snapshot.vpcs.get(e.vpc)?.qos;
    if (q && (q.ingressBps !== undefined || q.egressBps !== undefined)) qos.set(e.hostIf, q);
  }
  for (const e of externals) {
    // eth0 ports are routed, on no bridge; listing them keeps them from looking orphaned.
    l2.ports.set(e.hostIf, '');
    if (e.qos) qos.set(e.hostIf, e.qos);
  }
  for (const [port, q] of qos) if (q.egressBps !== undefined) l2.ifbs.add(linkNames.ifbFor(port));
  return { l2, qos };
}

export interface ReconcilerDeps {
  view: HostView;
  runner: CommandRunner;
  /** Where the host's data path lives (the daemon's own namespace when undefined). */
  netns?: NetnsTarget;
  mode: NetworkMode;
  /** The external pool's CIDR and how it leaves the host (no eth0 network when undefined). */
  external?: { cidr: string; mode: ExternalMode };
  logger: Logger;
  metrics?: NetdMetrics;
  debounceMs?: number;
}

export class Reconciler {
  readonly claims = new PortClaims();
  /** Rate limits as last applied per port (re-applied in full after a restart: replace is idempotent). */
  private readonly appliedQos = new Map<string, QosSpec>();
  /** Bridges the last successful run left in place. */
  private bridgesUp = new Set<string>();
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
      const scoped = scopeToBridge(desiredState(view.snapshot(), [], this.deps.mode).l2, bridgeName, [port]);
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
  noteWired(hostIf: string, done: { joinedBridge: boolean; qos?: QosSpec }): boolean {
    if (done.qos) this.appliedQos.set(hostIf, done.qos);
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
      const desired = desiredState(view.snapshot(), view.localExternals(), this.deps.mode);
      const ip = new IpClient(runner, netns);
      await reconcileL2(desired.l2, { ip, bridge: new BridgeClient(runner, netns) }, log, () => this.protectedPorts());
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
      if (!this.seeded) await this.seedAppliedQos();
      await this.applyQos(desired.qos);
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
   * Ports not to remove, as of now (not as of when the desired state was computed): those ADDs
   * are wiring (claimed before they are created), and those of every local record the view holds
   * by now.
   */
  private protectedPorts(): Set<string> {
    const out = this.claims.names();
    for (const e of this.deps.view.localEndpoints()) out.add(e.hostIf);
    for (const e of this.deps.view.localExternals()) out.add(e.hostIf);
    return out;
  }

  /**
   * What limits the kernel holds on netd's ports, read once after a start (one `tc` for all
   * devices): limits removed while netd was down are then taken off, and unchanged ones are not
   * re-sent.
   */
  private async seedAppliedQos(): Promise<void> {
    const qdiscs = await new TcClient(this.deps.runner, this.deps.netns).allQdiscs();
    const rate = (dev: string) => {
      const tbf = qdiscs.find((q) => q.dev === dev && q.kind === 'tbf' && q.root);
      const bytes = tbf?.options?.rate;
      return typeof bytes === 'number' ? bytes * 8 : undefined;
    };
    for (const q of qdiscs) {
      if (!/^n[ie]/.test(q.dev) || this.appliedQos.has(q.dev)) continue;
      const ingressBps = rate(q.dev);
      const redirected = qdiscs.some((x) => x.dev === q.dev && x.kind === 'ingress');
      // An ingress redirect with no readable rate still counts as "egress limited": it gets removed or replaced.
      const egressBps = redirected ? (rate(linkNames.ifbFor(q.dev)) ?? 0) : undefined;
      if (ingressBps === undefined && egressBps === undefined) continue;
      this.appliedQos.set(q.dev, {
        ...(ingressBps !== undefined && { ingressBps }),
        ...(egressBps !== undefined && { egressBps }),
      });
    }
    this.seeded = true;
  }

  /** Applies changed rate limits with `tc` (replace: running flows are not disturbed). */
  private async applyQos(desired: Map<string, QosSpec>): Promise<void> {
    const tc = new TcClient(this.deps.runner, this.deps.netns);
    for (const port of new Set([...desired.keys(), ...this.appliedQos.keys()])) {
      // An ADD wiring this port applies its limits itself and reports them when done.
      if (this.claims.has(port)) continue;
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
}
