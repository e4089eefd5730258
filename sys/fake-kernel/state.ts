import { contains, formatIp, parseCidr, parseIp, type Cidr } from '../../core/cidr.js';
import { cannotFindDevice, extack, FakeKernelUnmodelled, rtnl, ToolFailure } from './errors.js';
import { NftState } from './nft.js';

/**
 * The fake kernel's state: network namespaces holding links, addresses, routes, neighbour and
 * proxy entries, VXLAN FDBs, qdiscs, nft tables and sysctls, with the side effects the real kernel
 * has (verified against kernel 6.18 / iproute2 6.1, see test/integration/fake-kernel-conformance):
 * deleting one end of a veth deletes both, deleting a VXLAN's lower device deletes the VXLAN, a
 * link going down loses its routes, neighbour and proxy entries, a bridge takes its smallest port
 * MAC and (unless set by hand) the smallest port MTU, an address brings its prefix route.
 * Operations throw ToolFailure with the message the tool would print.
 */

export type LinkKind = 'loopback' | 'veth' | 'bridge' | 'vxlan' | 'ifb';
export type Scope = 'global' | 'link' | 'host';

export const MAIN_TABLE = 254;

export interface Address {
  family: 4 | 6;
  local: string;
  prefixlen: number;
  scope: Scope;
}

export interface RouteEntry {
  table: number;
  dst: Cidr;
  gateway?: string;
  dev: FakeLink;
  protocol: 'kernel' | 'boot';
  scope: Scope;
  prefsrc?: string;
  onlink: boolean;
}

export interface NeighEntry {
  dst: string;
  dev: FakeLink;
  lladdr: string;
  nud: 'permanent' | 'reachable';
}

export interface ProxyEntry {
  dst: string;
  dev: FakeLink;
}

export interface VxlanConf {
  id: number;
  local: string;
  lower: FakeLink | undefined;
  port: number;
  learning: boolean;
  proxy: boolean;
  gbp: boolean;
}

/** A root token bucket as the kernel holds it (see tc.ts for the arithmetic). */
export interface Tbf {
  kind: 'tbf';
  handle: number;
  rateBytes: bigint;
  bufferTicks: number;
  limitBytes: number;
  /** The tc words that set it, for dumps. */
  spec: string;
}

/** A u32 match-all filter on the ingress qdisc with a mirred egress redirect. */
export interface RedirectFilter {
  prio: number;
  key: number;
  action: number;
  target: string;
}

const ZERO_MAC = '00:00:00:00:00:00';

export class FakeLink {
  up = false;
  group = 0;
  master: FakeLink | undefined;
  addrGenMode: 'eui64' | 'none' = 'eui64';
  macSetByUser = false;
  mtuSetByUser = false;
  /** veth: the other end (possibly in another namespace). */
  peer: FakeLink | undefined;
  vxlan: VxlanConf | undefined;
  /** vxlan: MAC → remote VTEPs, in the order they were added. */
  readonly fdb = new Map<string, string[]>();
  mcastSnooping = true;
  /** bridge: a port was ever attached (before that the kernel leaves its carrier on). */
  hadPorts = false;
  readonly addresses: Address[] = [];
  root: Tbf | undefined;
  ingress: { filters: RedirectFilter[] } | undefined;
  alive = true;

  constructor(
    public ns: FakeNetns,
    public ifindex: number,
    public name: string,
    readonly kind: LinkKind,
    public mtu: number,
    public mac: string,
  ) {}

  get ports(): FakeLink[] {
    return this.ns.linkList().filter((l) => l.master === this);
  }

  /** Carrier as the kernel settles it (linkwatch applies it asynchronously, within ~1 s). */
  get carrier(): boolean {
    if (!this.up) return false;
    if (this.kind === 'veth') return this.peer?.up === true;
    if (this.kind === 'bridge') return !this.hadPorts || this.ports.some((p) => p.forwarding);
    return true;
  }

  /** As a bridge port, with STP off: forwarding as soon as it and its bridge are up with carrier. */
  get forwarding(): boolean {
    return this.master !== undefined && this.master.up && this.carrier;
  }

  /** The queues a real device of this kind gets (veth: one per CPU). */
  txQueues(cpus: number): number {
    return this.kind === 'veth' ? cpus : 1;
  }
}

export class FakeNetns {
  readonly links = new Map<string, FakeLink>();
  readonly routes: RouteEntry[] = [];
  readonly tables = new Set<number>([MAIN_TABLE]);
  readonly neighbours: NeighEntry[] = [];
  readonly proxies: ProxyEntry[] = [];
  readonly sysctls = new Map<string, string>();
  readonly nft = new NftState();
  /** The ids this namespace gives other namespaces (IFLA_LINK_NETNSID). */
  readonly peerIds = new Map<FakeNetns, number>();
  /** tc action indexes in use (mirred). */
  readonly actionIndexes = new Set<number>();
  alive = true;
  private nextIfindex = 1;

  constructor(
    readonly kernel: KernelState,
    /** The name under /run/netns, or the path it was registered at. */
    readonly label: string,
    readonly name: string | undefined,
  ) {
    this.createLink('lo', 'loopback', 65536, ZERO_MAC);
  }

  link(name: string): FakeLink | undefined {
    return this.links.get(name);
  }

  /** The link, or the failure `ip` reports when parsing a `dev NAME` it cannot find. */
  requireLink(name: string): FakeLink {
    const l = this.links.get(name);
    if (!l) throw cannotFindDevice(name);
    return l;
  }

  linkList(): FakeLink[] {
    return [...this.links.values()].sort((a, b) => a.ifindex - b.ifindex);
  }

  createLink(name: string, kind: LinkKind, mtu: number, mac?: string): FakeLink {
    if (this.links.has(name)) throw rtnl('File exists');
    const l = new FakeLink(this, this.nextIfindex++, name, kind, mtu, mac ?? this.kernel.randomMac());
    this.links.set(name, l);
    return l;
  }

  /** A link arriving from another namespace gets an ifindex here. */
  adopt(link: FakeLink): void {
    link.ifindex = this.nextIfindex++;
    link.ns = this;
    this.links.set(link.name, link);
  }

  /** The id of `other` as seen from here, allocated on first use (lowest free). */
  idOf(other: FakeNetns): number {
    let id = this.peerIds.get(other);
    if (id === undefined) {
      const used = new Set(this.peerIds.values());
      for (id = 0; used.has(id); id++);
      this.peerIds.set(other, id);
    }
    return id;
  }

  hasLocalAddress(ip: string): boolean {
    return this.linkList().some((l) => l.addresses.some((a) => a.local === ip));
  }

  allocateActionIndex(): number {
    let i = 1;
    while (this.actionIndexes.has(i)) i++;
    this.actionIndexes.add(i);
    return i;
  }
}

export class KernelState {
  readonly root: FakeNetns;
  private readonly named = new Map<string, FakeNetns>();
  private readonly byPath = new Map<string, FakeNetns>();
  private macCounter = 0;
  /** Automatic qdisc handles are global in the kernel (8001:, 8002:, ...). */
  private qdiscHandle = 0x8000;

  constructor(readonly cpus: number) {
    this.root = new FakeNetns(this, '(root)', undefined);
  }

  randomMac(): string {
    const n = ++this.macCounter;
    // Locally administered unicast, recognisable as the fake's own: ee:fa:ce:xx:xx:xx.
    const tail = [n >> 16, (n >> 8) & 0xff, n & 0xff].map((b) => b.toString(16).padStart(2, '0'));
    return `ee:fa:ce:${tail.join(':')}`;
  }

  nextQdiscHandle(): number {
    this.qdiscHandle += 1;
    return this.qdiscHandle;
  }

  namespaces(): FakeNetns[] {
    return [this.root, ...new Set([...this.named.values(), ...this.byPath.values()])];
  }

  byName(name: string): FakeNetns | undefined {
    return this.named.get(name);
  }

  /** A path as `ip ... netns PATH` or `nsenter --net=PATH` opens it. */
  atPath(path: string): FakeNetns | undefined {
    const named = /^\/(?:var\/)?run\/netns\/([^/]+)$/.exec(path);
    return named ? this.named.get(named[1]!) : this.byPath.get(path);
  }

  addNamed(name: string): FakeNetns {
    if (this.named.has(name))
      throw new ToolFailure(`Cannot create namespace file "/run/netns/${name}": File exists`, 1);
    const ns = new FakeNetns(this, name, name);
    this.named.set(name, ns);
    return ns;
  }

  /** A namespace known only by a path (e.g. /proc/PID/ns/net, as a runtime passes it to CNI). */
  addAtPath(path: string): FakeNetns {
    if (this.atPath(path)) throw new Error(`FakeKernel: a namespace already exists at ${path}`);
    const ns = new FakeNetns(this, path, undefined);
    this.byPath.set(path, ns);
    return ns;
  }

  /** The namespace goes with everything in it; veth peers elsewhere go too. */
  destroy(ns: FakeNetns): void {
    if (ns === this.root) throw new Error('FakeKernel: the root namespace cannot be deleted');
    for (const l of ns.linkList()) removeLink(l);
    ns.alive = false;
    for (const [k, v] of this.named) if (v === ns) this.named.delete(k);
    for (const [k, v] of this.byPath) if (v === ns) this.byPath.delete(k);
    for (const other of this.namespaces()) other.peerIds.delete(ns);
  }
}

// ---- links ----------------------------------------------------------------------------------

export interface VethSpec {
  name: string;
  mtu?: number;
  group?: number;
  master?: FakeLink;
  up?: boolean;
  peer: { name: string; mac?: string; mtu?: number; ns: FakeNetns };
}

export function addVeth(ns: FakeNetns, s: VethSpec): FakeLink {
  const peerNs = s.peer.ns;
  if (ns.links.has(s.name) || peerNs.links.has(s.peer.name) || (peerNs === ns && s.name === s.peer.name))
    throw rtnl('File exists');
  // The kernel registers the peer first: it gets the lower ifindex.
  const peer = peerNs.createLink(s.peer.name, 'veth', s.peer.mtu ?? 1500, s.peer.mac);
  if (s.peer.mac !== undefined) peer.macSetByUser = true;
  const link = ns.createLink(s.name, 'veth', s.mtu ?? 1500);
  link.peer = peer;
  peer.peer = link;
  if (peerNs !== ns) {
    ns.idOf(peerNs);
    peerNs.idOf(ns);
  }
  if (s.group !== undefined) link.group = s.group;
  if (s.master) enslave(link, s.master);
  if (s.up) setUp(link, true);
  return link;
}

export function addVxlan(ns: FakeNetns, name: string, conf: VxlanConf, mtu: number | undefined): FakeLink {
  if (ns.links.has(name)) throw rtnl('File exists');
  const clash = ns
    .linkList()
    .some((l) => l.vxlan && l.vxlan.id === conf.id && l.vxlan.port === conf.port && l.vxlan.gbp === conf.gbp);
  if (clash) throw extack('A VXLAN device with the specified VNI already exists.');
  const link = ns.createLink(name, 'vxlan', mtu ?? (conf.lower ? conf.lower.mtu - 50 : 1500));
  link.vxlan = conf;
  return link;
}

/** Deletes a link and everything that goes with it in the kernel. */
export function removeLink(link: FakeLink): void {
  if (!link.alive) return;
  const ns = link.ns;
  link.alive = false;
  ns.links.delete(link.name);
  for (const p of ns.linkList()) if (p.master === link) release(p);
  if (link.master) release(link);
  for (const l of ns.linkList()) if (l.vxlan?.lower === link) removeLink(l);
  if (link.peer) removeLink(link.peer);
  flushL3(link);
  for (const f of link.ingress?.filters ?? []) ns.actionIndexes.delete(f.action);
  for (const key of ns.sysctls.keys()) if (sysctlDevice(key) === link.name) ns.sysctls.delete(key);
}

/** Routes, neighbour and proxy entries through a link (on delete and on down). */
function flushL3(link: FakeLink): void {
  const ns = link.ns;
  remove(ns.routes, (r) => r.dev === link);
  remove(ns.neighbours, (n) => n.dev === link);
  remove(ns.proxies, (p) => p.dev === link);
}

export function setUp(link: FakeLink, up: boolean): void {
  if (link.up === up) return;
  link.up = up;
  if (!up) {
    flushL3(link);
    return;
  }
  if (link.kind === 'loopback') {
    for (const a of [
      { family: 4 as const, local: '127.0.0.1', prefixlen: 8 },
      { family: 6 as const, local: '::1', prefixlen: 128 },
    ]) {
      if (!link.addresses.some((x) => x.local === a.local)) link.addresses.push({ ...a, scope: 'host' });
    }
  }
  for (const a of link.addresses) addPrefixRoute(link, a);
}

export function enslave(port: FakeLink, bridge: FakeLink): void {
  if (bridge.kind !== 'bridge') throw new FakeKernelUnmodelled(`a master of kind ${bridge.kind} (only bridges)`);
  if (port === bridge) throw rtnl('Invalid argument');
  if (port.master === bridge) return;
  if (port.master) release(port);
  port.master = bridge;
  bridge.hadPorts = true;
  bridgePortsChanged(bridge);
}

export function release(port: FakeLink): void {
  const bridge = port.master;
  if (!bridge) return;
  port.master = undefined;
  bridgePortsChanged(bridge);
}

/** A bridge follows its ports: the smallest MAC (unless set), the smallest MTU (unless set). */
export function bridgePortsChanged(bridge: FakeLink): void {
  if (!bridge.alive) return;
  const ports = bridge.ports;
  // With no port left, the kernel gives the bridge the all-zero MAC.
  if (!bridge.macSetByUser) bridge.mac = ports.length > 0 ? ports.map((p) => p.mac).sort()[0]! : ZERO_MAC;
  if (!bridge.mtuSetByUser) bridge.mtu = ports.length > 0 ? Math.min(...ports.map((p) => p.mtu)) : 1500;
}

export function mtuLimits(link: FakeLink): { min: number; max: number } {
  return link.kind === 'loopback' || link.kind === 'ifb' ? { min: 0, max: 0 } : { min: 68, max: 65535 };
}

export function setMtu(link: FakeLink, mtu: number): void {
  const { min, max } = mtuLimits(link);
  if (max > 0 && mtu > max) throw extack('mtu greater than device maximum.');
  if (mtu < min) throw extack('mtu less than device minimum.');
  link.mtu = mtu;
  if (link.kind === 'bridge') link.mtuSetByUser = true;
  if (link.master) bridgePortsChanged(link.master);
}

export function setMac(link: FakeLink, mac: string): void {
  link.mac = mac;
  link.macSetByUser = true;
  if (link.master) bridgePortsChanged(link.master);
}

export function rename(link: FakeLink, name: string): void {
  if (link.name === name) return;
  if (link.ns.links.has(name)) throw rtnl('File exists');
  link.ns.links.delete(link.name);
  link.name = name;
  link.ns.links.set(name, link);
}

/** `ip link set X netns Y`: the link arrives down, without addresses, off any bridge. */
export function moveToNetns(link: FakeLink, target: FakeNetns): void {
  if (link.ns === target) return;
  if (target.links.has(link.name)) throw rtnl('File exists');
  if (link.kind !== 'veth') throw new FakeKernelUnmodelled(`moving a ${link.kind} link between namespaces`);
  setUp(link, false);
  for (const p of link.ns.linkList()) if (p.master === link) release(p);
  release(link);
  flushL3(link);
  link.addresses.length = 0;
  link.ns.links.delete(link.name);
  target.adopt(link);
  if (link.peer && link.peer.ns !== target) {
    target.idOf(link.peer.ns);
    link.peer.ns.idOf(target);
  }
}

// ---- addresses and routes -------------------------------------------------------------------

export function addAddress(link: FakeLink, cidr: string, mode: 'add' | 'replace'): void {
  const a = parseAddress(cidr);
  const existing = link.addresses.find((x) => x.local === a.local && x.prefixlen === a.prefixlen);
  if (existing) {
    if (mode === 'replace') return;
    throw a.family === 4 ? extack('ipv4: Address already assigned.') : rtnl('File exists');
  }
  link.addresses.push(a);
  if (link.up) addPrefixRoute(link, a);
}

export function deleteAddress(link: FakeLink, cidr: string): void {
  const a = parseAddress(cidr);
  const i = link.addresses.findIndex((x) => x.local === a.local && x.prefixlen === a.prefixlen);
  if (i < 0) throw a.family === 4 ? extack('ipv4: Address not found.') : rtnl('Cannot assign requested address');
  link.addresses.splice(i, 1);
  const ns = link.ns;
  remove(ns.routes, (r) => r.protocol === 'kernel' && r.dev === link && r.prefsrc === a.local);
  // Routes that used the address as their source go with it (fib_sync_down_addr).
  if (!ns.hasLocalAddress(a.local)) remove(ns.routes, (r) => r.prefsrc === a.local);
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
function addPrefixRoute(link: FakeLink, a: Address): void {
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
  if (!remove(dev.ns.neighbours, (n) => n.dev === dev && n.dst === ip)) throw neighNotFound();
}

export function replaceProxy(dev: FakeLink, dst: string): void {
  const ip = formatIp(parseIp(dst));
  if (!dev.ns.proxies.some((p) => p.dev === dev && p.dst === ip)) dev.ns.proxies.push({ dst: ip, dev });
}

export function deleteProxy(dev: FakeLink, dst: string): void {
  const ip = formatIp(parseIp(dst));
  if (!remove(dev.ns.proxies, (p) => p.dev === dev && p.dst === ip)) throw neighNotFound();
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

// ---- sysctl ---------------------------------------------------------------------------------

const DEVICE_KEY = /^net\.ipv[46]\.(?:neigh|conf)\.([^.]+)\.[a-z0-9_]+$/;

/** The device a per-device sysctl belongs to (not "all"/"default"). */
export function sysctlDevice(key: string): string | undefined {
  const dev = DEVICE_KEY.exec(key)?.[1];
  return dev === 'all' || dev === 'default' ? undefined : dev;
}

function remove<T>(list: T[], pred: (x: T) => boolean): number {
  let n = 0;
  for (let i = list.length - 1; i >= 0; i--) {
    if (pred(list[i]!)) {
      list.splice(i, 1);
      n++;
    }
  }
  return n;
}
