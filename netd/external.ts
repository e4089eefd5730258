import { describeError } from '../core/errors.js';
import { parseCidr, formatCidr, contains, parseIp } from '../core/cidr.js';
import { IpBatch, IpClient } from '../sys/ip.js';
import { TcClient } from '../sys/tc.js';
import { NftClient, NftTransaction } from '../sys/nft.js';
import { SysctlClient } from '../sys/sysctl.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import { silentLogger, type Logger } from '../sys/log.js';
import { checkSegment } from '../ipam/keys.js';
import type { Allocation } from '../ipam/allocator.js';
import { endpointId, endpointMac, removePort, wireVeth, type AttachDeps } from './attach.js';
import { externalKeys } from './keys.js';
import { linkNames } from './names.js';
import type { QosSpec } from './model.js';

/**
 * eth0, the external interface: an address from the external pool as a /32, a default route via a
 * link-local gateway that the host answers by proxy ARP (Calico's trick: no per-container gateway
 * address, no bridge), and a /32 host route to the container. Out of the host's uplink it is
 * either NAT'd to the host's address (`nat`) or routed as it is (`routed`: the host answers ARP
 * for the container's address on the uplink, so the upstream router needs only an on-link route
 * to the pool, or the pool is part of the uplink's subnet). Nothing of a VPC is reachable this
 * way: VPC bridges carry no address on the host.
 */

export type ExternalMode = 'nat' | 'routed';
export const EXTERNAL_MODES: readonly ExternalMode[] = ['nat', 'routed'];

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
  /** Default `nat`. */
  externalMode?: ExternalMode;
  /** Called once the record exists and the interface is in place, with the limits it applied. */
  convergeExternal?: (e: ExternalEndpointRecord, qosApplied?: QosSpec) => Promise<void>;
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
  const log = (deps.logger ?? silentLogger()).child({
    component: 'netd',
    container: req.containerId,
    ifname: req.ifname,
  });
  const hostIf = linkNames.externalPort(id);
  const hostIp = new IpClient(deps.runner, deps.hostNetns);
  const inside = new IpClient(deps.runner, { path: req.netnsPath });
  const key = externalKeys.endpoint(deps.host.name, id);
  const known = deps.view?.record(key);
  const existing = known !== undefined ? known !== null : (await deps.store.get(key)) !== undefined;
  // Only a retry can hold an address already (a first ADD that died before its record was written
  // left a handle that recovery releases).
  const hadAddress = existing && (await deps.ipam.getHandle(id)).some((h) => h.pool === deps.externalPool);
  const undo: Array<() => Promise<unknown>> = [];
  const releasePort = deps.claimPort?.(hostIf);
  const releaseIfb = req.qos?.egressBps !== undefined ? deps.claimPort?.(linkNames.ifbFor(hostIf)) : undefined;
  const mac = (req.mac ?? endpointMac(id)).toLowerCase();
  const routed = deps.externalMode === 'routed';
  let releaseProxy: (() => void) | undefined;
  let endpoint: ExternalEndpointRecord | undefined;
  const recordFor = (a: Allocation): ExternalEndpointRecord => ({
    id,
    host: deps.host.name,
    pool: deps.externalPool,
    ip: a.ip,
    mac,
    hostIf,
    containerId: req.containerId,
    ifname: req.ifname,
    netns: req.netnsPath,
    ...(req.qos && { qos: req.qos }),
  });
  try {
    // eth0 is IPv4 (a /32 behind the IPv4 link-local gateway).
    const plug = {
      hostIp,
      inside,
      hostIf,
      netnsPath: req.netnsPath,
      ifname: req.ifname,
      mac,
      mtu: deps.host.underlayMtu,
      fresh: !existing,
      ipv4Only: true,
      ...(deps.hostLane && { hostLane: deps.hostLane }),
    };
    const { allocation } = await wireVeth(
      { ...plug, ...(req.qos && { qos: { spec: req.qos, tc: new TcClient(deps.runner, deps.hostNetns) } }) },
      undo,
      {
        allocate: async () => {
          const a = await deps.ipam.allocate({
            pool: deps.externalPool,
            handle: id,
            owner: { containerId: req.containerId, ifname: req.ifname, netns: req.netnsPath },
            ...(req.ip !== undefined && { ip: req.ip }),
            alsoWrite: (x) => ({ key, value: JSON.stringify(recordFor(x)) }),
          });
          if (!hadAddress) undo.push(() => deps.ipam.releaseHandle(id, deps.externalPool));
          if (!existing) undo.push(() => deps.store.delete(key));
          if (routed) {
            releaseProxy = deps.claimPort?.(proxyClaim(a.ip));
            undo.push(() => hostIp.applyForgivingMissing(new IpBatch().proxyNeighDel(a.ip, deps.host.uplink)));
          }
          return a;
        },
        persist: async (a) => {
          endpoint = recordFor(a);
          if (!a.wroteAlso) await deps.store.put(key, JSON.stringify(endpoint));
        },
        // The host answers ARP for the link-local gateway on this port (an explicit proxy entry).
        onHost: (b) => b.add('neigh', 'replace', 'proxy', LINK_LOCAL_GATEWAY, 'dev', hostIf),
        onHostWithAddress: (b, a) => {
          b.routeReplace(`${a.ip}/32`, { dev: hostIf, scope: 'link' });
          if (routed) b.proxyNeighReplace(a.ip, deps.host.uplink);
        },
        inside: (b, a) =>
          b
            .addrAdd(`${a.ip}/32`, req.ifname)
            .routeReplace(`${LINK_LOCAL_GATEWAY}/32`, { dev: req.ifname, scope: 'link' })
            .routeReplace('default', { via: LINK_LOCAL_GATEWAY, dev: req.ifname, onlink: true }),
      },
    );
    // The host answers the container's ARP for the gateway at once (proxy replies are otherwise
    // delayed up to proxy_delay, 0.8 s: a slow first packet). Calico does the same on its ports.
    await new SysctlClient(deps.runner, deps.hostNetns).set(`net.ipv4.neigh.${hostIf}.proxy_delay`, 0);
    await deps.convergeExternal?.(endpoint!, req.qos);
    log.info({ ip: allocation.ip }, 'external interface attached');
    return { endpoint: endpoint!, allocation };
  } catch (err) {
    log.warn({ err: describeError(err) }, 'external attach failed; rolling back');
    for (const step of undo.reverse()) await step().catch(() => undefined);
    throw err;
  } finally {
    releasePort?.();
    releaseIfb?.();
    releaseProxy?.();
  }
}

export async function detachExternal(req: { containerId: string; ifname: string }, deps: ExternalDeps): Promise<void> {
  const id = endpointId(req.containerId, req.ifname);
  const key = externalKeys.endpoint(deps.host.name, id);
  let address: string | undefined;
  if (deps.externalMode === 'routed') {
    // The uplink stops answering for the address before the address can go to someone else.
    const known = deps.view?.record(key);
    const text = known !== undefined ? known : (await deps.store.get(key))?.value;
    if (text) address = (JSON.parse(text) as ExternalEndpointRecord).ip;
  }
  // As for eth1: the record goes while the kernel deletes the pair, the address after.
  const extra = address !== undefined ? (b: IpBatch) => b.proxyNeighDel(address, deps.host.uplink) : undefined;
  await Promise.all([removePort(deps, linkNames.externalPort(id), extra), deps.store.delete(key)]);
  await deps.ipam.releaseHandle(id, deps.externalPool);
}

/** The claim (AttachDeps.claimPort) an ADD holds on its address's proxy entry while it wires it. */
export const proxyClaim = (ip: string) => `proxy:${ip}`;

/**
 * Converges the proxy entries on the uplink for the external pool: one per local eth0 address
 * in `routed` mode, none in `nat` mode. Entries outside the pool are not netd's and stay.
 * `addresses` is asked after the kernel is read, so an ADD that finished meanwhile is counted.
 */
export async function reconcileExternalProxies(
  ip: IpClient,
  uplink: string,
  poolCidr: string,
  mode: ExternalMode,
  addresses: () => { wanted: Iterable<string>; inFlight: ReadonlySet<string> },
  log: Logger,
): Promise<void> {
  const pool = parseCidr(poolCidr);
  const have = (await ip.proxyNeighbours(uplink)).filter(
    (a) => a.includes(':') === (pool.family === 6) && contains(pool, parseIp(a)),
  );
  const { wanted, inFlight } = addresses();
  const want = new Set(mode === 'routed' ? wanted : []);
  const b = new IpBatch();
  for (const a of want) if (!have.includes(a)) b.proxyNeighReplace(a, uplink);
  for (const a of have) if (!want.has(a) && !inFlight.has(proxyClaim(a))) b.proxyNeighDel(a, uplink);
  if (b.empty) return;
  log.info({ uplink, mode }, 'external proxy entries converged');
  await ip.applyForgivingMissing(b);
}

/**
 * How the external pool leaves through the uplink: `nat` keeps one owned table with a masquerade
 * rule (rewritten atomically); `routed` removes that table and makes the uplink's proxy ARP replies
 * immediate.
 */
export async function ensureExternalEgress(
  runner: CommandRunner,
  hostNetns: NetnsTarget | undefined,
  cidr: string,
  uplink: string,
  mode: ExternalMode,
): Promise<void> {
  const net = formatCidr(parseCidr(cidr));
  const tx = new NftTransaction();
  // Routed: the uplink answers ARP for containers at once, not after a random proxy_delay.
  if (mode === 'routed') await new SysctlClient(runner, hostNetns).set(`net.ipv4.neigh.${uplink}.proxy_delay`, 0);
  if (mode === 'routed') tx.deleteTable('ip', NAT_TABLE);
  else {
    tx.addTable('ip', NAT_TABLE)
      .addChain('ip', NAT_TABLE, 'outbound', { type: 'nat', hook: 'postrouting', priority: 100 })
      .flushChain('ip', NAT_TABLE, 'outbound')
      .addRule('ip', NAT_TABLE, 'outbound', `ip saddr ${net} oifname "${uplink}" masquerade`);
  }
  await new NftClient(runner, hostNetns).apply(tx);
}
