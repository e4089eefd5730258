import { rename, writeFile } from 'node:fs/promises';
import { contains, formatCidr, parseCidr, parseIp } from '../core/cidr.js';
import { blocksOf } from './modes/routed.js';
import { describeError, invalidInput } from '../core/errors.js';
import type { CommandRunner } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import type { HostSnapshot } from './model.js';

/**
 * Announcing this host's routed addresses over BGP, for L3 fabrics where hosts do not share a
 * segment (Calico's way). netd drives a BIRD 2 speaker that runs beside it: it renders BIRD's
 * whole configuration from its view and asks BIRD to reload it (`birdc configure`) when it
 * changed. BIRD only announces: it imports nothing, and nothing it learns reaches this host's
 * kernel (netd routes remote blocks through the fabric's gateway itself; see routed.ts).
 */

export interface BgpPeer {
  ip: string;
  asn: number;
}

export interface BgpOptions {
  /** This host's AS number. */
  asn: number;
  peers: readonly BgpPeer[];
  /** Where netd writes BIRD's configuration (BIRD is started with `-c` on it). */
  configPath: string;
  /** BIRD's control socket (`-s`). */
  socketPath: string;
  /** Seconds without a keepalive after which a peer drops this host's routes (BGP hold time). */
  holdSeconds?: number;
  /**
   * The operator's ranges that may be announced (tenants choose routed VPC CIDRs; without this a
   * tenant's VPC over, say, a storage network would be announced to the fabric). Anything outside
   * is left out and logged. None given: everything netd routes is announced.
   */
  exportCidrs?: readonly string[];
}

const ASN_MAX = 4_294_967_295;

/** `<ip>:<asn>` as given on the command line. */
export function parseBgpPeer(text: string): BgpPeer {
  const m = /^([0-9.]+):(\d{1,10})$/.exec(text);
  const asn = Number(m?.[2]);
  if (!m || !Number.isInteger(asn) || asn < 1 || asn > ASN_MAX)
    throw invalidInput(`BGP peer "${text}" must be <IPv4>:<AS number 1..${ASN_MAX}>`);
  const ip = parseIp(m[1]!);
  if (ip.family !== 4) throw invalidInput(`BGP peer "${text}": IPv4 only`);
  return { ip: m[1]!, asn };
}

export function checkAsn(value: number): number {
  if (!Number.isInteger(value) || value < 1 || value > ASN_MAX) throw invalidInput(`AS number must be 1..${ASN_MAX}`);
  return value;
}

/**
 * What this host announces: the blocks it claimed in routed VPCs, a /32 (/128) for each of its
 * routed containers whose address lies outside them (borrowed from another host's block), and a
 * /32 for each eth0 address it routes (`--external-mode routed`: `externals`).
 */
export function announcedPrefixes(view: HostSnapshot, externals: readonly string[] = []): string[] {
  const self = view.self.name;
  const routedVpcs = [...view.vpcs.values()].filter((v) => v.mode === 'routed');
  const routed = new Set(routedVpcs.map((v) => v.name));
  const own = routedVpcs.flatMap((v) => blocksOf(view, v)).filter((b) => b.host === self);
  const out = new Set(own.map((b) => b.cidr));
  const ownParsed = own.map((b) => b.parsed);
  for (const e of view.endpoints) {
    if (e.host !== self || !routed.has(e.vpc)) continue;
    const ip = parseIp(e.ip);
    if (!ownParsed.some((c) => contains(c, ip))) out.add(`${e.ip}/${ip.family === 4 ? 32 : 128}`);
  }
  for (const ip of externals) out.add(`${ip}/32`);
  return [...out].sort();
}

/** BIRD 2's configuration for this host (pure). */
/** The prefixes inside the operator's export ranges (all when there are none). */
export function exportable(prefixes: readonly string[], exportCidrs: readonly string[] | undefined): string[] {
  if (!exportCidrs?.length) return [...prefixes];
  const ranges = exportCidrs.map((c) => parseCidr(c));
  return prefixes.filter((p) => {
    const c = parseCidr(p);
    return ranges.some(
      (r) =>
        r.family === c.family &&
        r.prefixLength <= c.prefixLength &&
        contains(r, { family: c.family, value: c.network }),
    );
  });
}

export function renderBirdConfig(
  view: HostSnapshot,
  opts: Pick<BgpOptions, 'asn' | 'peers' | 'holdSeconds' | 'exportCidrs'>,
  externals: readonly string[] = [],
): string {
  const local = view.self.underlayIp;
  const local6 = view.self.underlayIp6;
  const prefixes = exportable(announcedPrefixes(view, externals), opts.exportCidrs);
  const routes = (family: 4 | 6) =>
    prefixes.filter((p) => parseCidr(p).family === family).map((p) => `  route ${p} unreachable;`);
  // BIRD checks the ranges again: what netd renders is never the only guard. (A BIRD prefix set
  // holds one family: a set per family, each matched by prefixes of its own family only.)
  const rangeSet = (family: 4 | 6) => {
    const cidrs = (opts.exportCidrs ?? []).map((c) => parseCidr(c)).filter((c) => c.family === family);
    return cidrs.length === 0
      ? []
      : [`(net.type = NET_IP${family} && net ~ [ ${cidrs.map((c) => `${formatCidr(c)}+`).join(', ')} ])`];
  };
  const ranges = opts.exportCidrs?.length ? ` && (${[...rangeSet(4), ...rangeSet(6)].join(' || ')})` : '';
  const hold = opts.holdSeconds ?? 9;
  const lines = [
    '# Written by netd from etcd; rewritten on every change: do not edit.',
    `router id ${local};`,
    'protocol device { scan time 10; }',
    '# What this host announces: its blocks of routed VPCs, borrowed addresses and routed eth0 addresses.',
    '# Not exported to the kernel (no kernel protocol): these are announcements only.',
    'protocol static netd_routes {',
    '  ipv4;',
    ...routes(4),
    '}',
    // IPv6 VPCs' blocks ride the same (IPv4) sessions as a second address family, their next hop
    // this host's IPv6 underlay address (an IPv4 session has none of its own to give).
    ...(local6 ? ['protocol static netd_routes6 {', '  ipv6;', ...routes(6), '}'] : []),
    `filter netd_export { if (proto = "netd_routes" || proto = "netd_routes6")${ranges} then accept; reject; }`,
    ...opts.peers.flatMap((p, i) => [
      `protocol bgp peer${i + 1} {`,
      `  local ${local} as ${opts.asn};`,
      `  neighbor ${p.ip} as ${p.asn};`,
      `  hold time ${hold};`,
      '  ipv4 { import none; export filter netd_export; };',
      ...(local6 ? [`  ipv6 { import none; export filter netd_export; next hop address ${local6}; };`] : []),
      '}',
    ]),
    '',
  ];
  return lines.join('\n');
}

/** Keeps BIRD's configuration equal to the rendering, reloading BIRD when it changed. */
export class BgpSpeaker {
  private applied: string | undefined;

  constructor(private readonly deps: { runner: CommandRunner; options: BgpOptions; logger: Logger }) {}

  /** Writes and reloads when the configuration changed; a failure is logged and retried next time. */
  async converge(view: HostSnapshot, externals: readonly string[] = []): Promise<boolean> {
    const { options, runner, logger } = this.deps;
    const config = renderBirdConfig(view, options, externals);
    if (config === this.applied) return true;
    const wanted = announcedPrefixes(view, externals);
    const left = wanted.filter((x) => !exportable(wanted, options.exportCidrs).includes(x));
    if (left.length) logger.warn({ prefixes: left }, 'not announced: outside the BGP export ranges (--bgp-export)');
    try {
      const tmp = `${options.configPath}.tmp`;
      await writeFile(tmp, config, { mode: 0o644 });
      await rename(tmp, options.configPath);
      const { stdout } = await runner.run({
        argv: ['birdc', '-s', options.socketPath, 'configure'],
        timeoutMs: 10_000,
      });
      // birdc exits 0 even when BIRD refuses the file: its answer says.
      if (!/Reconfigur(ed|ation in progress)/.test(stdout))
        throw new Error(`BIRD refused the configuration: ${stdout.trim()}`);
      this.applied = config;
      logger.info({ announced: announcedPrefixes(view, externals).length }, 'BGP announcements converged');
      return true;
    } catch (err) {
      logger.warn({ err: describeError(err), socket: options.socketPath }, 'BIRD not reconfigured; will retry');
      return false;
    }
  }
}
