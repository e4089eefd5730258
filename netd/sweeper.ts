import { describeError } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import type { Lease, Store } from '../store/types.js';
import type { Ipam } from '../ipam/allocator.js';
import type { Suspect } from '../ipam/sweep.js';
import { MODEL_ROOT, modelKeys } from '../tenancy/keys.js';

/**
 * The dead-host sweeper. A host that stops renewing its lease disappears from /netd/v1/hosts/ at
 * once, and every other host drops its FDB entries then (the data path does not wait). Its
 * endpoint records and addresses stay, so that a host that comes back finds its containers as
 * they were. Only after the host has stayed away for the grace period does one netd in the
 * cluster (the holder of a leased lock) delete those records and release those addresses.
 * Every removal is a compare-and-swap on the revision seen across the whole grace period: a
 * record that changed meanwhile is left for the next pass.
 */

export const SWEEPER_LOCK = `${MODEL_ROOT}sweeper`;

interface Seen {
  modRevision: bigint;
  gone: boolean;
}

/**
 * Which keys have been gone, unchanged, for at least `graceMs` (pure). Returns those due for
 * removal and the suspects to remember for the next pass.
 */
export function agedOut(
  items: ReadonlyMap<string, Seen>,
  previous: ReadonlyMap<string, Suspect>,
  nowMs: number,
  graceMs: number,
): { due: string[]; suspects: Map<string, Suspect> } {
  const due: string[] = [];
  const suspects = new Map<string, Suspect>();
  for (const [key, { modRevision, gone }] of items) {
    if (!gone) continue;
    const seen = previous.get(key);
    if (seen && seen.modRevision === modRevision) {
      if (nowMs - seen.firstSeenMs >= graceMs) due.push(key);
      else suspects.set(key, seen);
    } else suspects.set(key, { firstSeenMs: nowMs, modRevision });
  }
  return { due, suspects };
}

export interface SweepReport {
  leader: boolean;
  removedRecords: string[];
  releasedAddresses: string[];
  deadHosts: string[];
}

export interface DeadHostSweeperDeps {
  store: Store;
  ipam: Ipam;
  /** This host's name (the lock's value). */
  host: string;
  /** External (eth0) pools, netd's even when no record names them any more. */
  externalPools?: readonly string[];
  logger: Logger;
  now?: () => number;
}

export class DeadHostSweeper {
  private recordSuspects = new Map<string, Suspect>();
  private addressSuspects = new Map<string, Suspect>();
  private readonly now: () => number;

  constructor(
    private readonly deps: DeadHostSweeperDeps,
    private readonly graceMs: number,
  ) {
    this.now = deps.now ?? Date.now;
  }

  /** One pass; only the lock holder sweeps. `lease` binds the lock to this daemon's life. */
  async pass(lease: Lease | undefined): Promise<SweepReport> {
    const report: SweepReport = { leader: false, removedRecords: [], releasedAddresses: [], deadHosts: [] };
    if (!lease || !(await this.lead(lease))) {
      // A new leader starts its grace periods afresh: nothing is removed on another's word.
      this.recordSuspects.clear();
      this.addressSuspects.clear();
      return report;
    }
    report.leader = true;
    const { store } = this.deps;
    const [hosts, internal, external, vpcs] = await Promise.all([
      store.list(modelKeys.hosts()),
      store.list(modelKeys.endpoints()),
      store.list(modelKeys.externals()),
      store.list(modelKeys.vpcs()),
    ]);
    const alive = new Set(hosts.kvs.map((kv) => kv.key.slice(modelKeys.hosts().length)));
    const records = new Map<string, Seen>();
    const netdPools = new Set([
      ...vpcs.kvs.map((kv) => (JSON.parse(kv.value) as { name: string }).name),
      ...(this.deps.externalPools ?? []),
    ]);
    const dead = new Set<string>();
    for (const kv of [...internal.kvs, ...external.kvs]) {
      const rec = JSON.parse(kv.value) as { host: string; pool?: string };
      if (rec.pool) netdPools.add(rec.pool);
      const gone = !alive.has(rec.host);
      if (gone) dead.add(rec.host);
      records.set(kv.key, { modRevision: kv.modRevision, gone });
    }
    // Addresses in netd's pools held by hosts that are not registered.
    const handles = (await this.deps.ipam.handles()).filter((h) => netdPools.has(h.record.pool) && !h.record.sticky);
    const addresses = new Map<string, Seen>();
    for (const h of handles) {
      const gone = !alive.has(h.record.host);
      if (gone) dead.add(h.record.host);
      addresses.set(`${h.record.pool}/${h.record.handle}`, { modRevision: h.modRevision, gone });
    }
    report.deadHosts = [...dead].sort();
    const now = this.now();
    const recordsDue = agedOut(records, this.recordSuspects, now, this.graceMs);
    const addressesDue = agedOut(addresses, this.addressSuspects, now, this.graceMs);
    this.recordSuspects = recordsDue.suspects;
    this.addressSuspects = addressesDue.suspects;

    for (const key of recordsDue.due) {
      const { succeeded } = await store.txn({
        compare: [{ key, target: 'modRevision', op: '=', value: records.get(key)!.modRevision }],
        success: [{ type: 'delete', key }],
      });
      if (succeeded) report.removedRecords.push(key);
    }
    const byKey = new Map(handles.map((h) => [`${h.record.pool}/${h.record.handle}`, h]));
    for (const key of addressesDue.due) {
      const h = byKey.get(key)!;
      // releaseRecord compares the handle's revision and sequence: a re-used handle is not touched.
      if (await this.deps.ipam.releaseRecord(h.record, h.modRevision))
        report.releasedAddresses.push(`${h.record.pool}/${h.record.ip}`);
    }
    if (report.removedRecords.length || report.releasedAddresses.length) {
      this.deps.logger.warn(
        { deadHosts: report.deadHosts, records: report.removedRecords.length, addresses: report.releasedAddresses },
        'swept what dead hosts left behind',
      );
    }
    return report;
  }

  /** Takes the lock if nobody holds it; holds it while this daemon's lease lives. */
  private async lead(lease: Lease): Promise<boolean> {
    const { store, host } = this.deps;
    try {
      const { succeeded } = await store.txn({
        compare: [{ key: SWEEPER_LOCK, target: 'modRevision', op: '=', value: 0n }],
        success: [{ type: 'put', key: SWEEPER_LOCK, value: host, lease: lease.id }],
      });
      if (succeeded) return true;
      return (await store.get(SWEEPER_LOCK))?.value === host;
    } catch (err) {
      this.deps.logger.warn({ err: describeError(err) }, 'sweeper lock unavailable; skipping this pass');
      return false;
    }
  }
}
