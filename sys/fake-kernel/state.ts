import type { Cidr } from '../../core/cidr.js';
import { cannotFindDevice, rtnl, ToolFailure } from './errors.js';
import { NftState } from './nft.js';

/**
 * The fake kernel's state: network namespaces holding links, addresses, routes, neighbour and
 * proxy entries, VXLAN FDBs, qdiscs, nft tables and sysctls. The changes, with the side effects
 * the real kernel has, are in links.ts and entries.ts.
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

export const ZERO_MAC = '00:00:00:00:00:00';

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
    const l = new FakeLink(this, this.freeIfindex(), name, kind, mtu, mac ?? this.kernel.randomMac());
    this.links.set(name, l);
    return l;
  }

  /** A link arriving from another namespace keeps its ifindex when it is free here. */
  adopt(link: FakeLink): void {
    if (this.linkList().some((l) => l.ifindex === link.ifindex)) link.ifindex = this.freeIfindex();
    link.ns = this;
    this.links.set(link.name, link);
  }

  /** The kernel allocates cyclically: the next index after the last one, skipping those in use. */
  private freeIfindex(): number {
    while (this.linkList().some((l) => l.ifindex === this.nextIfindex)) this.nextIfindex++;
    return this.nextIfindex++;
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

  /** Unregisters a namespace whose links are gone (see links.ts destroyNetns). */
  forget(ns: FakeNetns): void {
    if (ns === this.root) throw new Error('FakeKernel: the root namespace cannot be deleted');
    ns.alive = false;
    for (const [k, v] of this.named) if (v === ns) this.named.delete(k);
    for (const [k, v] of this.byPath) if (v === ns) this.byPath.delete(k);
    for (const other of this.namespaces()) other.peerIds.delete(ns);
  }
}

// ---- helpers shared by links.ts and entries.ts ------------------------------------------------

const DEVICE_KEY = /^net\.ipv[46]\.(?:neigh|conf)\.([^.]+)\.[a-z0-9_]+$/;

/** The device a per-device sysctl belongs to (not "all"/"default"). */
export function sysctlDevice(key: string): string | undefined {
  const dev = DEVICE_KEY.exec(key)?.[1];
  return dev === 'all' || dev === 'default' ? undefined : dev;
}

/** Removes the matching entries in place; returns how many. */
export function removeWhere<T>(list: T[], pred: (x: T) => boolean): number {
  let n = 0;
  for (let i = list.length - 1; i >= 0; i--) {
    if (pred(list[i]!)) {
      list.splice(i, 1);
      n++;
    }
  }
  return n;
}
