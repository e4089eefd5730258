import { AppError, ErrorCodes } from '../core/errors.js';
import type { Store } from '../store/types.js';

/**
 * Creates a record together with the key of a number it holds alone (a tenant's tag, a VPC's VNI)
 * in one transaction: the number is picked at random and a taken one is simply picked again.
 * E_ALREADY_EXISTS when the record exists; E_CONFLICT when no free number was found.
 */
export async function createHoldingNumber<R>(
  store: Store,
  opts: {
    /** Human words for errors: "tenant acme", "VNI". */
    what: string;
    numberName: string;
    key: string;
    numberKey: (n: number) => string;
    /** A random candidate number. */
    pick: () => number;
    record: (n: number, second?: number) => R;
    /** What the number's key holds: who holds the number. */
    holder: string;
    /**
     * Records the new one depends on (a VPC's tenant; the set of routed VPCs), unchanged since
     * they were read and rewritten by the same transaction, so that deleting or changing one
     * concurrently (which compares its revision) cannot leave the new record without its owner or
     * beside an overlapping one. A guard never written has revision 0.
     */
    guards?: ReadonlyArray<{ key: string; modRevision: bigint; value: string; what: string }>;
    /**
     * A second number the record holds alone (a vlan VPC's VLAN id), picked again on each attempt
     * (it may throw: none left): its key must be unchanged since it was read (absent, or a
     * released tombstone at `modRevision`) and is written with the record.
     */
    second?: () => Promise<{ n: number; key: string; modRevision?: bigint }>;
  },
): Promise<R> {
  const guards = opts.guards ?? [];
  for (let attempt = 0; attempt < 50; attempt++) {
    const n = opts.pick();
    const second = await opts.second?.();
    const record = opts.record(n, second?.n);
    const { succeeded } = await store.txn({
      compare: [
        { key: opts.key, target: 'modRevision', op: '=', value: 0n },
        { key: opts.numberKey(n), target: 'modRevision', op: '=', value: 0n },
        ...guards.map((g) => ({ key: g.key, target: 'modRevision' as const, op: '=' as const, value: g.modRevision })),
        ...(second
          ? [{ key: second.key, target: 'modRevision' as const, op: '=' as const, value: second.modRevision ?? 0n }]
          : []),
      ],
      success: [
        { type: 'put', key: opts.key, value: JSON.stringify(record) },
        { type: 'put', key: opts.numberKey(n), value: opts.holder },
        ...(second ? [{ type: 'put' as const, key: second.key, value: opts.holder }] : []),
        ...guards.map((g) => ({ type: 'put' as const, key: g.key, value: g.value })),
      ],
    });
    if (succeeded) return record;
    if (await store.get(opts.key)) throw new AppError(ErrorCodes.ALREADY_EXISTS, `${opts.what} exists`);
    for (const g of guards) {
      if (((await store.get(g.key))?.modRevision ?? 0n) !== g.modRevision) {
        throw new AppError(ErrorCodes.CONFLICT, `${g.what} changed meanwhile; try again`);
      }
    }
  }
  throw new AppError(ErrorCodes.CONFLICT, `could not allocate a ${opts.numberName}; try again`);
}
