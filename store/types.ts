/**
 * The state store: what every component needs from etcd, and nothing more. Two implementations:
 * EtcdStore (real) and MemoryStore (same semantics, for unit tests). Keys and values are strings;
 * values are JSON by convention. Revisions are bigints (etcd's int64).
 *
 * Failure contract: anything that cannot reach the store rejects with E_STORE_UNAVAILABLE; a lost
 * compare-and-swap is not an error (`succeeded: false`); a watch reports disconnection
 * (E_STORE_UNAVAILABLE) and compaction (E_STORE_COMPACTED) by throwing, and never resumes by
 * itself: resuming is the WatchConsumer's job, which knows what it has applied.
 */

export interface KV {
  key: string;
  value: string;
  createRevision: bigint;
  modRevision: bigint;
  version: number;
  /** Lease id, when the key is bound to one. */
  lease?: string;
}

export type CompareTarget = 'modRevision' | 'createRevision' | 'version' | 'value';
export type CompareOp = '=' | '!=' | '<' | '>';

export interface Compare {
  key: string;
  target: CompareTarget;
  op: CompareOp;
  /** bigint for revisions, number for version, string for value. */
  value: bigint | number | string;
}

export type TxnOp =
  | { type: 'put'; key: string; value: string; lease?: string }
  | { type: 'delete'; key: string }
  | { type: 'deletePrefix'; prefix: string };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure?: TxnOp[];
}

export interface TxnResult {
  succeeded: boolean;
  /** Store revision after the transaction (its own revision when it wrote). */
  revision: bigint;
}

export interface WatchEvent {
  type: 'put' | 'delete';
  key: string;
  /** Empty for deletes. */
  value: string;
  /** The revision of this change. */
  modRevision: bigint;
  prev?: KV;
}

/** The events of one revision (etcd delivers a transaction's events together). */
export interface WatchBatch {
  revision: bigint;
  events: WatchEvent[];
}

export interface Lease {
  readonly id: string;
  readonly ttlSeconds: number;
  /** Deletes the lease and, at once, every key bound to it. */
  revoke(): Promise<void>;
  /** Stops keeping it alive without revoking: its keys expire after the TTL, as if we had died. */
  release(): void;
  /** Called once if the lease expires or can no longer be kept alive. */
  onLost(cb: (err: Error) => void): void;
}

export interface ListResult {
  kvs: KV[];
  /** The store's revision at the time of the read: watch from revision + 1 to miss nothing. */
  revision: bigint;
}

export interface Store {
  get(key: string): Promise<KV | undefined>;
  list(prefix: string): Promise<ListResult>;
  /** Keys only (values left empty): cheap when only existence matters. */
  listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }>;
  /** Returns the revision of the write. */
  put(key: string, value: string, opts?: { lease?: string }): Promise<bigint>;
  /** Returns the store revision after the delete (deleting a missing key is success). */
  delete(key: string): Promise<bigint>;
  deletePrefix(prefix: string): Promise<bigint>;
  txn(req: TxnRequest): Promise<TxnResult>;
  /** A lease kept alive until revoked or lost. */
  lease(ttlSeconds: number): Promise<Lease>;
  /**
   * Every change under `prefix` from `fromRevision` on, in revision order. Ends when `signal` aborts;
   * throws E_STORE_UNAVAILABLE on disconnection and E_STORE_COMPACTED (details.compactRevision)
   * when `fromRevision` is no longer in history.
   */
  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch>;
  /** The store's current revision (cheap: no data). */
  currentRevision(): Promise<bigint>;
  /** Discards history before `revision`. */
  compact(revision: bigint): Promise<void>;
  close(): Promise<void>;
}
