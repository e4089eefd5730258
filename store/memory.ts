import { AppError, ErrorCodes } from '../core/errors.js';
import { AsyncQueue } from './async-queue.js';
import { storeCompacted, storeUnavailable } from './errors.js';
import type { Compare, KV, Lease, ListResult, Store, TxnOp, TxnRequest, TxnResult, WatchBatch, WatchEvent } from './types.js';

/**
 * An in-memory Store with etcd's semantics: one global revision, create/mod revisions and versions
 * per key, transactions, leases with TTLs, watch history with compaction, and a switch to simulate
 * an outage. Unit tests run components on it; the contract suite keeps it honest against etcd.
 */

interface Watcher {
  prefix: string;
  queue: AsyncQueue<WatchBatch>;
}

interface LeaseState {
  ttlSeconds: number;
  timer: NodeJS.Timeout;
  keys: Set<string>;
  lost: Array<(err: Error) => void>;
}

export class MemoryStore implements Store {
  private revision = 1n;
  private compactRevision = 0n;
  private readonly data = new Map<string, KV>();
  private readonly history: WatchBatch[] = [];
  private readonly watchers = new Set<Watcher>();
  private readonly leases = new Map<string, LeaseState>();
  private nextLeaseId = 1;
  private available = true;
  private closed = false;

  /** Simulates an outage: calls reject and open watches fail with E_STORE_UNAVAILABLE. */
  setAvailable(available: boolean): void {
    this.available = available;
    if (!available) {
      for (const w of this.watchers) w.queue.fail(storeUnavailable('memory store switched off'));
      this.watchers.clear();
    }
  }

  async currentRevision(): Promise<bigint> {
    this.check();
    return this.revision;
  }

  private check(): void {
    if (this.closed) throw new AppError(ErrorCodes.INTERNAL, 'store is closed');
    if (!this.available) throw storeUnavailable('memory store switched off');
  }

  async get(key: string): Promise<KV | undefined> {
    this.check();
    const kv = this.data.get(key);
    return kv && { ...kv };
  }

  async list(prefix: string): Promise<ListResult> {
    this.check();
    const kvs = [...this.data.values()].filter((kv) => kv.key.startsWith(prefix)).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { kvs: kvs.map((kv) => ({ ...kv })), revision: this.revision };
  }

  async listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }> {
    const { kvs, revision } = await this.list(prefix);
    return { keys: kvs.map((kv) => kv.key), revision };
  }

  async put(key: string, value: string, opts: { lease?: string } = {}): Promise<bigint> {
    this.check();
    return this.commit([{ type: 'put', key, value, lease: opts.lease }]);
  }

  async delete(key: string): Promise<bigint> {
    this.check();
    return this.commit([{ type: 'delete', key }]);
  }

  async deletePrefix(prefix: string): Promise<bigint> {
    this.check();
    return this.commit([{ type: 'deletePrefix', prefix }]);
  }

  async txn(req: TxnRequest): Promise<TxnResult> {
    this.check();
    const succeeded = req.compare.every((c) => this.compare(c));
    const revision = this.commit(succeeded ? req.success : (req.failure ?? []));
    return { succeeded, revision };
  }

  private compare(c: Compare): boolean {
    const kv = this.data.get(c.key);
    const actual: bigint | number | string =
      c.target === 'modRevision' ? (kv?.modRevision ?? 0n)
      : c.target === 'createRevision' ? (kv?.createRevision ?? 0n)
      : c.target === 'version' ? (kv?.version ?? 0)
      : (kv?.value ?? '');
    const expected = c.value;
    switch (c.op) {
      case '=': return actual === expected || (typeof actual !== 'string' && BigInt(actual) === BigInt(expected as bigint | number));
      case '!=': return !(actual === expected || (typeof actual !== 'string' && BigInt(actual) === BigInt(expected as bigint | number)));
      case '<': return actual < expected;
      case '>': return actual > expected;
    }
  }

  /** Applies ops atomically at one new revision (none if nothing changes), and notifies watchers. */
  private commit(ops: readonly TxnOp[]): bigint {
    const next = this.revision + 1n;
    const events: WatchEvent[] = [];
    for (const op of ops) {
      if (op.type === 'put') {
        if (op.lease !== undefined && !this.leases.has(op.lease)) {
          throw new AppError(ErrorCodes.NOT_FOUND, `lease ${op.lease} not found`);
        }
        const prev = this.data.get(op.key);
        const kv: KV = {
          key: op.key,
          value: op.value,
          createRevision: prev?.createRevision ?? next,
          modRevision: next,
          version: (prev?.version ?? 0) + 1,
          ...(op.lease !== undefined && { lease: op.lease }),
        };
        if (prev?.lease && prev.lease !== op.lease) this.leases.get(prev.lease)?.keys.delete(op.key);
        if (op.lease) this.leases.get(op.lease)!.keys.add(op.key);
        this.data.set(op.key, kv);
        events.push({ type: 'put', key: op.key, value: op.value, modRevision: next, ...(prev && { prev: { ...prev } }) });
      } else {
        const keys = op.type === 'delete' ? [op.key] : [...this.data.keys()].filter((k) => k.startsWith(op.prefix)).sort();
        for (const key of keys) {
          const prev = this.data.get(key);
          if (!prev) continue;
          this.data.delete(key);
          if (prev.lease) this.leases.get(prev.lease)?.keys.delete(key);
          events.push({ type: 'delete', key, value: '', modRevision: next, prev: { ...prev } });
        }
      }
    }
    if (events.length === 0) return this.revision;
    this.revision = next;
    const batch: WatchBatch = { revision: next, events };
    this.history.push(batch);
    for (const w of this.watchers) this.deliver(w, batch);
    return next;
  }

  private deliver(w: Watcher, batch: WatchBatch): void {
    const events = batch.events.filter((e) => e.key.startsWith(w.prefix));
    if (events.length > 0) w.queue.push({ revision: batch.revision, events });
  }

  async lease(ttlSeconds: number): Promise<Lease> {
    this.check();
    const id = String(this.nextLeaseId++);
    const state: LeaseState = {
      ttlSeconds,
      keys: new Set(),
      lost: [],
      timer: setTimeout(() => this.expire(id), ttlSeconds * 1000),
    };
    state.timer.unref();
    this.leases.set(id, state);
    // Kept alive implicitly while the store is available; an outage longer than the TTL loses it.
    const keepAlive = setInterval(() => {
      const s = this.leases.get(id);
      if (!s) return clearInterval(keepAlive);
      if (this.available) s.timer.refresh();
    }, Math.max(50, (ttlSeconds * 1000) / 3));
    keepAlive.unref();
    return {
      id,
      ttlSeconds,
      revoke: async () => {
        clearInterval(keepAlive);
        this.check();
        this.expire(id, false);
      },
      release: () => clearInterval(keepAlive),
      onLost: (cb) => {
        state.lost.push(cb);
      },
    };
  }

  /** Test hook: expire a lease now, as if its holder died. */
  expireLease(id: string): void {
    this.expire(id);
  }

  private expire(id: string, lost = true): void {
    const state = this.leases.get(id);
    if (!state) return;
    clearTimeout(state.timer);
    this.leases.delete(id);
    const keys = [...state.keys].sort();
    if (keys.length > 0) this.commit(keys.map((key) => ({ type: 'delete', key })));
    if (lost) for (const cb of state.lost) cb(new Error(`lease ${id} expired`));
  }

  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch> {
    const queue = new AsyncQueue<WatchBatch>();
    const w: Watcher = { prefix, queue };
    try {
      this.check();
      if (fromRevision < this.compactRevision) throw storeCompacted(fromRevision, this.compactRevision);
      for (const batch of this.history) if (batch.revision >= fromRevision) this.deliver(w, batch);
      this.watchers.add(w);
      signal.addEventListener('abort', () => {
        this.watchers.delete(w);
        queue.end();
      }, { once: true });
      if (signal.aborted) queue.end();
    } catch (err) {
      queue.fail(err);
    }
    return queue;
  }

  async compact(revision: bigint): Promise<void> {
    this.check();
    if (revision > this.revision) throw new AppError(ErrorCodes.INVALID_INPUT, `cannot compact a future revision ${revision}`);
    if (revision <= this.compactRevision) return;
    this.compactRevision = revision;
    // Like etcd: the compact revision itself stays watchable; everything before it is gone.
    while (this.history.length > 0 && this.history[0]!.revision < revision) this.history.shift();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.watchers) w.queue.end();
    this.watchers.clear();
    for (const [, s] of this.leases) clearTimeout(s.timer);
  }
}
