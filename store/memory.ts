import { AppError, ErrorCodes } from '../core/errors.js';
import { AsyncQueue } from './async-queue.js';
import { storeCompacted, storeUnavailable } from './errors.js';
import type {
  Compare,
  KV,
  Lease,
  ListResult,
  Store,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResult,
  WatchBatch,
  WatchEvent,
} from './types.js';

/**
 * An in-memory Store with etcd's semantics: one global revision, create/mod revisions and versions
 * per key, atomic transactions, leases with TTLs, watch history with compaction, and a switch to
 * simulate an outage. Unit tests run components on it; the contract suite keeps it honest against
 * a real etcd.
 *
 * Not a production store: history is kept until compact() is called.
 */

export interface MemoryStoreOptions {
  /** Watch buffer per watcher before it fails with E_STORE_UNAVAILABLE (like a slow etcd client). */
  watchBufferLimit?: number;
}

interface Watcher {
  prefix: string;
  owner: MemoryStore;
  queue: AsyncQueue<WatchBatch>;
}

interface LeaseState {
  timer: NodeJS.Timeout;
  keys: Set<string>;
  lost: Array<(err: Error) => void>;
}

/** The "server": data, history and leases, shared by every client connected to it. */
class Backend {
  revision = 1n; // etcd starts at 1 too: a fresh store's first write is revision 2
  compactRevision = 0n;
  readonly data = new Map<string, KV>();
  readonly history: WatchBatch[] = [];
  readonly watchers = new Set<Watcher>();
  readonly leases = new Map<string, LeaseState>();
  nextLeaseId = 1;

  range(prefix: string, exact = false): KV[] {
    const kvs = exact
      ? [this.data.get(prefix)].filter((kv): kv is KV => kv !== undefined)
      : [...this.data.values()].filter((kv) => kv.key.startsWith(prefix));
    // etcd sorts by key bytes; for these keys (ASCII) code-unit order is the same.
    return kvs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0)).map((kv) => ({ ...kv }));
  }

  compare(c: Compare): boolean {
    const kv = this.data.get(c.key);
    const actual =
      c.target === 'value'
        ? kv?.value
        : c.target === 'version'
          ? BigInt(kv?.version ?? 0)
          : c.target === 'modRevision'
            ? (kv?.modRevision ?? 0n)
            : (kv?.createRevision ?? 0n);
    // etcd: a value compare on a missing key is false, whatever the operator.
    if (actual === undefined) return false;
    const expected = typeof actual === 'string' ? String(c.value) : BigInt(c.value);
    switch (c.op) {
      case '=':
        return actual === expected;
      case '!=':
        return actual !== expected;
      case '<':
        return actual < expected;
      case '>':
        return actual > expected;
    }
  }

  /** Rejects what etcd rejects: a put to a key that another op of the transaction also writes. */
  private validate(ops: readonly TxnOp[]): void {
    const puts = new Set<string>();
    for (const op of ops) {
      if (op.type !== 'put') continue;
      if (puts.has(op.key)) throw new AppError(ErrorCodes.INVALID_INPUT, `duplicate key ${op.key} in transaction`);
      puts.add(op.key);
      if (op.lease !== undefined && !this.leases.has(op.lease))
        throw new AppError(ErrorCodes.NOT_FOUND, `lease ${op.lease} not found`);
    }
    for (const op of ops) {
      const hit =
        op.type === 'delete'
          ? puts.has(op.key)
          : op.type === 'deletePrefix' && [...puts].some((k) => k.startsWith(op.prefix));
      if (hit) throw new AppError(ErrorCodes.INVALID_INPUT, 'a transaction may not put and delete the same key');
    }
  }

  /** Applies ops atomically at one new revision (none if nothing changed), and notifies watchers. */
  commit(ops: readonly TxnOp[]): { revision: bigint; responses: TxnOpResult[] } {
    this.validate(ops);
    const next = this.revision + 1n;
    const events: WatchEvent[] = [];
    const responses: TxnOpResult[] = [];
    for (const op of ops) {
      switch (op.type) {
        case 'get':
          responses.push({ type: 'get', kvs: this.range(op.key, true) });
          break;
        case 'getPrefix':
          responses.push({ type: 'getPrefix', kvs: this.range(op.prefix) });
          break;
        case 'put': {
          const prev = this.data.get(op.key);
          const kv: KV = {
            key: op.key,
            value: op.value,
            createRevision: prev?.createRevision ?? next,
            modRevision: next,
            version: (prev?.version ?? 0) + 1,
            ...(op.lease !== undefined && { lease: op.lease }),
          };
          if (prev?.lease !== undefined) this.leases.get(prev.lease)?.keys.delete(op.key);
          if (op.lease !== undefined) this.leases.get(op.lease)?.keys.add(op.key);
          this.data.set(op.key, kv);
          events.push({ type: 'put', kv: { ...kv }, ...(prev && { prevKv: prev }) });
          responses.push({ type: 'put' });
          break;
        }
        case 'delete':
        case 'deletePrefix': {
          const keys = op.type === 'delete' ? [op.key] : this.range(op.prefix).map((kv) => kv.key);
          let deleted = 0;
          for (const key of keys) {
            const prev = this.data.get(key);
            if (!prev) continue;
            deleted++;
            this.data.delete(key);
            if (prev.lease !== undefined) this.leases.get(prev.lease)?.keys.delete(key);
            events.push({
              type: 'delete',
              kv: { key, value: '', createRevision: 0n, modRevision: next, version: 0 },
              prevKv: prev,
            });
          }
          responses.push({ type: op.type, deleted });
          break;
        }
      }
    }
    if (events.length === 0) return { revision: this.revision, responses };
    this.revision = next;
    const batch: WatchBatch = { revision: next, events };
    this.history.push(batch);
    for (const w of [...this.watchers]) this.deliver(w, batch);
    return { revision: next, responses };
  }

  deliver(w: Watcher, batch: WatchBatch): void {
    const events = batch.events.filter((e) => e.kv.key.startsWith(w.prefix));
    // Copies: a consumer that mutates what it got must not change history.
    if (events.length > 0) w.queue.push({ revision: batch.revision, events: events.map(copyEvent) });
  }

  expire(id: string, lost: boolean): void {
    const state = this.leases.get(id);
    if (!state) return;
    clearTimeout(state.timer);
    this.leases.delete(id);
    const keys = [...state.keys].sort();
    if (keys.length > 0) this.commit(keys.map((key) => ({ type: 'delete', key })));
    if (lost) for (const cb of state.lost) cb(new Error(`lease ${id} expired`));
  }
}

/**
 * A client of an in-memory backend. `new MemoryStore()` creates a backend; `connect()` opens another
 * client on the same backend, with its own availability switch: two "processes", one "etcd".
 */
export class MemoryStore implements Store {
  private readonly backend: Backend;
  private available = true;
  private closed = false;
  private readonly keepAlives = new Set<NodeJS.Timeout>();

  /** `backend` is internal (connect() passes it); callers construct with options only. */
  constructor(
    private readonly opts: MemoryStoreOptions = {},
    backend?: Backend,
  ) {
    this.backend = backend ?? new Backend();
  }

  /** Another client on the same data (its availability is switched independently). */
  connect(): MemoryStore {
    return new MemoryStore(this.opts, this.backend);
  }

  /**
   * Test hook, simulates losing this client's connection: calls reject with E_STORE_UNAVAILABLE,
   * open watches fail with it, and leases stop being kept alive (they expire after their TTL).
   */
  setAvailable(available: boolean): void {
    this.available = available;
    if (!available) {
      for (const w of [...this.backend.watchers])
        if (w.owner === this) w.queue.fail(storeUnavailable('memory store switched off'));
    }
  }

  /** Test hook: expires a lease now, as if its holder had died. */
  expireLease(id: string): void {
    this.backend.expire(id, true);
  }

  async currentRevision(): Promise<bigint> {
    this.check();
    return this.backend.revision;
  }

  async get(key: string): Promise<KV | undefined> {
    this.check();
    return this.backend.range(key, true)[0];
  }

  async list(prefix: string): Promise<ListResult> {
    this.check();
    return { kvs: this.backend.range(prefix), revision: this.backend.revision };
  }

  async listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }> {
    const { kvs, revision } = await this.list(prefix);
    return { keys: kvs.map((kv) => kv.key), revision };
  }

  async put(key: string, value: string, opts: { lease?: string } = {}): Promise<bigint> {
    this.check();
    return this.backend.commit([{ type: 'put', key, value, ...(opts.lease !== undefined && { lease: opts.lease }) }])
      .revision;
  }

  async delete(key: string): Promise<bigint> {
    this.check();
    return this.backend.commit([{ type: 'delete', key }]).revision;
  }

  async deletePrefix(prefix: string): Promise<bigint> {
    this.check();
    return this.backend.commit([{ type: 'deletePrefix', prefix }]).revision;
  }

  async txn(req: TxnRequest): Promise<TxnResult> {
    this.check();
    const succeeded = req.compare.every((c) => this.backend.compare(c));
    const { revision, responses } = this.backend.commit(succeeded ? req.success : (req.failure ?? []));
    return { succeeded, revision, responses };
  }

  async lease(ttlSeconds: number): Promise<Lease> {
    this.check();
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new AppError(
        ErrorCodes.INVALID_INPUT,
        `lease TTL must be a whole number of seconds >= 1, got ${ttlSeconds}`,
      );
    const backend = this.backend;
    const id = String(backend.nextLeaseId++);
    const state: LeaseState = {
      keys: new Set(),
      lost: [],
      timer: setTimeout(() => backend.expire(id, true), ttlSeconds * 1000),
    };
    state.timer.unref();
    backend.leases.set(id, state);
    // Refreshed while this client is connected; an outage longer than the TTL loses it, as with etcd.
    const keepAlive = setInterval(
      () => {
        const s = backend.leases.get(id);
        if (!s) stopKeepAlive();
        else if (this.available) s.timer.refresh();
      },
      (ttlSeconds * 1000) / 3,
    );
    keepAlive.unref();
    this.keepAlives.add(keepAlive);
    const stopKeepAlive = (): void => {
      clearInterval(keepAlive);
      this.keepAlives.delete(keepAlive);
    };
    return {
      id,
      ttlSeconds,
      revoke: async () => {
        this.check();
        stopKeepAlive();
        backend.expire(id, false);
      },
      release: stopKeepAlive,
      onLost: (cb) => {
        if (backend.leases.has(id)) state.lost.push(cb);
        else cb(new Error(`lease ${id} expired`));
      },
    };
  }

  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch> {
    const backend = this.backend;
    const onAbort = (): void => queue.end();
    const w: Watcher = {
      prefix,
      owner: this,
      queue: new AsyncQueue<WatchBatch>({
        limit: this.opts.watchBufferLimit,
        overflow: () => storeUnavailable('watch buffer full: the consumer is too slow'),
        onClose: () => {
          backend.watchers.delete(w);
          signal.removeEventListener('abort', onAbort);
        },
      }),
    };
    const queue = w.queue;
    if (signal.aborted) {
      queue.end();
      return queue;
    }
    try {
      this.check();
      // Like etcd: the compact revision itself is still watchable; anything before it is gone.
      if (fromRevision < backend.compactRevision) throw storeCompacted(fromRevision, backend.compactRevision);
    } catch (err) {
      queue.fail(err);
      return queue;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    backend.watchers.add(w);
    for (const batch of backend.history) if (batch.revision >= fromRevision) backend.deliver(w, batch);
    return queue;
  }

  async compact(revision: bigint): Promise<void> {
    this.check();
    const backend = this.backend;
    if (revision > backend.revision)
      throw new AppError(
        ErrorCodes.INVALID_INPUT,
        `cannot compact future revision ${revision} (current ${backend.revision})`,
      );
    if (revision <= backend.compactRevision)
      throw new AppError(ErrorCodes.STORE_COMPACTED, `revision ${revision} has already been compacted`);
    backend.compactRevision = revision;
    while (backend.history.length > 0 && backend.history[0]!.revision < revision) backend.history.shift();
  }

  /** Closes this client: its watches end and its leases are no longer kept alive. */
  async close(): Promise<void> {
    this.closed = true;
    for (const w of [...this.backend.watchers]) if (w.owner === this) w.queue.end();
    for (const t of this.keepAlives) clearInterval(t);
    this.keepAlives.clear();
  }

  private check(): void {
    if (this.closed) throw new AppError(ErrorCodes.INTERNAL, 'store client is closed');
    if (!this.available) throw storeUnavailable('memory store switched off');
  }
}

function copyEvent(e: WatchEvent): WatchEvent {
  return { type: e.type, kv: { ...e.kv }, ...(e.prevKv && { prevKv: { ...e.prevKv } }) };
}
