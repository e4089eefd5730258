import { AppError, ErrorCodes } from '../../core/errors.js';
import { IpBatch, type IpBatchLane, type IpClient } from '../../sys/ip.js';
import { isCommandError } from '../../sys/runner.js';
import { TcBatch, type TcClient } from '../../sys/tc.js';
import type { QosSpec } from '../../tenancy/records.js';
import { linkNames } from '../names.js';
import { qosBatch, shaperRedirects } from '../qos.js';
import type { UndoStack } from './undo.js';

/**
 * The plumbing of one container interface: a veth pair whose container end is created directly
 * in the container's namespace, wired in two rounds of independent work (see wireVeth).
 */

/**
 * A host port and its ifb (if it had egress limits), and `extra` removals, in one `ip` process.
 * `leaveShaper`: a vlan port's shaper veth pair stays for the reconciler to collect (see detach).
 */
export async function removePort(
  hostIp: IpClient,
  hostIf: string,
  extra?: (b: IpBatch) => void,
  opts: { leaveShaper?: boolean } = {},
): Promise<void> {
  const b = new IpBatch().linkDel(hostIf);
  if (!opts.leaveShaper) b.linkDel(linkNames.ifbFor(hostIf));
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
  qos?: QosSpec;
  /** How tc reaches the host (needed with `qos` or `shaper`). */
  tc?: TcClient;
  /**
   * The port's egress is shaped on a veth of its own that the plan creates (`onHost`), not an ifb:
   * vlan on OVS's userspace datapath (see vlan-host.ts). It is removed with the port.
   */
  shaper?: boolean;
  /**
   * The container's interface gets no IPv6 link-local address: it carries IPv4 only (as Calico
   * disables IPv6 on IPv4-only workload interfaces), or a routed IPv6 /128 that needs none. Bringing
   * up a link with IPv6 costs the kernel DAD, router solicitations and MLD: ~23% of wiring time
   * measured at 1,000 containers.
   */
  noLinkLocal?: boolean;
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
  /**
   * What must hold before the container's interface comes up (round 2): e.g. the port's
   * anti-spoofing, so no packet the container sends is ever unchecked.
   */
  secure?(allocation: T): Promise<void>;
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
  // The device egress is shaped on (an ifb made here, or the plan's shaper veth): cleared and undone with the port.
  const ifb = p.shaper || p.qos?.egressBps !== undefined ? linkNames.ifbFor(p.hostIf) : undefined;
  const clearLeftovers = async () => {
    await p.hostIp.deleteLinkIfExists(p.hostIf);
    if (ifb) await p.hostIp.deleteLinkIfExists(ifb);
  };
  if (!p.fresh) await clearLeftovers();
  let joinedBridge = p.master !== undefined;
  const create = async (master: string | undefined) => {
    // The host end needs no IPv6 address of its own making (an L2 port; a routed port gets fe80::1
    // from its plan when its VPC is IPv6).
    const b = new IpBatch()
      .linkAddVeth(p.hostIf, p.ifname, {
        mtu: p.mtu,
        peerNetns: p.netnsPath,
        peerAddress: p.mac,
        ...(master !== undefined && { master }),
      })
      .linkSet(p.hostIf, { addrGenMode: 'none' })
      .linkSet(p.hostIf, { up: true });
    if (ifb && !p.shaper) b.linkAddIfb(ifb).linkSet(ifb, { up: true });
    steps.onHost?.(b);
    await (p.hostLane ? p.hostLane.submit(b) : p.hostIp.apply(b));
  };
  undo.push('delete host port', () => p.hostIp.deleteLinkIfExists(p.hostIf));
  if (ifb) undo.push(p.shaper ? 'delete shaper' : 'delete ifb', () => p.hostIp.deleteLinkIfExists(ifb));
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
      // Still there after clearing our leftovers: the container already has an interface by the
      // name asked for (not ours to remove). Said plainly, not as the kernel's "File exists".
      if (isCommandError(err, 'exists') && (await p.inside.link(p.ifname).catch(() => undefined))) {
        throw new AppError(
          ErrorCodes.ALREADY_EXISTS,
          `the container already has an interface named ${p.ifname} (in ${p.netnsPath}); ask for another name`,
          { ifname: p.ifname },
        );
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
  await steps.secure?.(allocation);
  // (The peer cannot be brought up as it is created in another namespace: the kernel refuses.)
  const inNs = new IpBatch();
  if (p.noLinkLocal) inNs.linkSet(p.ifname, { addrGenMode: 'none' });
  steps.beforeUp?.(inNs, allocation);
  inNs.linkSet(p.ifname, { up: true });
  steps.inside(inNs, allocation);
  const onHost = new IpBatch();
  steps.onHostWithAddress?.(onHost, allocation);
  // The shaper's redirects (the port does not reach OVS without them) and the port's limits.
  const tcBatch = p.shaper ? shaperRedirects(p.hostIf, linkNames.ifbFor(p.hostIf)) : new TcBatch();
  if (p.qos) qosBatch(p.hostIf, linkNames.ifbFor(p.hostIf), p.qos, undefined, { shaper: p.shaper === true }, tcBatch);
  await settleAll([
    steps.persist(allocation),
    p.inside.apply(inNs),
    onHost.empty ? undefined : p.hostIp.apply(onHost),
    tcBatch.empty ? undefined : p.tc!.apply(tcBatch),
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
