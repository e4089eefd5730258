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
    record: (n: number) => R;
    /** What the number's key holds: who holds the number. */
    holder: string;
    /**
     * A record the new one depends on (a VPC's tenant), unchanged since it was read and touched
     * by the same transaction, so that deleting it concurrently (which compares its revision)
     * cannot leave the new record without its owner.
     */
    owner?: { key: string; modRevision: bigint; value: string; what: string };
  },
): Promise<R> {
  const owner = opts.owner;
  for (let attempt = 0; attempt < 50; attempt++) {
    const n = opts.pick();
    const record = opts.record(n);
    const { succeeded } = await store.txn({
      compare: [
        { key: opts.key, target: 'modRevision', op: '=', value: 0n },
        { key: opts.numberKey(n), target: 'modRevision', op: '=', value: 0n },
        ...(owner
          ? [{ key: owner.key, target: 'modRevision' as const, op: '=' as const, value: owner.modRevision }]
          : []),
      ],
      success: [
        { type: 'put', key: opts.key, value: JSON.stringify(record) },
        { type: 'put', key: opts.numberKey(n), value: opts.holder },
        ...(owner ? [{ type: 'put' as const, key: owner.key, value: owner.value }] : []),
      ],
    });
    if (succeeded) return record;
    if (await store.get(opts.key)) throw new AppError(ErrorCodes.ALREADY_EXISTS, `${opts.what} exists`);
    if (owner && (await store.get(owner.key))?.modRevision !== owner.modRevision) {
      throw new AppError(ErrorCodes.CONFLICT, `${owner.what} changed meanwhile; try again`);
    }
  }
  throw new AppError(ErrorCodes.CONFLICT, `could not allocate a ${opts.numberName}; try again`);
}
