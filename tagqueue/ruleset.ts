import { formatCidr, formatIp, overlaps, parseCidr, parseIp, type Cidr } from '../core/cidr.js';
import { invalidInput } from '../core/errors.js';
import { NftTransaction, type ChainSpec } from '../sys/nft.js';
import { ifname } from '../sys/tokens.js';

/**
 * tagqueue's nftables table on a host, the pure half: what the table holds and which set elements
 * one container port stands for. The ports guarded here are the routed ones, where the host is the
 * container's next hop: every eth0 and every routed-VPC eth1. On them
 *
 * - a frame must carry the port's own MAC, and an IPv4 packet the port's own address (an IPv4-only
 *   port sends no IPv6 at all): anything else is dropped before routing and counted ("spoofed");
 * - nothing reaches the host itself (its addresses, on any interface) except replies to what the
 *   host opened and what the operator's allow-list names ("host");
 * - from eth0, nothing reaches the infrastructure: every host's underlay addresses, the etcd
 *   members, and the operator's infrastructure ranges, except what the allow-list names ("infra").
 *
 * Ports change as set elements (an ADD adds its port's, a DEL removes them): one hash lookup per
 * packet and one small transaction per container, however many ports a host has. The infrastructure
 * and allow-list sets are small and rewritten whole, in one transaction, when they change.
 */

export const TAGQUEUE_TABLE = 'tagqueue';
export const FAMILY = 'inet';

/** Sets of the table, by what a port puts in them. */
export const SETS = {
  /** Every guarded port (the host is out of reach from all of them). */
  ports: 'ports',
  /** eth0 ports (the infrastructure is out of reach from these). */
  external: 'ext_ports',
  /** Ports whose container is IPv4 (their IPv4 source is checked; IPv6 is dropped). */
  v4: 'v4_ports',
  /** port . its container's IPv4 address */
  own4: 'own4',
  /** port . its container's MAC */
  ownMac: 'own_mac',
} as const;
const INFRA = 'infra4';
const ALLOW = 'allow4';

/** The counters' comments: what a drop is counted as (read back by `dropCounts`). */
export const DROPS = ['spoofed', 'host', 'infra'] as const;
export type DropKind = (typeof DROPS)[number];

/** One guarded container port. */
export interface PortEntry {
  port: string;
  /** eth0 (external) or a routed VPC's eth1. */
  kind: 'external' | 'routed';
  ip: string;
  mac: string;
}

/** What the operator lets through from guarded ports to the host or the infrastructure. */
export interface AllowRule {
  cidr: string;
  proto: 'tcp' | 'udp';
  port: number;
}

export interface InfraPolicy {
  /** Addresses or CIDRs no eth0 may reach (hosts' underlay addresses, etcd, operator ranges). */
  infra: readonly string[];
  allow: readonly AllowRule[];
}

export function entryKey(e: PortEntry): string {
  return `${e.port}|${e.kind}|${formatIp(parseIp(e.ip))}|${e.mac.toLowerCase()}`;
}

const quoted = (port: string) => `"${ifname(port)}"`;

/** The set elements one port stands for, per set. */
export function elementsOf(e: PortEntry): Map<string, string[]> {
  const ip = parseIp(e.ip);
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(e.mac)) throw invalidInput(`tagqueue: "${e.mac}" is not a MAC`);
  const port = quoted(e.port);
  const out = new Map<string, string[]>([
    [SETS.ports, [port]],
    [SETS.ownMac, [`${port} . ${e.mac.toLowerCase()}`]],
  ]);
  if (e.kind === 'external') out.set(SETS.external, [port]);
  if (ip.family === 4) {
    out.set(SETS.v4, [port]);
    out.set(SETS.own4, [`${port} . ${formatIp(ip)}`]);
  }
  return out;
}

/** The elements of many ports, per set, as sets of rendered elements. */
export function elementsOfAll(entries: Iterable<PortEntry>): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>(Object.values(SETS).map((s) => [s, new Set<string>()]));
  for (const e of entries) for (const [set, els] of elementsOf(e)) for (const el of els) out.get(set)!.add(el);
  return out;
}

/** The infrastructure and allow-list sets' elements (validated: nft reads them as typed here). */
export function policyElements(p: InfraPolicy): { infra: string[]; allow: string[] } {
  const v4 = (text: string) => {
    const c = parseCidr(text.includes('/') ? text : `${text}/${text.includes(':') ? 128 : 32}`, { strict: false });
    if (c.family !== 4) return undefined;
    return formatCidr(c);
  };
  const infra = [...new Set(p.infra.map(v4).filter((x): x is string => x !== undefined))];
  const allow = [
    ...new Set(
      p.allow.map((r) => {
        const cidr = v4(r.cidr);
        if (!cidr) throw invalidInput(`allow-list entry ${r.cidr}: IPv4 only`);
        if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535) throw invalidInput(`port ${r.port}`);
        return `${cidr} . ${r.proto} . ${r.port}`;
      }),
    ),
  ];
  return { infra: withoutCovered(infra), allow };
}

/** An interval set refuses overlapping elements: a prefix inside another listed one is left out. */
function withoutCovered(cidrs: string[]): string[] {
  const parsed = cidrs.map((text) => ({ text, c: parseCidr(text) }));
  const coveredBy = (inner: Cidr, outer: Cidr) => overlaps(inner, outer) && outer.prefixLength <= inner.prefixLength;
  return parsed.filter(({ text, c }) => !parsed.some((o) => o.text !== text && coveredBy(c, o.c))).map((x) => x.text);
}

/**
 * The table, its sets and chains, and the policy sets' elements, as one idempotent transaction:
 * chains are flushed and their rules written again; port elements are kept.
 */
export function tableSetup(policy: InfraPolicy, tx = new NftTransaction()): NftTransaction {
  const T = TAGQUEUE_TABLE;
  tx.addTable(FAMILY, T);
  for (const set of [SETS.ports, SETS.external, SETS.v4]) tx.addSet(FAMILY, T, set, { type: 'ifname' });
  tx.addSet(FAMILY, T, SETS.own4, { type: 'ifname . ipv4_addr' });
  tx.addSet(FAMILY, T, SETS.ownMac, { type: 'ifname . ether_addr' });
  tx.addSet(FAMILY, T, INFRA, { type: 'ipv4_addr', flags: ['interval'] });
  tx.addSet(FAMILY, T, ALLOW, { type: 'ipv4_addr . inet_proto . inet_service', flags: ['interval'] });
  policyUpdate(policy, tx);
  const chain = (name: string, hook: ChainSpec['hook'], priority: string, rules: string[]) => {
    tx.addChain(FAMILY, T, name, { type: 'filter', hook, priority });
    tx.flushChain(FAMILY, T, name);
    for (const r of rules) tx.addRule(FAMILY, T, name, r);
  };
  const count = (kind: DropKind) => `counter drop comment "${kind}"`;
  // Before routing (and before conntrack): a forged source never picks a route or a table.
  // A container is no router and no DHCP server: its router advertisements and DHCP answers go too.
  chain('guard', 'prerouting', 'raw', [
    `iifname @${SETS.ports} iifname . ether saddr != @${SETS.ownMac} ${count('spoofed')}`,
    `iifname @${SETS.v4} meta nfproto ipv6 ${count('spoofed')}`,
    `iifname @${SETS.v4} iifname . ip saddr != @${SETS.own4} ${count('spoofed')}`,
    `iifname @${SETS.ports} icmpv6 type nd-router-advert ${count('spoofed')}`,
    `iifname @${SETS.ports} udp sport 67 ${count('spoofed')}`,
    `iifname @${SETS.ports} udp sport 547 ${count('spoofed')}`,
  ]);
  // Neighbour discovery of the IPv6 gateway (fe80::1 on the host's port) is the one thing a routed
  // IPv6 container must say to the host itself.
  chain('to_host', 'input', 'filter', [
    `iifname @${SETS.ports} ct state established,related accept`,
    `iifname @${SETS.ports} icmpv6 type nd-neighbor-solicit accept`,
    `iifname @${SETS.ports} icmpv6 type nd-neighbor-advert accept`,
    `iifname @${SETS.ports} ip daddr . meta l4proto . th dport @${ALLOW} accept`,
    `iifname @${SETS.ports} ${count('host')}`,
  ]);
  chain('to_infra', 'forward', 'filter', [
    `iifname @${SETS.external} ip daddr . meta l4proto . th dport @${ALLOW} accept`,
    `iifname @${SETS.external} ip daddr @${INFRA} ${count('infra')}`,
  ]);
  return tx;
}

/** The policy sets rewritten whole (one transaction with whatever else `tx` holds). */
export function policyUpdate(policy: InfraPolicy, tx = new NftTransaction()): NftTransaction {
  const { infra, allow } = policyElements(policy);
  tx.flushSet(FAMILY, TAGQUEUE_TABLE, INFRA).addElements(FAMILY, TAGQUEUE_TABLE, INFRA, infra);
  tx.flushSet(FAMILY, TAGQUEUE_TABLE, ALLOW).addElements(FAMILY, TAGQUEUE_TABLE, ALLOW, allow);
  return tx;
}

/** The rendered form of an element as `nft -j` gives it back (a name, or a concatenation). */
export function renderReadElement(el: unknown): string | undefined {
  if (typeof el === 'string') return `"${el}"`;
  const concat = (el as { concat?: unknown[] }).concat;
  if (Array.isArray(concat) && concat.length === 2 && typeof concat[0] === 'string' && typeof concat[1] === 'string')
    return `"${concat[0]}" . ${concat[1]}`;
  return undefined;
}

/** The port an element belongs to (its first component). */
export function portOfElement(el: string): string {
  return el.slice(1, el.indexOf('"', 1));
}

/** How many rules a complete table has (a read with fewer finds it half-made). */
export const RULE_COUNT = tableSetup({ infra: [], allow: [] }).commands.filter((c) => c.startsWith('add rule')).length;
