import { contains, formatCidr, formatIp, parseCidr, parseIp, type Cidr } from '../../core/cidr.js';
import type { HostRecord, VpcRecord } from '../../tenancy/records.js';
import type { HostSnapshot } from '../model.js';
import { emptyDesired, type DesiredL2, type NetworkMode } from './mode.js';
import { LINK_LOCAL_GATEWAY } from '../names.js';
import { guardKey, type GuardEntry } from '../source-guard.js';

/**
 * routed mode (Calico-style): no bridge, no encapsulation, no NAT. Each container's eth1 holds a /32
 * behind a link-local gateway that is a host address in the VPC's table only; the host routes each
 * local container's /32 to its port and each remote block of the VPC (ipam block affinity) to the
 * host that claimed it, with a /32 for an address borrowed outside its host's blocks.
 *
 * Isolation without a firewall: a VPC's routes live in a table of their own, reached only through
 * a rule `from <VPC CIDR>`, and the table ends in `prohibit`. A packet from one VPC therefore finds
 * no route to another VPC, to the external pool or to the underlay; one from outside finds no route
 * to a container (the main table has none). Strict reverse-path filtering on each port drops a
 * packet whose source is not that container's address, so a container cannot borrow another
 * VPC's source to pick its table. (Addresses of the host itself are answered by the kernel's local
 * table before any rule: guarding those is tagqueue's eth0/infrastructure policy.)
 *
 * IPv6 VPCs the same way with /128s: the gateway is fe80::1, an address of each port itself (the
 * host answers neighbour solicitations for it there), remote blocks go to their hosts' IPv6
 * underlay addresses, and since IPv6 has no rp_filter, each port's one source is enforced by
 * nftables (source-guard.ts).
 */

/** Marks netd's routes and rules (`proto 78`, "N"), so the reconciler finds exactly its own. */
export const ROUTED_PROTO = 78;
/** Priority of the VPC rules: after the local table (0), before main (32766). */
export const ROUTED_RULE_PRIORITY = 1000;
/** A VPC's routing table: 0x4e000000 + its VNI (VNIs are 24 bits and unique). */
export const ROUTED_TABLE_BASE = 0x4e000000;
/** The gateway every routed container's eth1 uses; the host answers ARP for it on each port. */
export const ROUTED_GATEWAY = LINK_LOCAL_GATEWAY;
/** The gateway of IPv6 routed containers: a link-local address of each host port. */
export const ROUTED_GATEWAY6 = 'fe80::1';

/** A routed VPC's gateway and the prefix length of its containers' addresses, by family. */
export function routedFamily(cidr: string): { family: 4 | 6; gateway: string; hostPrefix: 32 | 128; any: string } {
  return parseCidr(cidr).family === 4
    ? { family: 4, gateway: ROUTED_GATEWAY, hostPrefix: 32, any: 'default' }
    : { family: 6, gateway: ROUTED_GATEWAY6, hostPrefix: 128, any: '::/0' };
}

export function routedTable(vpc: Pick<VpcRecord, 'vni'>): number {
  return ROUTED_TABLE_BASE + vpc.vni;
}

export interface RouteSpec {
  table: number;
  /** A CIDR; `default` for an IPv4 table's final route (`::/0` for an IPv6 one). */
  dst: string;
  /** Unicast when absent. */
  type?: 'prohibit' | 'local';
  dev?: string;
  via?: string;
  scope?: 'link';
}

export interface RuleSpec {
  from: string;
  /** Only packets to this CIDR (absent: any destination). */
  to?: string;
  table: number;
  priority: number;
}

export interface DesiredRouting {
  /** Keyed by routeKey(). */
  routes: Map<string, RouteSpec>;
  /** Keyed by ruleKey(). */
  rules: Map<string, RuleSpec>;
  /** IPv6 routed ports and their one source address (keyed by guardKey()). */
  guards: Map<string, GuardEntry>;
}

export function routeKey(r: Pick<RouteSpec, 'table' | 'dst'>): string {
  return `${r.table}|${r.dst === 'default' ? 'default' : formatCidr(parseCidr(r.dst))}`;
}

export function ruleKey(r: RuleSpec): string {
  const to = r.to === undefined ? '' : formatCidr(parseCidr(r.to));
  return `${r.priority}|${formatCidr(parseCidr(r.from))}|${to}|${r.table}`;
}

export function emptyRouting(): DesiredRouting {
  return { routes: new Map(), rules: new Map(), guards: new Map() };
}

export interface RoutedModeOptions {
  /**
   * On an L3 fabric (hosts on different subnets), the next hop for every remote block: the
   * fabric's router, which learns each host's blocks over BGP (bgp.ts). Without it, remote blocks
   * go straight to the host that claimed them (the hosts share a segment).
   */
  fabricGateway?: string;
  /** The same for IPv6 VPCs: the router's IPv6 address. */
  fabricGateway6?: string;
}

/** The routing part of one routed VPC on this host (only hosts with a local endpoint of it). */
export function renderRouting(view: HostSnapshot, opts: RoutedModeOptions = {}): DesiredRouting {
  const out = emptyRouting();
  const self = view.self.name;
  const localVpcs = new Set(view.endpoints.filter((e) => e.host === self).map((e) => e.vpc));
  for (const vpcId of localVpcs) {
    const vpc = view.vpcs.get(vpcId);
    if (!vpc || vpc.mode !== 'routed') continue;
    const table = routedTable(vpc);
    const { family, gateway, hostPrefix, any } = routedFamily(vpc.cidr);
    const add = (r: RouteSpec) => out.routes.set(routeKey(r), r);
    // The next hop towards another host: the fabric's router, else the host's own address of the
    // VPC's family (a host without an IPv6 underlay address is not reachable for IPv6 VPCs).
    const nextHop = (h: HostRecord) =>
      family === 4 ? (opts.fabricGateway ?? h.underlayIp) : (opts.fabricGateway6 ?? ipv6Of(h.underlayIp6));
    const rules: RuleSpec[] = [{ from: vpc.cidr, table, priority: ROUTED_RULE_PRIORITY }];
    // The kernel answers a container's ARP for the gateway only if the reverse path from the
    // gateway to the asker checks out (strict rp_filter): that lookup has the gateway as its
    // source. A packet really sent from the gateway's address by a container fails the same
    // check on its way in (the gateway's route is `lo`, not the port). (IPv6: the gateway is an
    // address of the port itself; neighbour discovery needs no route.)
    if (family === 4) rules.push({ from: `${gateway}/32`, to: vpc.cidr, table, priority: ROUTED_RULE_PRIORITY });
    for (const r of rules) out.rules.set(ruleKey(r), r);
    add({ table, dst: any, type: 'prohibit' });
    // The gateway is a local address of the host in this table only: the kernel answers a
    // container's ARP for it on the port (with arp_ignore 0, the default), and a packet sent to it
    // ends at the host. (A unicast route through `lo` would answer ARP too, with a proxy entry, but
    // forwards each such packet round `lo` until its TTL runs out: 63 copies per packet.)
    if (family === 4) add({ table, dst: `${gateway}/32`, type: 'local', dev: 'lo' });
    const blocks = blocksOf(view, vpc);
    // Remote blocks, to the host that claimed them (alive: a dead host's routes are withdrawn).
    for (const b of blocks) {
      const host = b.host === self ? undefined : view.hosts.get(b.host);
      const via = host && nextHop(host);
      if (via) add({ table, dst: b.cidr, via, dev: view.self.uplink });
    }
    const parsedBlocks = blocks.map((b) => ({ host: b.host, cidr: b.parsed }));
    for (const e of view.endpoints) {
      if (e.vpc !== vpc.name) continue;
      if (e.host === self) {
        add({ table, dst: `${e.ip}/${hostPrefix}`, dev: e.hostIf, ...(family === 4 && { scope: 'link' as const }) });
        if (family === 6) {
          const guard = { port: e.hostIf, ip: e.ip };
          out.guards.set(guardKey(guard), guard);
        }
        continue;
      }
      const host = view.hosts.get(e.host);
      const via = host && nextHop(host);
      if (!via) continue;
      // Borrowed: its address lies in no block its own host claimed (or in a block of this host).
      const ip = parseIp(e.ip);
      const inOwnBlock = parsedBlocks.some((b) => b.host === e.host && contains(b.cidr, ip));
      if (!inOwnBlock) add({ table, dst: `${e.ip}/${hostPrefix}`, via, dev: view.self.uplink });
    }
  }
  return out;
}

/**
 * A host's IPv6 underlay address as the kernel prints it, when it can be one: a unicast address
 * outside `::/8`, link-local and multicast, without a zone. Undefined otherwise (a host record
 * is read, not trusted, here; the flag is checked with it too).
 */
export function ipv6Of(text: string | undefined): string | undefined {
  if (text === undefined || text.includes('%')) return undefined;
  try {
    const ip = parseIp(text);
    if (ip.family !== 6 || ['::/8', 'fe80::/10', 'ff00::/8'].some((c) => contains(parseCidr(c), ip))) return undefined;
    return formatIp(ip);
  } catch {
    return undefined;
  }
}

/**
 * The VPC's address blocks and their hosts, as the ipam affinity index says: only well-formed
 * blocks inside the VPC's CIDR (a malformed or foreign key must not break a host's routing, nor
 * route the gateway or another network).
 */
export function blocksOf(
  view: HostSnapshot,
  vpc: Pick<VpcRecord, 'name' | 'cidr'>,
): Array<{ host: string; cidr: string; parsed: Cidr }> {
  const net = parseCidr(vpc.cidr);
  const out: Array<{ host: string; cidr: string; parsed: Cidr }> = [];
  for (const b of view.blocks ?? []) {
    if (b.pool !== vpc.name) continue;
    let parsed: Cidr;
    try {
      parsed = parseCidr(b.cidr, { strict: true });
    } catch {
      continue;
    }
    if (
      parsed.family !== net.family ||
      parsed.prefixLength < net.prefixLength ||
      !contains(net, { family: parsed.family, value: parsed.network })
    )
      continue;
    out.push({ host: b.host, cidr: formatCidr(parsed), parsed });
  }
  return out;
}

export function createRoutedMode(opts: RoutedModeOptions = {}): NetworkMode {
  return {
    name: 'routed',
    /** The L2 part: each local container's port, on no bridge. */
    render(view: HostSnapshot): DesiredL2 {
      const desired = emptyDesired();
      for (const e of view.endpoints) {
        if (e.host !== view.self.name || view.vpcs.get(e.vpc)?.mode !== 'routed') continue;
        desired.ports.set(e.hostIf, '');
      }
      return desired;
    },
    renderRouting: (view) => renderRouting(view, opts),
  };
}

/** Hosts on one segment: remote blocks straight to their hosts. */
export const routedMode = createRoutedMode();
