import type { Compare, Store, TxnOp } from '../store/types.js';

/**
 * Every ipam write is a set of keys, each guarded by the mod revision it was read at (0n: "must
 * not exist"; undefined: unguarded), committed in one transaction: all or nothing.
 */
export interface CasWrite {
  key: string;
  /** The mod revision the key must still have; 0n means absent; undefined means no check. */
  expectModRevision?: bigint;
  /** The new value, or null to delete; undefined: only compare (a guard, e.g. "the pool is unchanged"). */
  value: string | null | undefined;
}

export async function commitCas(store: Store, writes: readonly CasWrite[]): Promise<{ ok: boolean; revision: bigint }> {
  const compare: Compare[] = writes
    .filter((w) => w.expectModRevision !== undefined)
    .map((w) => ({ key: w.key, target: 'modRevision', op: '=', value: w.expectModRevision! }));
  const success: TxnOp[] = writes
    .filter((w): w is CasWrite & { value: string | null } => w.value !== undefined)
    .map((w) => (w.value === null ? { type: 'delete', key: w.key } : { type: 'put', key: w.key, value: w.value }));
  const { succeeded, revision } = await store.txn({ compare, success });
  return { ok: succeeded, revision };
}
