import { contains, formatIp, parseCidr, parseIp, type Cidr } from '../../core/cidr.js';
import { extack, FakeKernelUnmodelled, rtnl } from './errors.js';
import {
  MAIN_TABLE,
  removeWhere,
  ZERO_MAC,
  type Address,
  type FakeLink,
  type FakeNetns,
  type NeighEntry,
  type RouteEntry,
  type Scope,
} from './state.js';

/**
 * Addresses, routes, neighbour and proxy entries, VXLAN FDB entries: how the kernel adds,
 * replaces and deletes them, and what it says when it refuses (an address brings its prefix
 * route while its link is up; a gateway must be on a connected route; `ip neigh` exits at the
 * first kernel error; the kernel appends remotes only to flood entries).
 */

export function addAddress(link: FakeLink, cidr: string, mode: 'add' | 'replace'): void {
  const a = parseAddress(cidr);
  const existing = link.addresses.find((x) => x.local === a.local && x.prefixlen === a.prefixlen);
  if (existing) {
    if (mode === 'replace') return;
    throw a.family === 4 ? extack('ipv4: Address already assigned.') : extack('ipv6: address already assigned.');
  }
  link.addresses.push(a);
  if (link.up) addPrefixRoute(link, a);
}

export function deleteAddress(link: FakeLink, cidr: string): void {
  const a = parseAddress(cidr);
  const i = link.addresses.findIndex((x) => x.local === a.local && x.prefixlen === a.prefixlen);
  if (i < 0) throw extack(a.family === 4 ? 'ipv4: Address not found.' : 'ipv6: address not found.');
  link.addresses.splice(i, 1);
  const ns = link.ns;
  removeWhere(ns.routes, (r) => r.protocol === 'kernel' && r.dev === link && r.prefsrc === a.local);
  // Routes that used the address as their source go with it (fib_sync_down_addr).
  if (!ns.hasLocalAddress(a.local)) removeWhere(ns.routes, (r) => r.prefsrc === a.local);
  // A remaining address of the same subnet takes over the prefix route.
  for (const other of link.addresses) if (link.up) addPrefixRoute(link, other);
}

function parseAddress(text: string): Address {
  const c = parseCidr(text, { strict: false });
  const slash = text.indexOf('/');
  const local = formatIp(parseIp(text.slice(0, slash)));
  const scope: Scope =
    c.family === 4 && local.startsWith('127.')
      ? 'host'
      : c.family === 6 && /^fe[89ab]/i.test(local)
        ? 'link'
        : 'global';
  return { family: c.family, local, prefixlen: c.prefixLength, scope };
}

/** The kernel's route for a primary IPv4 address's subnet, while the link is up. */
export function addPrefixRoute(link: FakeLink, a: Address): void {
  if (a.family !== 4 || a.prefixlen >= 32 || a.scope === 'host') return;
  const dst = parseCidr(`${a.local}/${a.prefixlen}`, { strict: false });
  const routes = link.ns.routes;
  const present = routes.some(
    (r) =>
      r.protocol === 'kernel' &&
      r.dev === link &&
      r.dst.network === dst.network &&
      r.dst.prefixLength === dst.prefixLength,
  );
  if (present) return;
  routes.push({
    table: MAIN_TABLE,
    dst,
    dev: link,
    protocol: 'kernel',
    scope: 'link',
    prefsrc: a.local,
    onlink: false,
  });
}

export interface RouteSpec {
  dst: string;
  via?: string;
  dev?: FakeLink;
  src?: string;
  scope?: Scope;
  table?: number;
  onlink?: boolean;
}

export function parseRouteDst(text: string): Cidr {
  if (text === 'default') return { family: 4, network: 0n, prefixLength: 0 };
  const withLen = text.includes('/') ? text : `${text}/${text.includes(':') ? 128 : 32}`;
  const loose = parseCidr(withLen, { strict: false });
  if (loose.network !== parseIp(withLen.slice(0, withLen.indexOf('/'))).value)
    throw extack('Invalid prefix for given prefix length.');
  return loose;
}

export function replaceRoute(ns: FakeNetns, s: RouteSpec): void {
  const dst = parseRouteDst(s.dst);
  if (dst.family !== 4) throw new FakeKernelUnmodelled('IPv6 routes');
  const table = s.table ?? MAIN_TABLE;
  let dev = s.dev;
  if (s.via !== undefined) {
    const gw = parseIp(s.via);
    if (s.onlink) {
      if (!dev) throw extack('Nexthop device required for onlink');
      if (!dev.up) throw extack('Nexthop device is not up.');
    } else {
      // The gateway must be on a connected (link-scope) route, through `dev` when given.
      const via = lookup(ns, ns.tables.has(table) ? table : MAIN_TABLE, gw, ['link', 'host']);
      if (!via || (dev && via.dev !== dev)) throw extack('Nexthop has invalid gateway.');
      dev = via.dev;
    }
  } else {
    if (!dev) throw new FakeKernelUnmodelled('a route with neither "via" nor "dev"');
    if (!dev.up) throw extack('Device for nexthop is not up.');
  }
  if (s.src !== undefined && !ns.hasLocalAddress(formatIp(parseIp(s.src)))) throw extack('Invalid prefsrc address.');
  const entry: RouteEntry = {
    table,
    dst,
    ...(s.via !== undefined && { gateway: formatIp(parseIp(s.via)) }),
    dev: dev!,
    protocol: 'boot',
    scope: s.scope ?? (s.via !== undefined ? 'global' : 'link'),
    ...(s.src !== undefined && { prefsrc: formatIp(parseIp(s.src)) }),
    onlink: s.onlink ?? false,
  };
  ns.tables.add(table);
  const i = ns.routes.findIndex((r) => r.table === table && sameDst(r.dst, dst));
  if (i >= 0) ns.routes[i] = entry;
  else ns.routes.push(entry);
}

export function deleteRoute(ns: FakeNetns, s: { dst: string; dev?: FakeLink; table?: number }): void {
  const dst = parseRouteDst(s.dst);
  const table = s.table ?? MAIN_TABLE;
  const i = ns.routes.findIndex((r) => r.table === table && sameDst(r.dst, dst) && (!s.dev || r.dev === s.dev));
  if (i < 0) throw rtnl('No such process');
  ns.routes.splice(i, 1);
}

function lookup(ns: FakeNetns, table: number, ip: ReturnType<typeof parseIp>, scopes: Scope[]): RouteEntry | undefined {
  return ns.routes
    .filter((r) => r.table === table && scopes.includes(r.scope) && contains(r.dst, ip))
    .sort((a, b) => b.dst.prefixLength - a.dst.prefixLength)[0];
}

function sameDst(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.network === b.network && a.prefixLength === b.prefixLength;
}

// ---- neighbours, proxies, FDB ---------------------------------------------------------------

/** `ip neigh` exits at the first kernel error, even in a -force batch. */
const neighNotFound = () => rtnl('No such file or directory', { fatal: true });

export function replaceNeighbour(dev: FakeLink, dst: string, lladdr: string, nud: NeighEntry['nud']): void {
  const ip = formatIp(parseIp(dst));
  const entry = { dst: ip, dev, lladdr: lladdr.toLowerCase(), nud };
  const i = dev.ns.neighbours.findIndex((n) => n.dev === dev && n.dst === ip);
  if (i >= 0) dev.ns.neighbours[i] = entry;
  else dev.ns.neighbours.push(entry);
}

export function deleteNeighbour(dev: FakeLink, dst: string): void {
  const ip = formatIp(parseIp(dst));
  if (!removeWhere(dev.ns.neighbours, (n) => n.dev === dev && n.dst === ip)) throw neighNotFound();
}

export function replaceProxy(dev: FakeLink, dst: string): void {
  const ip = formatIp(parseIp(dst));
  if (!dev.ns.proxies.some((p) => p.dev === dev && p.dst === ip)) dev.ns.proxies.push({ dst: ip, dev });
}

export function deleteProxy(dev: FakeLink, dst: string): void {
  const ip = formatIp(parseIp(dst));
  if (!removeWhere(dev.ns.proxies, (p) => p.dev === dev && p.dst === ip)) throw neighNotFound();
}

const isGroupMac = (mac: string) => mac === ZERO_MAC || (parseInt(mac.slice(0, 2), 16) & 1) === 1;

export function fdbAdd(vx: FakeLink, mac: string, dst: string, mode: 'append' | 'replace'): void {
  const remotes = vx.fdb.get(mac);
  if (!remotes) {
    vx.fdb.set(mac, [dst]);
    return;
  }
  if (mode === 'replace') {
    if (isGroupMac(mac)) throw extack('Cannot replace non-unicast fdb entries.');
    remotes[0] = dst;
    return;
  }
  // The kernel appends remotes only to the all-zero (flood) and multicast entries; on a unicast
  // entry `append` keeps what is there.
  if (isGroupMac(mac) && !remotes.includes(dst)) remotes.push(dst);
}

export function fdbDelete(vx: FakeLink, mac: string, dst: string | undefined): void {
  const remotes = vx.fdb.get(mac);
  if (!remotes) throw rtnl('No such file or directory');
  if (dst === undefined) {
    vx.fdb.delete(mac);
    return;
  }
  // A remote that is not there is success (the kernel returns 0 once the MAC is found).
  const i = remotes.indexOf(dst);
  if (i >= 0) remotes.splice(i, 1);
  if (remotes.length === 0) vx.fdb.delete(mac);
}
