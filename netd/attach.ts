import { parseCidr } from '../core/cidr.js';
import { AppError, ErrorCodes, describeError } from '../core/errors.js';
import { IpBatch, IpBatchLane, IpClient } from '../sys/ip.js';
import { TcClient } from '../sys/tc.js';
import { qosBatch } from './qos.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import type { Ipam, Allocation } from '../ipam/allocator.js';
import { checkSegment } from '../ipam/keys.js';
import { linkNames, shortHash } from './names.js';
import { netdKeys } from './keys.js';
import type { EndpointRecord, HostRecord, QosSpec, VpcRecord } from './model.js';
import { VXLAN_OVERHEAD } from './modes/vxlan.js';

/**
 * Attaching a container to a VPC (its eth1), in the order that makes a crash at any point
 * recoverable: address (ipam handle names the netns) → endpoint record (the intent) → veth pair,
 * container side moved into the container's netns and configured → the reconciler puts the host
 * side on the VPC bridge. A failure rolls back everything done so far, the address included.
 */

export interface AttachRequest {
  containerId: string;
  ifname: string;
  netnsPath: string;
  vpc: string;
  mac?: string;
  ip?: string;
  qos?: QosSpec;
}

/** What an ADD did itself, so the daemon's reconcile need not redo it. */
export interface ConvergeHints {
  /** The port joined its VPC bridge as it was created. */
  joinedBridge: boolean;
  /** These rate limits are in place on the port (and its ifb). */
  qos?: QosSpec;
}

export interface AttachDeps {
  store: Store;
  ipam: Ipam;
  runner: CommandRunner;
  host: HostRecord;
  /** The host's namespace (the daemon's own when undefined). */
  hostNetns?: NetnsTarget;
  logger?: Logger;
  /** Called once the endpoint record exists and the veth is in place (e.g. a local reconcile). */
  converge?: (endpoint: EndpointRecord, opts?: ConvergeHints) => Promise<void>;
  /**
   * Marks a name (a host port, an ifb, an eth0 address's proxy entry) as being wired by this ADD
   * until the returned function is called, so a concurrent reconcile does not take it for an orphan.
   */
  claimPort?: (name: string) => () => void;
  /** Shared by the daemon's concurrent ADDs: their host-side batches go out together. */
  hostLane?: IpBatchLane;
  /**
   * The daemon's view, to answer from memory what would otherwise be etcd round trips on the ADD
   * path: the VPC record, whether this VPC's bridge is already up on this host (then the new port
   * joins it in the same batch that creates it), and whether a record exists.
   */
  view?: {
    vpc(name: string): VpcRecord | undefined;
    bridgeUp(vpc: VpcRecord): string | undefined;
    /** A record's value when the view is in sync with etcd (null: none); undefined: ask etcd. */
    record(key: string): string | null | undefined;
  };
}

export interface Attachment {
  endpoint: EndpointRecord;
  allocation: Allocation;
  mtu: number;
}

export function endpointId(containerId: string, ifname: string): string {
  return `${containerId}:${ifname}`;
}

/** A stable locally administered MAC per endpoint, so a retried ADD gets the same one. */
/** 02:<VNI's low byte>:<the four address bytes>: one MAC per address in a VPC (locally administered). */
export function macForAddress(vni: number, ip: string): string {
  const bytes = [vni & 0xff, ...ip.split('.').map(Number)];
  return `02:${bytes.map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
}

export function endpointMac(id: string): string {
  const h = shortHash(`mac:${id}`);
  return `02:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}:${h.slice(6, 8)}:${h.slice(8, 10)}`;
}

export async function loadVpc(store: Store, name: string): Promise<VpcRecord> {
  const kv = await store.get(netdKeys.vpc(checkSegment('vpc', name)));
  if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, `no VPC "${name}"`, { vpc: name });
  return JSON.parse(kv.value) as VpcRecord;
}

export async function attachInternal(req: AttachRequest, deps: AttachDeps): Promise<Attachment> {
  const id = endpointId(checkSegment('containerId', req.containerId), req.ifname);
  const log = (deps.logger ?? silentLogger()).child({ component: 'netd', vpc: req.vpc, container: req.containerId });
  const vpc = deps.view?.vpc(checkSegment('vpc', req.vpc)) ?? (await loadVpc(deps.store, req.vpc));
  const mtu = vpc.mtu ?? deps.host.underlayMtu - VXLAN_OVERHEAD;
  const hostIf = linkNames.internalPort(id);
  const hostIp = new IpClient(deps.runner, deps.hostNetns);
  const inside = new IpClient(deps.runner, { path: req.netnsPath });
  const undo: Array<() => Promise<unknown>> = [];
  const recordKey = netdKeys.endpoint(vpc.name, id);
  const existing = await knownRecord(recordKey, deps);
  if (existing) {
    // ADD again (a runtime retry): a complete attachment is returned as it is; a half-done one
    // (a daemon that died mid-ADD) is finished below, reusing its address. Either way, nothing that
    // an earlier ADD created is undone by a failure now.
    const prior = JSON.parse(existing) as EndpointRecord;
    const wired =
      (await hostIp.link(hostIf)) !== undefined &&
      (await inside.addresses(req.ifname).catch(() => [])).some((a) => a.addr_info.some((x) => x.local === prior.ip));
    if (wired) {
      const [held] = (await deps.ipam.getHandle(id)).filter((h) => h.pool === vpc.name);
      if (held) {
        await deps.converge?.(prior);
        return {
          endpoint: prior,
          allocation: {
            handle: id,
            pool: vpc.name,
            ip: held.ip,
            cidr: `${held.ip}/${held.prefixLength}`,
            gateway: '',
            seq: held.seq,
            block: held.block,
          },
          mtu,
        };
      }
    }
  }
  // Without a record there is no earlier allocation to keep: an ADD that died after allocating
  // without writing its record left a handle that recovery releases, so only a retry needs to look.
  const hadAddress = existing ? (await deps.ipam.getHandle(id)).some((h) => h.pool === vpc.name) : false;
  // The endpoint's own limits, else its VPC's defaults: applied by this ADD, not a later reconcile.
  const qos = req.qos ?? vpc.qos;
  const releasePort = deps.claimPort?.(hostIf);
  const releaseIfb = qos?.egressBps !== undefined ? deps.claimPort?.(linkNames.ifbFor(hostIf)) : undefined;
  try {
    // On an IPv4 VPC the MAC follows the address (unless the runtime asked for one): the VXLAN
    // devices answer ARP themselves, so a peer never hears a new container's ARP, and a reused
    // address must not leave peers' caches pointing at an old MAC. The veth is created before the
    // address is known, under a provisional MAC that round 2 replaces before the link comes up.
    const ipv4 = parseCidr(vpc.cidr).family === 4;
    const creationMac = (req.mac ?? endpointMac(id)).toLowerCase();
    const macFor = (ip: string) => (req.mac === undefined && ipv4 ? macForAddress(vpc.vni, ip) : creationMac);
    let endpoint: EndpointRecord | undefined;
    const recordFor = (
      allocation: Allocation,
    ): EndpointRecord & { containerId: string; ifname: string; netns: string } => ({
      vpc: vpc.name,
      id,
      host: deps.host.name,
      ip: allocation.ip,
      mac: macFor(allocation.ip),
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    });
    const bridge = deps.view?.bridgeUp(vpc);
    const plug = {
      hostIp,
      inside,
      hostIf,
      netnsPath: req.netnsPath,
      ifname: req.ifname,
      mac: creationMac,
      mtu,
      fresh: !existing,
      ipv4Only: parseCidr(vpc.cidr).family === 4,
      ...(bridge && { master: bridge }),
      ...(deps.hostLane && { hostLane: deps.hostLane }),
    };
    const wired = await wireVeth(
      { ...plug, ...(qos && { qos: { spec: qos, tc: new TcClient(deps.runner, deps.hostNetns) } }) },
      undo,
      {
        allocate: async () => {
          const allocation = await deps.ipam.allocate({
            pool: vpc.name,
            handle: id,
            owner: { containerId: req.containerId, ifname: req.ifname, netns: req.netnsPath },
            ...(req.ip !== undefined && { ip: req.ip }),
            // The endpoint record goes into the allocation's transaction: one etcd write per ADD.
            alsoWrite: (a) => ({ key: recordKey, value: JSON.stringify(recordFor(a)) }),
          });
          if (!hadAddress) undo.push(() => deps.ipam.releaseHandle(id, vpc.name));
          if (!existing) undo.push(() => deps.store.delete(recordKey));
          return allocation;
        },
        persist: async (allocation) => {
          endpoint = recordFor(allocation);
          if (!allocation.wroteAlso) await deps.store.put(recordKey, JSON.stringify(endpoint));
        },
        beforeUp: (inNs, allocation) => {
          const final = macFor(allocation.ip);
          if (final !== creationMac) inNs.linkSet(req.ifname, { address: final });
        },
        inside: (inNs, allocation) => inNs.addrAdd(allocation.cidr, req.ifname),
      },
    );
    await deps.converge?.(endpoint!, { joinedBridge: wired.joinedBridge, ...(qos && { qos }) });
    log.info({ ip: wired.allocation.ip, hostIf }, 'attached');
    return { endpoint: endpoint!, allocation: wired.allocation, mtu };
  } catch (err) {
    log.warn({ err: describeError(err) }, 'attach failed; rolling back');
    for (const step of undo.reverse())
      await step().catch((e: unknown) => log.error({ err: describeError(e) }, 'rollback step failed'));
    throw err;
  } finally {
    releasePort?.();
    releaseIfb?.();
  }
}

/**
 * The record under `key` as this daemon knows it: from its view when that is in sync with etcd
 * (every record this host writes enters the view at once), else from etcd. Saves a round trip on
 * every first ADD.
 */
async function knownRecord(key: string, deps: AttachDeps): Promise<string | undefined> {
  const local = deps.view?.record(key);
  if (local !== undefined) return local ?? undefined;
  return (await deps.store.get(key))?.value;
}

/** Idempotent: whatever is already gone is success (the netns may be gone too). */
export async function detachInternal(
  req: { containerId: string; ifname: string; vpc: string },
  deps: AttachDeps,
): Promise<void> {
  const id = endpointId(req.containerId, req.ifname);
  // The record goes while the kernel deletes the pair (~20 ms of RCU waits); the address is
  // released only once no interface carries it any more.
  await Promise.all([removePort(deps, linkNames.internalPort(id)), deps.store.delete(netdKeys.endpoint(req.vpc, id))]);
  await deps.ipam.releaseHandle(id, req.vpc);
}

/** A host port and its ifb (if it had egress limits), and `extra` removals, in one `ip` process. */
export async function removePort(
  deps: Pick<AttachDeps, 'runner' | 'hostNetns'>,
  hostIf: string,
  extra?: (b: IpBatch) => void,
): Promise<void> {
  const b = new IpBatch().linkDel(hostIf).linkDel(linkNames.ifbFor(hostIf));
  extra?.(b);
  await new IpClient(deps.runner, deps.hostNetns).applyForgivingMissing(b);
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
  undo: Array<() => Promise<unknown>>,
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
  undo.push(() => p.hostIp.deleteLinkIfExists(p.hostIf));
  if (ifb) undo.push(() => p.hostIp.deleteLinkIfExists(ifb));
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
