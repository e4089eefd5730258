import type { HandleRecord } from './keys.js';

/**
 * Deciding what the sweeper may release (pure). An address is released only after its owner has
 * been seen gone on two passes at least `graceMs` apart, with the handle record unchanged in
 * between: a container that is just starting, or a host that blinked, keeps its address.
 */

export interface Suspect {
  firstSeenMs: number;
  modRevision: bigint;
}

export interface OwnerCheck {
  /** Is the host that allocated it alive (registered with a live lease)? */
  hostAlive(host: string): boolean;
  /** For this host's handles: does the container's netns still exist? */
  netnsExists(path: string): boolean;
}

export function ownerGone(rec: HandleRecord, localHost: string, check: OwnerCheck): boolean {
  if (rec.sticky) return false; // a named workload's address is kept on purpose
  if (!check.hostAlive(rec.host)) return true;
  return rec.host === localHost && rec.netns !== undefined && !check.netnsExists(rec.netns);
}

export interface SweepDecision {
  release: string[];
  suspects: Map<string, Suspect>;
}

/**
 * One pass: returns the handle keys to release now and the suspects to remember for the next pass.
 * `handles` maps a handle key to its record and mod revision.
 */
export function decideSweep(
  handles: ReadonlyMap<string, { record: HandleRecord; modRevision: bigint }>,
  previous: ReadonlyMap<string, Suspect>,
  localHost: string,
  check: OwnerCheck,
  nowMs: number,
  graceMs: number,
): SweepDecision {
  const suspects = new Map<string, Suspect>();
  const release: string[] = [];
  for (const [key, { record, modRevision }] of handles) {
    if (!ownerGone(record, localHost, check)) continue;
    const seen = previous.get(key);
    if (seen && seen.modRevision === modRevision) {
      if (nowMs - seen.firstSeenMs >= graceMs) release.push(key);
      else suspects.set(key, seen);
    } else {
      suspects.set(key, { firstSeenMs: nowMs, modRevision });
    }
  }
  return { release, suspects };
}
