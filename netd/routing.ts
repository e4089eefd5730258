import { formatCidr, parseCidr } from '../core/cidr.js';
import { IpBatch, type IpClient, type Route, type Rule } from '../sys/ip.js';
import type { Logger } from '../sys/log.js';
import type { SourceGuard } from './source-guard.js';
import {
  ROUTED_PROTO,
  ROUTED_TABLE_BASE,
  routeKey,
  ruleKey,
  type DesiredRouting,
  type RouteSpec,
  type RuleSpec,
} from './modes/routed.js';

/**
 * Converges the routes and policy rules netd owns (those marked `proto 78`, both families) to the
 * desired ones: one read of each, two `ip -batch` of differences (see below), then the IPv6 source
 * guard. Routes to a port an ADD is wiring right now (`protect`) are left alone, as the L2
 * reconcile leaves the port itself.
 */
export async function reconcileRouting(
  desired: DesiredRouting,
  ip: IpClient,
  log: Logger,
  opts: {
    /** Ports whose routes are not removed: ADDs in flight and every local record's port. */
    protect: () => ReadonlySet<string>;
    /** Ports an ADD is wiring right now: their routes and guard elements are that ADD's. */
    inFlight: () => ReadonlySet<string>;
    /** Guard keys of the local records as of now (newer than `desired` perhaps): kept. */
    currentGuards?: () => ReadonlySet<string>;
    /** Only these tables (a VPC's first ADD); the guard is then left alone. */
    scope?: { tables: ReadonlySet<number> };
    /**
     * The address families read and converged (default both): a host with no IPv6 routed VPC
     * spares the two IPv6 reads and the guard's once it found none of netd's there.
     */
    families?: ReadonlySet<4 | 6>;
    guard?: SourceGuard;
  },
): Promise<{ owned: Record<4 | 6, number> }> {
  const families = opts.families ?? new Set([4, 6] as const);
  const read = <T>(family: 4 | 6, get: () => Promise<T[]>) =>
    families.has(family) ? get() : Promise.resolve([] as T[]);
  const [routes4, rules4, routes6, rules6] = await Promise.all([
    read(4, () => ip.routesByProto(ROUTED_PROTO, 4)),
    read(4, () => ip.rules(4)),
    read(6, () => ip.routesByProto(ROUTED_PROTO, 6)),
    read(6, () => ip.rules(6)),
  ]);
  const routes = [
    ...routes4.map((r) => ({ r, family: 4 as const })),
    ...routes6.map((r) => ({ r, family: 6 as const })),
  ];
  const rules = [...rules4.map((r) => ({ r, family: 4 as const })), ...rules6.map((r) => ({ r, family: 6 as const }))];
  const { scope, guard } = opts;
  const inScope = (table: number) => !scope || scope.tables.has(table);
  const haveRoutes = new Map<string, { spec: RouteSpec; raw: Route }>();
  for (const { r, family } of routes) {
    const spec = routeOf(r, family);
    if (spec && inScope(spec.table)) haveRoutes.set(routeKey(spec), { spec, raw: r });
  }
  const haveRules = new Map<string, RuleSpec>();
  for (const { r, family } of rules) {
    const spec = ruleOf(r, family);
    if (spec && inScope(spec.table)) haveRules.set(ruleKey(spec), spec);
  }
  // Two rounds, so that no rule ever points at a table without its routes (a packet would fall
  // through to the main table): first rules removed and routes put in place, then rules added and
  // routes removed. A failure of the first stops the second. A batch per family in each round.
  const first = { 4: new IpBatch(4), 6: new IpBatch(6) };
  const second = { 4: new IpBatch(4), 6: new IpBatch(6) };
  const familyOf = (cidr: string) => (cidr === 'default' ? 4 : parseCidr(cidr).family);
  for (const [key, rule] of haveRules) if (!desired.rules.has(key)) first[familyOf(rule.from)].ruleDel(rule);
  const ports = opts.protect();
  const wiring = opts.inFlight();
  const wanted = (cidr: string) => families.has(familyOf(cidr));
  for (const [key, want] of desired.routes) {
    if (!inScope(want.table) || !wanted(want.dst)) continue;
    // A port an ADD is wiring right now gets its route from that ADD, once the port is up (put in
    // place before, it fails: "Device for nexthop is not up", or the port is not there yet).
    if (want.dev !== undefined && wiring.has(want.dev)) continue;
    const have = haveRoutes.get(key)?.spec;
    if (have && sameRoute(have, want)) continue;
    first[familyOf(want.dst)].routeReplace(want.dst, {
      table: want.table,
      proto: ROUTED_PROTO,
      ...(want.type && { type: want.type }),
      ...(want.via && { via: want.via }),
      ...(want.dev && { dev: want.dev }),
      ...(want.scope && { scope: want.scope }),
    });
  }
  for (const [key, rule] of desired.rules) {
    if (inScope(rule.table) && wanted(rule.from) && !haveRules.has(key))
      second[familyOf(rule.from)].ruleAdd({ ...rule, proto: ROUTED_PROTO });
  }
  for (const [key, { spec }] of haveRoutes) {
    if (desired.routes.has(key) || (spec.dev !== undefined && ports.has(spec.dev))) continue;
    second[familyOf(spec.dst)].routeDel(spec.dst, { table: spec.table, ...(spec.type && { type: spec.type }) });
  }
  const owned = { 4: 0, 6: 0 };
  for (const { spec } of haveRoutes.values()) owned[familyOf(spec.dst)]++;
  for (const rule of haveRules.values()) owned[familyOf(rule.from)]++;
  const batches = [first[4], first[6], second[4], second[6]].filter((b) => !b.empty);
  if (batches.length > 0) {
    log.info({ lines: batches.reduce((n, b) => n + b.lines.length, 0) }, 'routes converged');
    // Forgiving: a route to a port that went away meanwhile is the next run's business.
    for (const b of batches) await ip.applyForgivingMissing(b);
  }
  // A scoped run (one VPC's first ADD) leaves the guard to the ADD itself and to full runs.
  if (guard && !scope && families.has(6)) {
    await guard.reconcile(desired.guards, () => ({
      inFlight: opts.inFlight(),
      current: opts.currentGuards?.() ?? new Set(),
    }));
  }
  return { owned };
}

/** netd's routed tables: 0x4e000000 + a 24-bit VNI. Anything else marked proto 78 is not ours. */
function isRoutedTable(table: number): boolean {
  return Number.isInteger(table) && table >= ROUTED_TABLE_BASE && table <= ROUTED_TABLE_BASE + 0xffffff;
}

function routeOf(r: Route, family: 4 | 6): RouteSpec | undefined {
  const table = Number(r.table);
  if (!isRoutedTable(table)) return undefined;
  const host = family === 4 ? 32 : 128;
  const dst =
    r.dst === 'default'
      ? family === 4
        ? 'default'
        : '::/0'
      : formatCidr(parseCidr(r.dst.includes('/') ? r.dst : `${r.dst}/${host}`));
  return {
    table,
    dst,
    ...((r.type === 'prohibit' || r.type === 'local') && { type: r.type }),
    ...(r.dev !== undefined && { dev: r.dev }),
    ...(r.gateway !== undefined && { via: r.gateway }),
    ...(r.scope === 'link' && { scope: 'link' as const }),
  };
}

function ruleOf(r: Rule, family: 4 | 6): RuleSpec | undefined {
  // `ip -j rule show` leaves out the length of a host prefix (/32, /128).
  if (r.protocol !== String(ROUTED_PROTO) || r.src === undefined || r.src === 'all') return undefined;
  const table = Number(r.table);
  if (!isRoutedTable(table)) return undefined;
  const host = family === 4 ? 32 : 128;
  return {
    from: `${r.src}/${r.srclen ?? host}`,
    ...(r.dst !== undefined && r.dst !== 'all' && { to: `${r.dst}/${r.dstlen ?? host}` }),
    table,
    priority: r.priority,
  };
}

function sameRoute(a: RouteSpec, b: RouteSpec): boolean {
  // The kernel shows an IPv6 prohibit route on `lo`; none is asked for.
  const dev = (r: RouteSpec) => (r.type === 'prohibit' ? undefined : r.dev);
  return a.type === b.type && dev(a) === dev(b) && a.via === b.via && a.scope === b.scope;
}
