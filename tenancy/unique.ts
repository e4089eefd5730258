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
  },
): Promise<R> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const n = opts.pick();
    const record = opts.record(n);
    const { succeeded } = await store.txn({
      compare: [
        { key: opts.key, target: 'modRevision', op: '=', value: 0n },
        { key: opts.numberKey(n), target: 'modRevision', op: '=', value: 0n },
      ],
      success: [
        { type: 'put', key: opts.key, value: JSON.stringify(record) },
        { type: 'put', key: opts.numberKey(n), value: opts.holder },
      ],
    });
    if (succeeded) return record;
    if (await store.get(opts.key)) throw new AppError(ErrorCodes.ALREADY_EXISTS, `${opts.what} exists`);
  }
  throw new AppError(ErrorCodes.CONFLICT, `could not allocate a ${opts.numberName}; try again`);
}
