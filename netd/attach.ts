import { AppError, ErrorCodes, describeError } from '../core/errors.js';
import { IpBatch, IpClient } from '../sys/ip.js';
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

export interface AttachDeps {
  store: Store;
  ipam: Ipam;
  runner: CommandRunner;
  host: HostRecord;
  /** The host's namespace (the daemon's own when undefined). */
  hostNetns?: NetnsTarget;
  logger?: Logger;
  /** Called once the endpoint record exists and the veth is in place (e.g. a local reconcile). */
  converge?: (endpoint: EndpointRecord, opts?: { joinedBridge: boolean }) => Promise<void>;
  /**
   * The daemon's view, to answer from memory what would otherwise be etcd round trips on the ADD
   * path: the VPC record, and whether this VPC's bridge is already up on this host (then the new
   * port joins it in the same batch that creates it).
   */
  /**
   * Marks a host port as being wired by this ADD until the returned function is called, so a
   * concurrent reconcile does not mistake it for an orphan.
   */
  claimPort?: (hostIf: string) => () => void;
  view?: {
    vpc(name: string): VpcRecord | undefined;
    bridgeUp(vpc: VpcRecord): string | undefined;
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
  const tmpIf = `nt${shortHash(id)}`;
  const hostIp = new IpClient(deps.runner, deps.hostNetns);
  const inside = new IpClient(deps.runner, { path: req.netnsPath });
  const undo: Array<() => Promise<unknown>> = [];
  const recordKey = netdKeys.endpoint(vpc.name, id);
  const existing = await deps.store.get(recordKey);
  if (existing) {
    // ADD again (a runtime retry): a complete attachment is returned as it is; a half-done one
    // (a daemon that died mid-ADD) is finished below, reusing its address. Either way, nothing that
    // an earlier ADD created is undone by a failure now.
    const prior = JSON.parse(existing.value) as EndpointRecord;
    const wired = (await hostIp.link(hostIf)) !== undefined && (await inside.addresses(req.ifname).catch(() => [])).some((a) => a.addr_info.some((x) => x.local === prior.ip));
    if (wired) {
      const [held] = (await deps.ipam.getHandle(id)).filter((h) => h.pool === vpc.name);
      if (held) {
        await deps.converge?.(prior);
        return { endpoint: prior, allocation: { handle: id, pool: vpc.name, ip: held.ip, cidr: `${held.ip}/${held.prefixLength}`, gateway: '', seq: held.seq, block: held.block }, mtu };
      }
    }
  }
  // Without a record there is no earlier allocation to keep: an ADD that died after allocating
  // wrote its record first (recovery settles those), so only a retry needs to look.
  const hadAddress = existing ? (await deps.ipam.getHandle(id)).some((h) => h.pool === vpc.name) : false;
  const releasePort = deps.claimPort?.(hostIf);
  try {
    const allocation = await deps.ipam.allocate({
      pool: vpc.name,
      handle: id,
      owner: { containerId: req.containerId, ifname: req.ifname, netns: req.netnsPath },
      ...(req.ip !== undefined && { ip: req.ip }),
    });
    if (!hadAddress) undo.push(() => deps.ipam.releaseHandle(id, vpc.name));
    const endpoint: EndpointRecord & { containerId: string; ifname: string; netns: string } = {
      vpc: vpc.name,
      id,
      host: deps.host.name,
      ip: allocation.ip,
      mac: (req.mac ?? endpointMac(id)).toLowerCase(),
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    };
    await deps.store.put(recordKey, JSON.stringify(endpoint));
    if (!existing) undo.push(() => deps.store.delete(recordKey));

    const bridge = req.qos ? undefined : deps.view?.bridgeUp(vpc);
    const plug = { hostIp, inside, hostIf, tmpIf, netnsPath: req.netnsPath, ifname: req.ifname, mac: endpoint.mac, mtu, fresh: !existing };
    let joinedBridge = bridge !== undefined;
    try {
      await plugVeth(plug, undo, (onHost, inNs) => {
        if (bridge) onHost.linkSet(hostIf, { master: bridge, up: true });
        inNs.addrAdd(allocation.cidr, req.ifname);
      });
    } catch (err) {
      // The bridge went away under the fast path (a reconcile removing an emptied VPC): plug the
      // port on its own and let the full reconcile below recreate the bridge.
      if (!bridge || !isCommandError(err)) throw err;
      joinedBridge = false;
      await plugVeth({ ...plug, fresh: false }, undo, (_onHost, inNs) => inNs.addrAdd(allocation.cidr, req.ifname));
    }
    await deps.converge?.(endpoint, { joinedBridge });
    log.info({ ip: allocation.ip, hostIf }, 'attached');
    return { endpoint, allocation, mtu };
  } catch (err) {
    log.warn({ err: describeError(err) }, 'attach failed; rolling back');
    for (const step of undo.reverse()) await step().catch((e: unknown) => log.error({ err: describeError(e) }, 'rollback step failed'));
    throw err;
  } finally {
    releasePort?.();
  }
}

/** Idempotent: whatever is already gone is success (the netns may be gone too). */
export async function detachInternal(req: { containerId: string; ifname: string; vpc: string }, deps: AttachDeps): Promise<void> {
  const id = endpointId(req.containerId, req.ifname);
  await new IpClient(deps.runner, deps.hostNetns).deleteLinkIfExists(linkNames.internalPort(id));
  await deps.store.delete(netdKeys.endpoint(req.vpc, id));
  await deps.ipam.releaseHandle(id, req.vpc);
}

export interface VethPlug {
  hostIp: IpClient;
  inside: IpClient;
  hostIf: string;
  tmpIf: string;
  netnsPath: string;
  ifname: string;
  mac: string;
  mtu: number;
  /** A first ADD: no leftovers of an earlier attempt can exist (those wrote a record first). */
  fresh?: boolean;
}

/**
 * The veth pair of one container interface: created in the host namespace (clearing leftovers of
 * an ADD that died half-way), the container end moved into the container's netns under a
 * temporary name, then renamed and configured there. `extra` adds what the interface kind needs to
 * the host-side and container-side batches. Registers its own undo.
 */
export async function plugVeth(p: VethPlug, undo: Array<() => Promise<unknown>>, extra: (onHost: IpBatch, inside: IpBatch) => void): Promise<void> {
  if (!p.fresh) {
    await p.hostIp.deleteLinkIfExists(p.tmpIf);
    await p.hostIp.deleteLinkIfExists(p.hostIf);
  }
  const onHost = new IpBatch().linkAddVeth(p.hostIf, p.tmpIf, { mtu: p.mtu }).linkSet(p.tmpIf, { netns: p.netnsPath }).linkSet(p.hostIf, { up: true });
  const inside = new IpBatch().linkSet(p.tmpIf, { name: p.ifname }).linkSet(p.ifname, { address: p.mac, mtu: p.mtu, up: true });
  extra(onHost, inside);
  await p.hostIp.apply(onHost);
  undo.push(() => p.hostIp.deleteLinkIfExists(p.hostIf));
  await p.inside.apply(inside);
}
