import { IpBatch, type IpBatchLane, type IpClient } from '../../sys/ip.js';
import { isCommandError } from '../../sys/runner.js';
import type { TcClient } from '../../sys/tc.js';
import type { QosSpec } from '../../tenancy/records.js';
import { linkNames } from '../names.js';
import { qosBatch } from '../qos.js';
import type { UndoStack } from './undo.js';

/**
 * The plumbing of one container interface: a veth pair whose container end is created directly
 * in the container's namespace, wired in two rounds of independent work (see wireVeth).
 */

/** A host port and its ifb (if it had egress limits), and `extra` removals, in one `ip` process. */
export async function removePort(hostIp: IpClient, hostIf: string, extra?: (b: IpBatch) => void): Promise<void> {
  const b = new IpBatch().linkDel(hostIf).linkDel(linkNames.ifbFor(hostIf));
  extra?.(b);
  await hostIp.applyForgivingMissing(b);
}

export interface VethPlug {
  hostIp: IpClient;
  inside: IpClient;
  hostIf: string;
  netnsPath: string;
  ifname: string;
  mac: string;
  mtu: number;
  /** A first ADD: no leftovers of an earlier attempt can exist. */
  fresh?: boolean;
  /** The bridge the host end joins as it is created (it must exist). */
  master?: string;
  /** Coalesces host-side batches of concurrent ADDs into one `ip` process (else one each). */
  hostLane?: IpBatchLane;
  /** Rate limits applied by this ADD itself (the ifb created with the pair, tc beside round 2). */
  qos?: { spec: QosSpec; tc: TcClient };
  /**
   * The container's interface carries IPv4 only: it gets no IPv6 link-local address either (as
   * Calico disables IPv6 on IPv4-only workload interfaces). Bringing up a link with IPv6 costs the
   * kernel DAD, router solicitations and MLD: ~23% of wiring time measured at 1,000 containers.
   */
  ipv4Only?: boolean;
}

/** What one container interface needs beyond the veth pair. Each step registers its own undo. */
export interface WireSteps<T> {
  /** The address (and with it, normally, the intent record): runs while the pair is created. */
  allocate(): Promise<T & { ip: string }>;
  /** The intent record when the allocation did not write it: runs beside the container side. */
  persist(allocation: T): Promise<void>;
  /** Host-side lines for the batch that creates the pair. */
  onHost?(b: IpBatch): void;
  /** Host-side lines that need the address (their own batch, beside the container side). */
  onHostWithAddress?(b: IpBatch, allocation: T): void;
  /** Container-side lines while the link is still down (e.g. its final MAC). */
  beforeUp?(b: IpBatch, allocation: T): void;
  /** Container-side lines: addresses, routes. */
  inside(b: IpBatch, allocation: T): void;
}

/**
 * Wires one container interface in two rounds of independent work run side by side:
 *   1. allocate the address and write the record (one etcd transaction)  ‖  create the veth pair,
 *      its container end created directly in the container's netns under its final name and MAC,
 *      the host end up and on its bridge;
 *   2. configure the container side  ‖  host lines that need the address.
 * A crash in between leaves a port without a record (the reconciler removes orphan ports) or a
 * record whose wiring is incomplete (recovery removes it, its address with it).
 */
export async function wireVeth<T>(
  p: VethPlug,
  undo: UndoStack,
  steps: WireSteps<T>,
): Promise<{ allocation: T; joinedBridge: boolean }> {
  const ifb = p.qos?.spec.egressBps !== undefined ? linkNames.ifbFor(p.hostIf) : undefined;
  const clearLeftovers = async () => {
    await p.hostIp.deleteLinkIfExists(p.hostIf);
    if (ifb) await p.hostIp.deleteLinkIfExists(ifb);
  };
  if (!p.fresh) await clearLeftovers();
  let joinedBridge = p.master !== undefined;
  const create = async (master: string | undefined) => {
    // The host end never needs an IPv6 address (an L2 port, or a routed /32 with an IPv4 gateway).
    const b = new IpBatch()
      .linkAddVeth(p.hostIf, p.ifname, {
        mtu: p.mtu,
        peerNetns: p.netnsPath,
        peerAddress: p.mac,
        ...(master !== undefined && { master }),
      })
      .linkSet(p.hostIf, { addrGenMode: 'none' })
      .linkSet(p.hostIf, { up: true });
    if (ifb) b.linkAddIfb(ifb).linkSet(ifb, { up: true });
    steps.onHost?.(b);
    await (p.hostLane ? p.hostLane.submit(b) : p.hostIp.apply(b));
  };
  undo.push('delete host port', () => p.hostIp.deleteLinkIfExists(p.hostIf));
  if (ifb) undo.push('delete ifb', () => p.hostIp.deleteLinkIfExists(ifb));
  // Creates the pair, recovering (at most once each) from leftovers of an interrupted run and
  // from a bridge that went away under the fast path.
  let master = p.master;
  let clearedLeftovers = false;
  const createPair = async (): Promise<void> => {
    try {
      await create(master);
    } catch (err) {
      if (!isCommandError(err)) throw err;
      if (isCommandError(err, 'exists') && !clearedLeftovers) {
        // Leftovers that nothing recorded (the reconciler would remove them at its next pass), or
        // this very pair when a shared `ip` process stopped after creating it: clear and redo.
        clearedLeftovers = true;
        await clearLeftovers();
        return createPair();
      }
      // The bridge went away (a reconcile removing an emptied VPC): create the port on its own and
      // let the full reconcile recreate the bridge. `link add` is atomic.
      if (master === undefined) throw err;
      master = undefined;
      joinedBridge = false;
      await clearLeftovers();
      return createPair();
    }
  };
  const [allocation] = await settleAll([steps.allocate(), createPair()] as const);
  // (The peer cannot be brought up as it is created in another namespace: the kernel refuses.)
  const inNs = new IpBatch();
  if (p.ipv4Only) inNs.linkSet(p.ifname, { addrGenMode: 'none' });
  steps.beforeUp?.(inNs, allocation);
  inNs.linkSet(p.ifname, { up: true });
  steps.inside(inNs, allocation);
  const onHost = new IpBatch();
  steps.onHostWithAddress?.(onHost, allocation);
  await settleAll([
    steps.persist(allocation),
    p.inside.apply(inNs),
    onHost.empty ? undefined : p.hostIp.apply(onHost),
    p.qos ? p.qos.tc.apply(qosBatch(p.hostIf, linkNames.ifbFor(p.hostIf), p.qos.spec, undefined)) : undefined,
  ]);
  return { allocation, joinedBridge };
}

/** Promise.all that lets every promise finish before it throws (so every undo is registered). */
async function settleAll<T extends readonly unknown[]>(work: T): Promise<{ -readonly [K in keyof T]: Awaited<T[K]> }> {
  const settled = await Promise.allSettled(work);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as {
    -readonly [K in keyof T]: Awaited<T[K]>;
  };
}
