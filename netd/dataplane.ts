import { IpBatch, type IpClient, type Link } from '../sys/ip.js';
import { BridgeBatch, type BridgeClient } from '../sys/bridge.js';
import type { Logger } from '../sys/log.js';
import { isCommandError } from '../sys/runner.js';
import { OWNED_LINK_RE } from './names.js';
import { emptyDesired, fdbKey, neighKey, type DesiredL2 } from './modes/mode.js';

/**
 * Converges one host's data path to a DesiredL2 (Felix-style: read actual, diff, apply ordered
 * batches). Only objects named as netd's own (names.ts) are ever changed or removed, so whatever
 * else lives on the host is left alone. Re-running with nothing changed sends nothing.
 */

export interface Plan {
  /** Creations and changes, in dependency order (bridges, then vxlans and ports onto them). */
  create: IpBatch;
  fdb: BridgeBatch;
  /** Neighbour entries on VXLAN devices (ARP suppression), once the devices exist. */
  neighbours: IpBatch;
  /** Removals of orphans, after the FDB has moved off them. */
  remove: IpBatch;
}

export function isEmptyPlan(p: Plan): boolean {
  return p.create.empty && p.fdb.empty && p.neighbours.empty && p.remove.empty;
}

/**
 * Reads the netd-owned part of a host's data path: every link, or only the links named in `only`
 * (then neighbours are read per VXLAN device instead of for the whole host).
 */
export async function readActual(
  ip: IpClient,
  bridge: BridgeClient,
  only?: readonly string[],
): Promise<{ desired: DesiredL2; links: Map<string, Link> }> {
  const actual = emptyDesired();
  const listed = only
    ? (await Promise.all(only.map((name) => ip.link(name)))).filter((l): l is Link => l !== undefined)
    : await ip.links();
  const links = new Map(listed.filter((l) => OWNED_LINK_RE.test(l.ifname)).map((l) => [l.ifname, l]));
  for (const l of links.values()) {
    const kind = l.linkinfo?.info_kind;
    const up = l.flags.includes('UP');
    if (kind === 'bridge' && l.ifname.startsWith('nb'))
      actual.bridges.set(l.ifname, { name: l.ifname, mtu: l.mtu, up });
    else if (kind === 'vxlan' && l.ifname.startsWith('nx')) {
      const data = l.linkinfo?.info_data ?? {};
      actual.vxlans.set(l.ifname, {
        name: l.ifname,
        vni: Number(data.id),
        local: String(data.local ?? ''),
        dev: String(data.link ?? ''),
        mtu: l.mtu,
        master: l.master ?? '',
        proxy: data.proxy === true,
        up,
      });
    } else if (/^n[ie]/.test(l.ifname) || (kind === 'veth' && l.ifname.startsWith('nq')))
      // On Open vSwitch's kernel datapath a port's master is ovs-system: OVS's, not a bridge of ours.
      // A veth "nq…" is a vlan port's egress shaper (its peer "no…" on OVS's userspace datapath).
      actual.ports.set(l.ifname, l.master === 'ovs-system' ? '' : (l.master ?? ''));
    else if (kind === 'ifb' && l.ifname.startsWith('nq')) actual.ifbs.add(l.ifname);
  }
  if (actual.vxlans.size > 0) {
    const neighbours = only
      ? // `ip neigh show dev X` leaves the device out of each entry.
        (
          await Promise.all(
            [...actual.vxlans.keys()].map(async (dev) => (await ip.neighbours(dev)).map((n) => ({ ...n, dev }))),
          )
        ).flat()
      : await ip.neighbours();
    for (const n of neighbours) {
      if (!actual.vxlans.has(n.dev) || !n.lladdr || !(n.state ?? []).includes('PERMANENT')) continue;
      const spec = { ip: n.dst, mac: n.lladdr.toLowerCase(), dev: n.dev };
      actual.neighbours.set(neighKey(spec), spec);
    }
  }
  for (const vx of actual.vxlans.keys()) {
    for (const e of await bridge.fdb({ dev: vx })) {
      if (!e.dst) continue; // the device's own entries, not ours
      const f = { mac: e.mac, dev: vx, dst: e.dst };
      actual.fdb.set(fdbKey(f), f);
    }
  }
  return { desired: actual, links };
}

/**
 * The part of `desired` that hangs off one bridge: the bridge, its VXLAN devices with their FDB
 * and neighbour entries, and the given ports when they belong to it. Planned against a read of
 * only those links, nothing else on the host is looked at or touched.
 */
export function scopeToBridge(desired: DesiredL2, bridgeName: string, ports: readonly string[]): DesiredL2 {
  const out = emptyDesired();
  const b = desired.bridges.get(bridgeName);
  if (b) out.bridges.set(bridgeName, b);
  for (const [name, v] of desired.vxlans) if (v.master === bridgeName) out.vxlans.set(name, v);
  for (const port of ports) if (desired.ports.get(port) === bridgeName) out.ports.set(port, bridgeName);
  for (const [key, f] of desired.fdb) if (out.vxlans.has(f.dev)) out.fdb.set(key, f);
  for (const [key, n] of desired.neighbours) if (out.vxlans.has(n.dev)) out.neighbours.set(key, n);
  return out;
}

/** The names of the links a scoped desired state consists of (what readActual must read). */
export function linksOf(desired: DesiredL2): string[] {
  return [...desired.bridges.keys(), ...desired.vxlans.keys(), ...desired.ports.keys(), ...desired.ifbs];
}

/** `protect`: ports an ADD is wiring right now; never removed as orphans (see reconcile()). */
export function plan(desired: DesiredL2, actual: DesiredL2, protect: ReadonlySet<string> = new Set()): Plan {
  const create = new IpBatch();
  const fdb = new BridgeBatch();
  const neighbours = new IpBatch();
  const remove = new IpBatch();
  const recreated = new Set<string>();

  for (const b of desired.bridges.values()) {
    const have = actual.bridges.get(b.name);
    if (!have) create.linkAddBridge(b.name, { mtu: b.mtu, mcastSnooping: false }).linkSet(b.name, { up: true });
    else if (have.mtu !== b.mtu || have.up === false)
      // A bridge left down (a crash between its creation and `up`) forwards nothing.
      create.linkSet(b.name, { mtu: b.mtu, up: true });
  }
  for (const v of desired.vxlans.values()) {
    const have = actual.vxlans.get(v.name);
    if (have && (have.vni !== v.vni || have.local !== v.local || have.proxy !== v.proxy)) {
      // VNI, local address and the proxy flag cannot be changed in place.
      create.linkDel(v.name);
      recreated.add(v.name);
    }
    if (!have || recreated.has(v.name)) {
      create.linkAddVxlan({
        name: v.name,
        vni: v.vni,
        local: v.local,
        dev: v.dev,
        gbp: true,
        learning: false,
        proxy: v.proxy,
        mtu: v.mtu,
      });
      create.linkSet(v.name, { master: v.master, up: true });
      continue;
    }
    if (have.mtu !== v.mtu) create.linkSet(v.name, { mtu: v.mtu });
    if (have.master !== v.master || have.up === false) create.linkSet(v.name, { master: v.master, up: true });
  }
  for (const [port, bridgeName] of desired.ports) {
    const have = actual.ports.get(port);
    // A port that does not exist yet is the CNI ADD's to create; here it only gets its bridge
    // (external ports, desired with no bridge, are routed and stay off any bridge).
    if (have === undefined || have === bridgeName) continue;
    create.linkSet(port, { master: bridgeName === '' ? null : bridgeName, up: true });
  }

  for (const ifb of desired.ifbs) if (!actual.ifbs.has(ifb)) create.linkAddIfb(ifb).linkSet(ifb, { up: true });

  for (const [key, f] of desired.fdb) {
    if (!actual.fdb.has(key) || recreated.has(f.dev)) fdb.fdbAppend(f.mac, f.dev, { dst: f.dst });
  }
  for (const [key, n] of desired.neighbours) {
    const have = actual.neighbours.get(key);
    if (!have || have.mac !== n.mac || recreated.has(n.dev)) neighbours.neighReplace(n.ip, n.mac, n.dev);
  }
  for (const [key, n] of actual.neighbours) {
    if (!desired.neighbours.has(key) && desired.vxlans.has(n.dev) && !recreated.has(n.dev))
      neighbours.neighDel(n.ip, n.dev, n.mac);
  }
  for (const [key, f] of actual.fdb) {
    if (!desired.fdb.has(key) && desired.vxlans.has(f.dev) && !recreated.has(f.dev))
      fdb.fdbDel(f.mac, f.dev, { dst: f.dst });
  }

  for (const port of actual.ports.keys()) if (!desired.ports.has(port) && !protect.has(port)) remove.linkDel(port);
  for (const ifb of actual.ifbs) if (!desired.ifbs.has(ifb) && !protect.has(ifb)) remove.linkDel(ifb);
  for (const vx of actual.vxlans.keys()) if (!desired.vxlans.has(vx)) remove.linkDel(vx);
  for (const br of actual.bridges.keys()) if (!desired.bridges.has(br)) remove.linkDel(br);
  return { create, fdb, neighbours, remove };
}

/**
 * Creates a scoped desired state (see scopeToBridge) believed absent, without reading first: the
 * plan against "only these ports, on no bridge" is applied as it stands. A kernel that has any of
 * it already refuses the batch at the first line that exists (a batch without -force stops
 * there), and so does a port that vanished; then this returns false and the caller reads and
 * reconciles, which also finishes what the batch did before it stopped. Saves one `ip` per link on
 * the first ADD into a VPC on a host.
 */
export async function createAbsent(
  desired: DesiredL2,
  clients: { ip: IpClient; bridge: BridgeClient },
  log?: Logger,
): Promise<boolean> {
  const assumed = emptyDesired();
  for (const port of desired.ports.keys()) assumed.ports.set(port, '');
  const p = plan(desired, assumed);
  log?.debug({ create: p.create.lines, fdb: p.fdb.lines, neighbours: p.neighbours.lines }, 'create absent bridge');
  try {
    await clients.ip.apply(p.create);
  } catch (err) {
    if (isCommandError(err)) return false;
    throw err;
  }
  await clients.bridge.apply(p.fdb);
  await clients.ip.apply(p.neighbours);
  return true;
}

/** Reads, diffs and applies; returns the plan that was applied (empty when already converged). */
export async function reconcile(
  desired: DesiredL2,
  clients: { ip: IpClient; bridge: BridgeClient },
  log?: Logger,
  inFlight: () => ReadonlySet<string> = () => new Set(),
  /** Read only these links (a scoped desired state, see scopeToBridge) instead of all. */
  only?: readonly string[],
): Promise<Plan> {
  const { desired: actual } = await readActual(clients.ip, clients.bridge, only);
  // Read after the kernel: a port created since `desired` was computed belongs to an ADD in
  // flight, which registered it before creating it.
  const p = plan(desired, actual, inFlight());
  if (isEmptyPlan(p)) return p;
  log?.debug(
    { create: p.create.lines, fdb: p.fdb.lines, neighbours: p.neighbours.lines, remove: p.remove.lines },
    'reconcile',
  );
  await clients.ip.apply(p.create);
  await clients.bridge.apply(p.fdb);
  // An entry to delete may be gone already (its device was just recreated): that is success.
  await clients.ip.applyForgivingMissing(p.neighbours);
  // A port can vanish between the read and the delete (its netns was just destroyed): removals run
  // with -force, and lines that failed only because the link is already gone are success.
  await clients.ip.apply(p.remove, { force: true }).catch((err: unknown) => {
    if (!onlyMissingLinks(err)) throw err;
  });
  return p;
}

function onlyMissingLinks(err: unknown): boolean {
  if (!isCommandError(err)) return false;
  const lines = err.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^Command failed/.test(l));
  return lines.length > 0 && lines.every((l) => /Cannot find device|No such device/.test(l));
}
