import { AppError, ErrorCodes } from '../core/errors.js';
import type { KV, Store } from './types.js';

/**
 * Typed JSON on top of the string store. Parsing trusts the stored shape (the writer validated it);
 * a value that is not JSON at all is a corrupted record and reported as E_INTERNAL with its key.
 */

export interface JsonKV<T> extends Omit<KV, 'value'> {
  value: T;
}

export function parseJson<T>(kv: KV): JsonKV<T> {
  try {
    return { ...kv, value: JSON.parse(kv.value) as T };
  } catch (err) {
    throw new AppError(ErrorCodes.INTERNAL, `value of ${kv.key} is not JSON`, { key: kv.key }, { cause: err });
  }
}

export async function getJson<T>(store: Store, key: string): Promise<JsonKV<T> | undefined> {
  const kv = await store.get(key);
  return kv && parseJson<T>(kv);
}

export async function listJson<T>(store: Store, prefix: string): Promise<{ kvs: JsonKV<T>[]; revision: bigint }> {
  const { kvs, revision } = await store.list(prefix);
  return { kvs: kvs.map((kv) => parseJson<T>(kv)), revision };
}

export function putJson<T>(store: Store, key: string, value: T, opts?: { lease?: string }): Promise<bigint> {
  return store.put(key, JSON.stringify(value), opts);
}

/**
 * Read-modify-write of one JSON record by compare-and-swap on its mod revision, retried while
 * others change it meanwhile. `change` returns the new value. Absent: E_NOT_FOUND with `missing`.
 */
export async function updateJson<T>(
  store: Store,
  key: string,
  change: (current: T) => T,
  missing: string,
  attempts = 10,
): Promise<T> {
  for (let attempt = 0; attempt < attempts; attempt++) {
    const kv = await getJson<T>(store, key);
    if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, missing, { key });
    const next = change(kv.value);
    const { succeeded } = await store.txn({
      compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
      success: [{ type: 'put', key, value: JSON.stringify(next) }],
    });
    if (succeeded) return next;
  }
  throw new AppError(ErrorCodes.CONFLICT, `${key} kept changing; try again`, { key });
}
