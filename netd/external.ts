import { describeError } from '../core/errors.js';
import { parseCidr, formatCidr } from '../core/cidr.js';
import { IpClient } from '../sys/ip.js';
import { NftClient, NftTransaction } from '../sys/nft.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import { silentLogger } from '../sys/log.js';
import { checkSegment } from '../ipam/keys.js';
import type { Allocation } from '../ipam/allocator.js';
import { endpointId, endpointMac, plugVeth, type AttachDeps } from './attach.js';
import { externalKeys } from './keys.js';
import { linkNames, shortHash } from './names.js';
import type { QosSpec } from './model.js';

/**
 * eth0, the external interface: an address from the external pool as a /32, a default route via a
 * link-local gateway that the host answers by proxy ARP (Calico's trick: no per-container gateway
 * address, no bridge), a /32 host route to the container, and source NAT out of the host's uplink.
 * Nothing of a VPC is reachable this way: VPC bridges carry no address on the host.
 */

export const LINK_LOCAL_GATEWAY = '169.254.1.1';
const NAT_TABLE = 'netd_nat';

export interface ExternalEndpointRecord {
  id: string;
  host: string;
  pool: string;
  ip: string;
  mac: string;
  hostIf: string;
  containerId: string;
  ifname: string;
  netns: string;
  qos?: QosSpec;
}

export type ExternalDeps = Omit<AttachDeps, 'converge'> & {
  externalPool: string;
  /** Called once the record exists and the interface is in place (e.g. a local reconcile). */
  convergeExternal?: (e: ExternalEndpointRecord) => Promise<void>;
};

export interface ExternalAttachment {
  endpoint: ExternalEndpointRecord;
  allocation: Allocation;
}

export async function attachExternal(
  req: { containerId: string; ifname: string; netnsPath: string; mac?: string; ip?: string; qos?: QosSpec },
  deps: ExternalDeps,
): Promise<ExternalAttachment> {
  const id = endpointId(checkSegment('containerId', req.containerId), req.ifname);
  const log = (deps.logger ?? silentLogger()).child({ component: 'netd', container: req.containerId, ifname: req.ifname });
  const hostIf = linkNames.externalPort(id);
  const tmpIf = `nu${shortHash(id)}`;
  const hostIp = new IpClient(deps.runner, deps.hostNetns);
  const inside = new IpClient(deps.runner, { path: req.netnsPath });
  const key = externalKeys.endpoint(deps.host.name, id);
  const existing = await deps.store.get(key);
  const hadAddress = (await deps.ipam.getHandle(id)).some((h) => h.pool === deps.externalPool);
  const undo: Array<() => Promise<unknown>> = [];
  const releasePort = deps.claimPort?.(hostIf);
  try {
    const allocation = await deps.ipam.allocate({
      pool: deps.externalPool,
      handle: id,
      owner: { containerId: req.containerId, ifname: req.ifname, netns: req.netnsPath },
      ...(req.ip !== undefined && { ip: req.ip }),
    });
    if (!hadAddress) undo.push(() => deps.ipam.releaseHandle(id, deps.externalPool));
    const endpoint: ExternalEndpointRecord = {
      id,
      host: deps.host.name,
      pool: deps.externalPool,
      ip: allocation.ip,
      mac: (req.mac ?? endpointMac(id)).toLowerCase(),
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    };
    await deps.store.put(key, JSON.stringify(endpoint));
    if (!existing) undo.push(() => deps.store.delete(key));
    const gateway = `${LINK_LOCAL_GATEWAY}/32`;
    await plugVeth({ hostIp, inside, hostIf, tmpIf, netnsPath: req.netnsPath, ifname: req.ifname, mac: endpoint.mac, mtu: deps.host.underlayMtu }, undo, (onHost, inNs) => {
      onHost
        .routeReplace(`${allocation.ip}/32`, { dev: hostIf, scope: 'link' })
        // The host answers ARP for the link-local gateway on this port (an explicit proxy entry).
        .add('neigh', 'replace', 'proxy', LINK_LOCAL_GATEWAY, 'dev', hostIf);
      inNs
        .addrAdd(`${allocation.ip}/32`, req.ifname)
        .routeReplace(gateway, { dev: req.ifname, scope: 'link' })
        .routeReplace('default', { via: LINK_LOCAL_GATEWAY, dev: req.ifname, onlink: true });
    });
    await deps.convergeExternal?.(endpoint);
    log.info({ ip: allocation.ip }, 'external interface attached');
    return { endpoint, allocation };
  } catch (err) {
    log.warn({ err: describeError(err) }, 'external attach failed; rolling back');
    for (const step of undo.reverse()) await step().catch(() => undefined);
    throw err;
  } finally {
    releasePort?.();
  }
}

export async function detachExternal(req: { containerId: string; ifname: string }, deps: ExternalDeps): Promise<void> {
  const id = endpointId(req.containerId, req.ifname);
  await new IpClient(deps.runner, deps.hostNetns).deleteLinkIfExists(linkNames.externalPort(id));
  await deps.store.delete(externalKeys.endpoint(deps.host.name, id));
  await deps.ipam.releaseHandle(id, deps.externalPool);
}

/** Source NAT for the external pool out of the uplink: one owned table, rewritten atomically. */
export async function ensureExternalNat(runner: CommandRunner, hostNetns: NetnsTarget | undefined, cidr: string, uplink: string): Promise<void> {
  const net = formatCidr(parseCidr(cidr));
  await new NftClient(runner, hostNetns).apply(
    new NftTransaction()
      .addTable('ip', NAT_TABLE)
      .addChain('ip', NAT_TABLE, 'outbound', { type: 'nat', hook: 'postrouting', priority: 100 })
      .flushChain('ip', NAT_TABLE, 'outbound')
      .addRule('ip', NAT_TABLE, 'outbound', `ip saddr ${net} oifname "${uplink}" masquerade`),
  );
}
