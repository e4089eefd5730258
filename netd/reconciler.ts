import { describeError } from '../core/errors.js';
import { IpClient } from '../sys/ip.js';
import { BridgeClient } from '../sys/bridge.js';
import { TcClient } from '../sys/tc.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import type { ExternalEndpointRecord, QosSpec } from '../tenancy/records.js';
import { reconcile as reconcileL2 } from './dataplane.js';
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
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Runs that completed (for tests and metrics). */
  runs = 0;
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
      do {
        this.again = false;
        await this.once();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  /** Runs now and fails if the data path did not converge. */
  async converge(): Promise<void> {
    await this.run();
    if (this.lastError) throw new Error(`data path not converged: ${this.lastError}`);
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
