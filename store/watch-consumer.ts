import { setTimeout as sleepTimer } from 'node:timers/promises';
import { ErrorCodes, describeError, isAppError } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import type { KV, Store, WatchEvent } from './types.js';

/**
 * Follows a prefix of the store and never loses or duplicates an update:
 *
 * 1. list the prefix (revision R) and hand the handler a snapshot;
 * 2. watch from R+1, apply batches in order, remember the last applied revision L;
 * 3. after a disconnect: probe the store's revision; if it is below L (a restored or rolled-back
 *    etcd) re-list and diff, else watch again from L+1 (so every change is still seen, in order);
 * 4. after compaction (history before L+1 is gone): re-list and deliver the difference between the
 *    consumer's view and the store as synthetic events, so the handler converges exactly.
 *
 * Batches at or below L are dropped, so a replay never reaches the handler twice. A handler that
 * throws gets the same batch again after a backoff (handlers reconcile, so they are idempotent).
 */

export type WatchEventKind = 'snapshot' | 'live' | 'resync';
export type WatchStatus = 'starting' | 'synced' | 'disconnected' | 'resyncing' | 'stopped';

export interface WatchHandler {
  onEvents(events: WatchEvent[], ctx: { revision: bigint; kind: WatchEventKind }): void | Promise<void>;
}

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
}

export interface WatchConsumerOptions {
  store: Store;
  prefix: string;
  handler: WatchHandler;
  logger?: Logger;
  backoff?: BackoffOptions;
  /** Injectable for tests. */
  sleep?: (ms: number) => Promise<void>;
}

export class WatchConsumer {
  private readonly store: Store;
  private readonly prefix: string;
  private readonly handler: WatchHandler;
  private readonly log: Logger;
  private readonly backoff: BackoffOptions;
  private readonly sleep: (ms: number) => Promise<void>;
  private readonly view = new Map<string, KV>();
  private readonly abort = new AbortController();
  private readonly statusListeners: Array<(s: WatchStatus) => void> = [];
  private applied = 0n;
  private currentStatus: WatchStatus = 'starting';
  private loop: Promise<void> | undefined;

  constructor(opts: WatchConsumerOptions) {
    this.store = opts.store;
    this.prefix = opts.prefix;
    this.handler = opts.handler;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'watch', prefix: opts.prefix });
    this.backoff = opts.backoff ?? { initialMs: 100, maxMs: 5_000 };
    this.sleep = opts.sleep ?? ((ms) => sleepTimer(ms, undefined, { signal: this.abort.signal }).catch(() => undefined));
  }

  /** Resolves once the initial snapshot has been applied; then follows changes until stop(). */
  async start(): Promise<void> {
    await this.retrying(() => this.resync('snapshot'));
    this.loop = this.follow();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
    this.setStatus('stopped');
  }

  /** The consumer's view of the prefix: equal to the store's contents at `lastAppliedRevision`. */
  state(): ReadonlyMap<string, KV> {
    return this.view;
  }

  get lastAppliedRevision(): bigint {
    return this.applied;
  }

  get status(): WatchStatus {
    return this.currentStatus;
  }

  onStatus(cb: (s: WatchStatus) => void): void {
    this.statusListeners.push(cb);
  }

  private setStatus(s: WatchStatus): void {
    if (s === this.currentStatus) return;
    this.currentStatus = s;
    this.log.debug({ status: s, revision: String(this.applied) }, 'watch status');
    for (const cb of this.statusListeners) cb(s);
  }

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  private async follow(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        for await (const batch of this.store.watch(this.prefix, this.applied + 1n, this.abort.signal)) {
          if (batch.revision <= this.applied) continue; // already applied (a replay)
          this.setStatus('synced');
          failures = 0;
          await this.deliver(batch.events, batch.revision, 'live');
        }
        if (this.stopped) break;
        throw new Error('watch ended unexpectedly');
      } catch (err) {
        if (this.stopped) break;
        if (isAppError(err, ErrorCodes.STORE_COMPACTED)) {
          this.log.info({ revision: String(this.applied) }, 'watch history compacted; re-listing');
          this.setStatus('resyncing');
          await this.retrying(() => this.resync('resync'));
          continue;
        }
        failures++;
        this.setStatus('disconnected');
        this.log.warn({ err: describeError(err), failures }, 'watch interrupted; will resume');
        await this.sleep(this.delay(failures));
        await this.retrying(() => this.afterReconnect());
      }
    }
  }

  /** A store whose revision went backwards (restored from a backup) needs a full re-list. */
  private async afterReconnect(): Promise<void> {
    if (this.stopped) return;
    const revision = await this.store.currentRevision();
    if (revision < this.applied) {
      this.log.warn({ storeRevision: String(revision), applied: String(this.applied) }, 'store revision went backwards; re-listing');
      this.setStatus('resyncing');
      await this.resync('resync', true);
    }
  }

  /** Lists the prefix and delivers the difference from the consumer's view. */
  private async resync(kind: 'snapshot' | 'resync', rollback = false): Promise<void> {
    const { kvs, revision } = await this.store.list(this.prefix);
    const next = new Map(kvs.map((kv) => [kv.key, kv]));
    const events: WatchEvent[] = [];
    for (const [key, old] of this.view) {
      if (!next.has(key)) events.push({ type: 'delete', key, value: '', modRevision: revision, prev: old });
    }
    for (const kv of kvs) {
      const old = this.view.get(kv.key);
      // After a rollback revisions repeat with other contents: compare values too.
      if (!old || old.modRevision !== kv.modRevision || (rollback && old.value !== kv.value)) {
        events.push({ type: 'put', key: kv.key, value: kv.value, modRevision: kv.modRevision, ...(old && { prev: old }) });
      }
    }
    this.view.clear();
    for (const [k, v] of next) this.view.set(k, v);
    this.applied = revision;
    await this.callHandler(events, revision, kind);
    this.setStatus('synced');
  }

  private async deliver(events: WatchEvent[], revision: bigint, kind: WatchEventKind): Promise<void> {
    for (const e of events) {
      if (e.type === 'delete') this.view.delete(e.key);
      else {
        const prev = this.view.get(e.key);
        this.view.set(e.key, {
          key: e.key,
          value: e.value,
          modRevision: e.modRevision,
          createRevision: prev?.createRevision ?? e.modRevision,
          version: (prev?.version ?? 0) + 1,
        });
      }
    }
    this.applied = revision;
    await this.callHandler(events, revision, kind);
  }

  private async callHandler(events: WatchEvent[], revision: bigint, kind: WatchEventKind): Promise<void> {
    for (let failures = 0; ; failures++) {
      try {
        await this.handler.onEvents(events, { revision, kind });
        return;
      } catch (err) {
        if (this.stopped) return;
        this.log.error({ err: describeError(err), revision: String(revision) }, 'watch handler failed; retrying the same batch');
        await this.sleep(this.delay(failures + 1));
      }
    }
  }

  /** Retries `fn` with backoff until it succeeds or the consumer stops. */
  private async retrying(fn: () => Promise<void>): Promise<void> {
    for (let failures = 0; !this.stopped; failures++) {
      try {
        await fn();
        return;
      } catch (err) {
        if (this.stopped) return;
        this.setStatus('disconnected');
        this.log.warn({ err: describeError(err) }, 'store call failed; retrying');
        await this.sleep(this.delay(failures + 1));
      }
    }
  }

  /** Capped exponential backoff with full jitter. */
  private delay(failures: number): number {
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(failures - 1, 16));
    return cap / 2 + Math.random() * (cap / 2);
  }
}
