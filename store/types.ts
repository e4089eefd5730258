/**
 * The state store: what every component needs from etcd, and nothing more. Two implementations:
 * EtcdStore (real) and MemoryStore (same semantics, for unit tests); test/contract.ts holds both to
 * one behaviour. Keys and values are strings; values are JSON by convention (see json.ts).
 * Revisions are bigints (etcd's int64).
 *
 * Failure contract: anything that cannot reach the store rejects with E_STORE_UNAVAILABLE; a lost
 * compare-and-swap is not an error (`succeeded: false`); a watch reports disconnection
 * (E_STORE_UNAVAILABLE) and compaction (E_STORE_COMPACTED) by throwing, and never resumes by
 * itself: resuming is the WatchConsumer's job, because only it knows what it has applied.
 */

export interface KV {
  key: string;
  /** Empty for the kv of a delete event. */
  value: string;
  /** 0n for the kv of a delete event. */
  createRevision: bigint;
  /** The revision of the last change; for a delete event, the delete's revision. */
  modRevision: bigint;
  /** Number of puts since creation; 0 for the kv of a delete event. */
  version: number;
  /** Lease id, when the key is bound to one. */
  lease?: string;
}

export type CompareTarget = 'modRevision' | 'createRevision' | 'version' | 'value';
export type CompareOp = '=' | '!=' | '<' | '>';

/**
 * One condition of a transaction. An absent key has modRevision, createRevision and version 0, so
 * `{ target: 'modRevision', op: '=', value: 0n }` means "the key does not exist" (create-if-absent).
 */
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
  | { type: 'deletePrefix'; prefix: string }
  | { type: 'get'; key: string }
  | { type: 'getPrefix'; prefix: string };

/** One response per op of the branch that ran, in order. */
export type TxnOpResult =
  { type: 'put' } | { type: 'delete' | 'deletePrefix'; deleted: number } | { type: 'get' | 'getPrefix'; kvs: KV[] };

export interface TxnRequest {
  compare: Compare[];
  success: TxnOp[];
  failure?: TxnOp[];
}

export interface TxnResult {
  succeeded: boolean;
  /** Store revision after the transaction (its own revision when it wrote). */
  revision: bigint;
  responses: TxnOpResult[];
}

export interface WatchEvent {
  type: 'put' | 'delete';
  /** For a delete: the key, empty value, and modRevision = the delete's revision. */
  kv: KV;
  /** The key's previous state, when there was one. */
  prevKv?: KV;
}

/** The events of one revision (a transaction's events arrive together), in store order. */
export interface WatchBatch {
  revision: bigint;
  events: WatchEvent[];
}

export interface Lease {
  readonly id: string;
  /** The TTL the store granted (etcd may raise a small TTL to its minimum). */
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
  /** Every key under `prefix`, sorted by key (byte order). */
  list(prefix: string): Promise<ListResult>;
  /** Keys only: cheap when only existence matters. */
  listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }>;
  /** Returns the revision of the write. A lease that does not exist rejects with E_NOT_FOUND. */
  put(key: string, value: string, opts?: { lease?: string }): Promise<bigint>;
  /** Returns the store revision after the delete (deleting a missing key is success). */
  delete(key: string): Promise<bigint>;
  deletePrefix(prefix: string): Promise<bigint>;
  /** Atomic compare-and-swap: all writes of the branch that runs get one revision. */
  txn(req: TxnRequest): Promise<TxnResult>;
  /** A lease kept alive (automatically) until revoked, released or lost. */
  lease(ttlSeconds: number): Promise<Lease>;
  /**
   * Every change under `prefix` from `fromRevision` on, in revision order. Ends when `signal`
   * aborts; throws E_STORE_UNAVAILABLE on disconnection and E_STORE_COMPACTED
   * (details.compactRevision) when `fromRevision` is no longer in history.
   */
  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch>;
  /** The store's current revision (cheap: no data). */
  currentRevision(): Promise<bigint>;
  /** Discards history before `revision`: watches from below it fail with E_STORE_COMPACTED. */
  compact(revision: bigint): Promise<void>;
  close(): Promise<void>;
}
