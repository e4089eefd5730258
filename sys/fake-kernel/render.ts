import { formatIp } from '../../core/cidr.js';
import { mtuLimits } from './links.js';
import { ZERO_MAC, type FakeLink, type FakeNetns, type RouteEntry } from './state.js';
import { tbfOptions } from './tc.js';

/**
 * What `ip -j -d`, `bridge -j` and `tc -j` print for the fake's state, in iproute2 6.1's shapes
 * (field names, order, value types). Fields the fake cannot know meaningfully are left out rather
 * than invented: gso/tso/gro sizes, most bridge and port timers and options, IPv6 link-local and
 * multicast addresses the kernel adds by itself (see the conformance test's normalisations).
 */

type Json = Record<string, unknown>;

function flags(l: FakeLink): string[] {
  const up = l.up ? ['UP'] : [];
  const lowerUp = l.carrier ? ['LOWER_UP'] : [];
  if (l.kind === 'loopback') return ['LOOPBACK', ...up, ...lowerUp];
  if (l.kind === 'ifb') return ['BROADCAST', 'NOARP', ...up, ...lowerUp];
  // ip prints M-DOWN for a device whose IFLA_LINK (a veth peer in the same namespace) is down.
  const mDown = l.peer && l.peer.ns === l.ns && !l.peer.up ? ['M-DOWN'] : [];
  return [...(l.up && !l.carrier ? ['NO-CARRIER'] : []), 'BROADCAST', 'MULTICAST', ...up, ...lowerUp, ...mDown];
}

function operstate(l: FakeLink): string {
  if (!l.up) return 'DOWN';
  if (l.kind === 'veth') return l.carrier ? 'UP' : 'LOWERLAYERDOWN';
  if (l.kind === 'bridge') return !l.carrier ? 'DOWN' : l.hadPorts ? 'UP' : 'UNKNOWN';
  return 'UNKNOWN';
}

export function qdiscName(l: FakeLink): string {
  if (l.root) return l.root.kind;
  if (!l.up) return 'noop';
  return l.kind === 'ifb' ? 'pfifo_fast' : 'noqueue';
}

function linkInfo(l: FakeLink): Json | undefined {
  let info: Json | undefined;
  if (l.kind === 'veth' || l.kind === 'ifb') info = { info_kind: l.kind };
  if (l.kind === 'bridge') {
    info = {
      info_kind: 'bridge',
      info_data: {
        forward_delay: 1500,
        hello_time: 200,
        max_age: 2000,
        ageing_time: 30000,
        stp_state: 0,
        priority: 32768,
        vlan_filtering: 0,
        mcast_snooping: l.mcastSnooping ? 1 : 0,
      },
    };
  }
  if (l.vxlan) {
    const v = l.vxlan;
    info = {
      info_kind: 'vxlan',
      info_data: {
        id: v.id,
        local: v.local,
        ...(v.lower && { link: v.lower.name }),
        port_range: { low: 0, high: 0 },
        port: v.port,
        learning: v.learning,
        ...(v.proxy && { proxy: true }),
        ttl: 0,
        df: 'unset',
        ageing: 300,
        udp_csum: true,
        udp_zero_csum6_tx: false,
        udp_zero_csum6_rx: false,
        ...(v.gbp && { gbp: true }),
      },
    };
  }
  if (l.master) {
    info = {
      ...info,
      info_slave_kind: 'bridge',
      info_slave_data: {
        state: l.forwarding ? 'forwarding' : 'disabled',
        priority: 32,
        hairpin: false,
        guard: false,
        root_block: false,
        fastleave: false,
        learning: true,
        flood: true,
        proxy_arp: false,
        mcast_flood: true,
        bcast_flood: true,
        neigh_suppress: false,
        isolated: false,
      },
    };
  }
  return info;
}

/** One link as `ip -j [-d] link show` prints it; `forAddr` drops what `ip addr show` omits. */
export function renderLink(l: FakeLink, details: boolean, cpus: number, forAddr = false): Json {
  const peer = l.peer;
  const samePeer = peer && peer.ns === l.ns;
  const { min, max } = mtuLimits(l);
  const info = details ? linkInfo(l) : undefined;
  return {
    ifindex: l.ifindex,
    ...(samePeer && { link: peer.name }),
    ...(peer && !samePeer && { link_index: peer.ifindex }),
    ifname: l.name,
    flags: flags(l),
    mtu: l.mtu,
    qdisc: qdiscName(l),
    ...(l.master && { master: l.master.name }),
    operstate: operstate(l),
    ...(!forAddr && { linkmode: 'DEFAULT' }),
    group: l.group === 0 ? 'default' : String(l.group),
    txqlen: l.kind === 'ifb' ? 32 : 1000,
    link_type: l.kind === 'loopback' ? 'loopback' : 'ether',
    address: l.mac,
    broadcast: l.kind === 'loopback' ? '00:00:00:00:00:00' : 'ff:ff:ff:ff:ff:ff',
    ...(peer && !samePeer && { link_netnsid: l.ns.idOf(peer.ns) }),
    ...(details && {
      promiscuity: l.master ? 1 : 0,
      allmulti: l.master ? 1 : 0,
      min_mtu: min,
      max_mtu: max,
      ...(info && { linkinfo: info }),
      ...(!forAddr && { inet6_addr_gen_mode: l.addrGenMode }),
      num_tx_queues: l.txQueues(cpus),
      num_rx_queues: l.txQueues(cpus),
    }),
  };
}

export function renderAddrs(l: FakeLink, details: boolean, cpus: number): Json {
  // The kernel dumps IPv4 addresses before IPv6 ones.
  const sorted = [...l.addresses.filter((a) => a.family === 4), ...l.addresses.filter((a) => a.family === 6)];
  return {
    ...renderLink(l, details, cpus, true),
    addr_info: sorted.map((a) => ({
      family: a.family === 4 ? 'inet' : 'inet6',
      local: a.local,
      prefixlen: a.prefixlen,
      scope: a.scope,
      ...(a.family === 4 && { label: l.name }),
      valid_life_time: 4294967295,
      preferred_life_time: 4294967295,
    })),
  };
}

/** The FIB's order: by destination address, longer prefixes first for the same address. */
export function sortRoutes(routes: RouteEntry[]): RouteEntry[] {
  return [...routes].sort((a, b) =>
    a.dst.network !== b.dst.network
      ? a.dst.network < b.dst.network
        ? -1
        : 1
      : b.dst.prefixLength - a.dst.prefixLength,
  );
}

export function routeDst(r: RouteEntry): string {
  if (r.dst.prefixLength === 0) return 'default';
  const addr = formatIp({ family: r.dst.family, value: r.dst.network });
  return r.dst.prefixLength === (r.dst.family === 4 ? 32 : 128) ? addr : `${addr}/${r.dst.prefixLength}`;
}

export function renderRoute(r: RouteEntry, details: boolean): Json {
  return {
    ...(details && { type: 'unicast' }),
    dst: routeDst(r),
    ...(r.gateway !== undefined && { gateway: r.gateway }),
    dev: r.dev.name,
    ...((details || r.protocol !== 'boot') && { protocol: r.protocol }),
    scope: r.scope,
    ...(r.prefsrc !== undefined && { prefsrc: r.prefsrc }),
    flags: [...(r.onlink ? ['onlink'] : []), ...(r.dev.carrier ? [] : ['linkdown'])],
  };
}

export function renderNeighbours(ns: FakeNetns, dev: FakeLink | undefined): Json[] {
  return ns.neighbours
    .filter((n) => !dev || n.dev === dev)
    .sort((a, b) => a.dev.ifindex - b.dev.ifindex || a.dst.localeCompare(b.dst))
    .map((n) => ({
      dst: n.dst,
      ...(!dev && { dev: n.dev.name }),
      lladdr: n.lladdr,
      state: [n.nud.toUpperCase()],
    }));
}

export function renderProxies(ns: FakeNetns, dev: FakeLink | undefined): Json[] {
  return ns.proxies
    .filter((p) => !dev || p.dev === dev)
    .sort((a, b) => a.dev.ifindex - b.dev.ifindex || a.dst.localeCompare(b.dst))
    .map((p) => ({ dst: p.dst, ...(!dev && { dev: p.dev.name }), proxy: null }));
}

/**
 * `bridge -j fdb show` for `links`: each bridge port's own MAC (the bridge's local entry), then a
 * VXLAN device's static entries, one object per remote. `named`: print ifname (not with `dev`).
 */
export function renderFdb(links: FakeLink[], named: boolean): Json[] {
  const out: Json[] = [];
  for (const l of links) {
    const ifname = named ? { ifname: l.name } : {};
    // A bridge's own MAC has a local entry unless a port's entry already holds it.
    if (l.kind === 'bridge' && l.mac !== ZERO_MAC && !l.ports.some((p) => p.mac === l.mac))
      out.push({ mac: l.mac, ...ifname, flags: [], master: l.name, state: 'permanent' });
    if (l.master) out.push({ mac: l.mac, ...ifname, flags: [], master: l.master.name, state: 'permanent' });
    for (const [mac, remotes] of l.fdb) {
      for (const dst of remotes) out.push({ mac, ...ifname, dst, flags: ['self'], state: 'permanent' });
    }
  }
  return out;
}

export function renderQdiscs(l: FakeLink, cpus: number): Json[] {
  const out: Json[] = [];
  if (l.root) {
    out.push({
      kind: 'tbf',
      handle: `${l.root.handle.toString(16)}:`,
      root: true,
      // One reference per TX queue, one for the device.
      refcnt: 1 + l.txQueues(cpus),
      options: tbfOptions(l.root),
    });
  } else if (l.up) {
    out.push(
      l.kind === 'ifb'
        ? {
            kind: 'pfifo_fast',
            handle: '0:',
            root: true,
            refcnt: 2,
            options: { bands: 3, priomap: [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], multiqueue: false },
          }
        : { kind: 'noqueue', handle: '0:', root: true, refcnt: 2, options: {} },
    );
  }
  if (l.ingress) out.push({ kind: 'ingress', handle: 'ffff:', parent: 'ffff:fff1', options: {} });
  return out;
}

/** `tc -j filter show dev X parent ffff:`: per prio the u32 head, its hash table, then each key. */
export function renderIngressFilters(l: FakeLink): Json[] {
  const filters = l.ingress?.filters ?? [];
  const out: Json[] = [];
  for (const prio of [...new Set(filters.map((f) => f.prio))].sort((a, b) => a - b)) {
    const head = { protocol: 'all', pref: prio, kind: 'u32', chain: 0 };
    out.push(head, { ...head, options: { fh: '800:', ht_divisor: 1 } });
    for (const f of filters.filter((x) => x.prio === prio)) {
      out.push({
        ...head,
        options: {
          fh: `800::${f.key.toString(16)}`,
          order: f.key,
          key_ht: '800',
          bkt: '0',
          not_in_hw: true,
          match: { value: '0', mask: '0', offmask: '', off: 0 },
          actions: [
            {
              order: 1,
              kind: 'mirred',
              mirred_action: 'redirect',
              direction: 'egress',
              to_dev: f.target,
              control_action: { type: 'stolen' },
              index: f.action,
              ref: 1,
              bind: 1,
            },
          ],
        },
      });
    }
  }
  return out;
}
