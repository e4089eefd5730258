import { dumpNft } from './nft.js';
import { routeDst, sortRoutes } from './render.js';
import type { FakeLink, FakeNetns } from './state.js';
import { MAIN_TABLE } from './state.js';

/**
 * A namespace's state as sorted lines in the tools' own words, for `t.same(kernel.dump(ns), {...})`
 * and readable diffs. MACs appear only where someone set them (the fake's own are arbitrary), and
 * ifindexes never.
 */
export interface NetnsDump {
  /** "eth1 veth up mtu 1450 address 02:.. addrgenmode none peer ni1@(root)" */
  links: string[];
  /** "eth1 10.20.0.5/24" */
  addresses: string[];
  /** "10.20.0.0/24 dev eth1 proto kernel scope link src 10.20.0.5", other tables prefixed "table N". */
  routes: string[];
  /** "10.20.0.7 dev nx2a lladdr 02:.. PERMANENT" */
  neighbours: string[];
  /** "169.254.1.1 dev ne1" */
  proxies: string[];
  /** "00:00:00:00:00:00 dev nx2a dst 192.0.2.12" */
  fdb: string[];
  /** "ne1 root tbf rate 10000000bit burst 32768 latency 50000us", "ne1 ingress", "ne1 ingress filter ..." */
  qdiscs: string[];
  /** "table ip netd_nat", "chain ...", "rule ip netd_nat outbound ip saddr ... masquerade" */
  nft: string[];
  /** "net.ipv4.neigh.ne1.proxy_delay = 0" */
  sysctls: string[];
}

const sorted = (lines: string[]) => [...lines].sort();

function linkLine(l: FakeLink): string {
  const words = [l.name, l.kind, l.up ? 'up' : 'down', `mtu ${l.mtu}`];
  if (l.macSetByUser) words.push(`address ${l.mac}`);
  if (l.master) words.push(`master ${l.master.name}`);
  if (l.group !== 0) words.push(`group ${l.group}`);
  if (l.addrGenMode !== 'eui64') words.push(`addrgenmode ${l.addrGenMode}`);
  if (l.peer) words.push(`peer ${l.peer.name}${l.peer.ns === l.ns ? '' : `@${l.peer.ns.label}`}`);
  if (l.kind === 'bridge' && !l.mcastSnooping) words.push('mcast_snooping 0');
  const v = l.vxlan;
  if (v) {
    words.push(`id ${v.id} local ${v.local}`);
    if (v.lower) words.push(`dev ${v.lower.name}`);
    words.push(`dstport ${v.port}`, v.learning ? 'learning' : 'nolearning');
    if (v.gbp) words.push('gbp');
    if (v.proxy) words.push('proxy');
  }
  return words.join(' ');
}

export function dumpNetns(ns: FakeNetns): NetnsDump {
  const links = ns.linkList();
  const tables = [...ns.tables].sort((a, b) => (a === MAIN_TABLE ? -1 : b === MAIN_TABLE ? 1 : a - b));
  return {
    links: sorted(links.map(linkLine)),
    addresses: sorted(links.flatMap((l) => l.addresses.map((a) => `${l.name} ${a.local}/${a.prefixlen}`))),
    routes: tables.flatMap((t) =>
      sortRoutes(ns.routes.filter((r) => r.table === t)).map((r) =>
        [
          ...(t === MAIN_TABLE ? [] : [`table ${t}`]),
          routeDst(r),
          ...(r.gateway !== undefined ? [`via ${r.gateway}`] : []),
          `dev ${r.dev.name}`,
          ...(r.protocol === 'kernel' ? ['proto kernel'] : []),
          ...(r.scope !== 'global' ? [`scope ${r.scope}`] : []),
          ...(r.prefsrc !== undefined ? [`src ${r.prefsrc}`] : []),
          ...(r.onlink ? ['onlink'] : []),
        ].join(' '),
      ),
    ),
    neighbours: sorted(
      ns.neighbours.map((n) => `${n.dst} dev ${n.dev.name} lladdr ${n.lladdr} ${n.nud.toUpperCase()}`),
    ),
    proxies: sorted(ns.proxies.map((p) => `${p.dst} dev ${p.dev.name}`)),
    fdb: sorted(
      links.flatMap((l) => [...l.fdb].flatMap(([mac, remotes]) => remotes.map((d) => `${mac} dev ${l.name} dst ${d}`))),
    ),
    qdiscs: sorted(
      links.flatMap((l) => [
        ...(l.root ? [`${l.name} root ${l.root.spec}`] : []),
        ...(l.ingress ? [`${l.name} ingress`] : []),
        ...(l.ingress?.filters ?? []).map(
          (f) => `${l.name} ingress filter prio ${f.prio} u32 match-all action mirred egress redirect dev ${f.target}`,
        ),
      ]),
    ),
    nft: dumpNft(ns.nft),
    sysctls: sorted([...ns.sysctls].map(([k, v]) => `${k} = ${v}`)),
  };
}
