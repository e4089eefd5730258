import { setTimeout as sleepTimer } from 'node:timers/promises';
import { AppError, ErrorCodes, describeError, isAppError } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import type { KV, Store, WatchEvent } from './types.js';

/**
 * Follows a prefix of the store and never loses or duplicates an update:
 *
 * 1. list the prefix (revision R) and hand the handler the snapshot (as put events);
 * 2. watch from R+1, apply batches in order, remember the last applied revision L; batches at or
 *    below L are dropped, so a replay never reaches the handler twice;
 * 3. after a disconnect (E_STORE_UNAVAILABLE): back off, probe the store's revision, and watch
 *    again from L+1, so every change is still seen, in order;
 * 4. after compaction (E_STORE_COMPACTED), or when the store's revision is below L (etcd restored
 *    from a backup): re-list and deliver the difference between the consumer's view and the store
 *    as synthetic events (`kind: 'resync'`), so the handler's view converges exactly.
 *
 * A handler that throws gets the same batch again after a backoff (handlers reconcile, so they
 * must be idempotent); the consumer does not move on until it succeeds, which is also the
 * backpressure: nothing else is delivered while the handler works.
 *
 * Known limit: a store restored to an older revision that has since been written past L again is
 * indistinguishable from a healthy one by revision alone.
 */

export type WatchEventKind = 'snapshot' | 'live' | 'resync';
/** For readiness probes: ready when 'synced'. */
export type WatchStatus = 'starting' | 'synced' | 'disconnected' | 'resyncing' | 'stopped';

export interface WatchContext {
  /** The store revision the consumer's view is at once these events are applied. */
  revision: bigint;
  kind: WatchEventKind;
  /** True for 'snapshot' and 'resync': synthetic events from a re-list, not the store's history. */
  resync: boolean;
}

export interface WatchHandler {
  onEvents(events: readonly WatchEvent[], ctx: WatchContext): void | Promise<void>;
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
  /** Capped exponential backoff between attempts. Default 100 ms .. 5 s. */
  backoff?: BackoffOptions;
  /** Injectable for tests: how to wait (must return early when the consumer stops). */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /** Injectable for tests: jitter source in [0, 1). */
  random?: () => number;
}

export class WatchConsumer {
  private readonly store: Store;
  private readonly prefix: string;
  private readonly handler: WatchHandler;
  private readonly log: Logger;
  private readonly backoff: BackoffOptions;
  private readonly sleepFn: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly random: () => number;
  private readonly view = new Map<string, KV>();
  private readonly abort = new AbortController();
  private readonly statusListeners: Array<(s: WatchStatus) => void> = [];
  private applied = 0n;
  private currentStatus: WatchStatus = 'starting';
  private started = false;
  private loop: Promise<void> | undefined;

  constructor(opts: WatchConsumerOptions) {
    this.store = opts.store;
    this.prefix = opts.prefix;
    this.handler = opts.handler;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'watch-consumer', prefix: opts.prefix });
    this.backoff = opts.backoff ?? { initialMs: 100, maxMs: 5_000 };
    this.sleepFn = opts.sleep ?? ((ms, signal) => sleepTimer(ms, undefined, { signal }).catch(() => undefined));
    this.random = opts.random ?? Math.random;
  }

  /**
   * Resolves once the initial snapshot has been delivered (retrying while the store is
   * unreachable), then follows changes in the background until stop().
   */
  async start(): Promise<void> {
    if (this.started) throw new AppError(ErrorCodes.INTERNAL, 'WatchConsumer.start() called twice');
    this.started = true;
    await this.retrying(() => this.resync('snapshot'));
    if (!this.stopped) this.loop = this.follow();
  }

  /** Stops following; resolves when the handler is no longer running. */
  async stop(): Promise<void> {
    this.abort.abort();
    await this.loop;
    this.setStatus('stopped');
  }

  /** The consumer's view of the prefix: the store's contents at `lastAppliedRevision`. */
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

  private get stopped(): boolean {
    return this.abort.signal.aborted;
  }

  private setStatus(s: WatchStatus): void {
    if (s === this.currentStatus || this.currentStatus === 'stopped') return;
    this.currentStatus = s;
    this.log.debug({ status: s, revision: String(this.applied) }, 'watch status');
    for (const cb of this.statusListeners) cb(s);
  }

  private async follow(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        for await (const batch of this.store.watch(this.prefix, this.applied + 1n, this.abort.signal)) {
          if (batch.revision <= this.applied) continue; // already applied: a replay
          failures = 0;
          this.setStatus('synced');
          await this.apply(batch.events, batch.revision);
        }
        if (this.stopped) break;
        throw new AppError(ErrorCodes.STORE_UNAVAILABLE, 'watch ended without an error');
      } catch (err) {
        if (this.stopped) break;
        if (isAppError(err, ErrorCodes.STORE_COMPACTED)) {
          this.log.info(
            { revision: String(this.applied), err: describeError(err) },
            'watch history compacted; re-listing',
          );
          this.setStatus('resyncing');
          await this.retrying(() => this.resync('resync'));
          continue;
        }
        failures++;
        this.setStatus('disconnected');
        this.log.warn(
          { err: describeError(err), failures, revision: String(this.applied) },
          'watch interrupted; will resume',
        );
        await this.sleep(this.delay(failures));
        await this.retrying(() => this.afterReconnect());
      }
    }
  }

  /** Before watching again: a store whose revision went backwards (restored) needs a re-list. */
  private async afterReconnect(): Promise<void> {
    if (this.stopped) return;
    const revision = await this.store.currentRevision();
    if (revision < this.applied) {
      this.log.warn(
        { storeRevision: String(revision), applied: String(this.applied) },
        'store revision went backwards; re-listing',
      );
      this.setStatus('resyncing');
      await this.resync('resync');
    } else {
      this.setStatus('synced');
    }
  }

  /** Lists the prefix and delivers the difference from the consumer's view. */
  private async resync(kind: 'snapshot' | 'resync'): Promise<void> {
    if (this.stopped) return;
    const { kvs, revision } = await this.store.list(this.prefix);
    if (revision < this.applied) {
      this.log.warn(
        { storeRevision: String(revision), applied: String(this.applied) },
        'store revision is behind what was applied: converging to it',
      );
    }
    const listed = new Map(kvs.map((kv) => [kv.key, kv]));
    const events: WatchEvent[] = [];
    for (const [key, old] of this.view) {
      if (!listed.has(key)) {
        events.push({
          type: 'delete',
          kv: { key, value: '', createRevision: 0n, modRevision: revision, version: 0 },
          prevKv: old,
        });
      }
    }
    for (const kv of kvs) {
      const old = this.view.get(kv.key);
      // Compare contents, not only revisions: after a rollback revisions repeat with other values.
      if (!old || old.modRevision !== kv.modRevision || old.value !== kv.value || old.lease !== kv.lease) {
        events.push({ type: 'put', kv, ...(old && { prevKv: old }) });
      }
    }
    this.view.clear();
    for (const [key, kv] of listed) this.view.set(key, kv);
    this.applied = revision;
    await this.callHandler(events, { revision, kind, resync: true });
    this.setStatus('synced');
  }

  private async apply(events: readonly WatchEvent[], revision: bigint): Promise<void> {
    for (const e of events) {
      if (e.type === 'delete') this.view.delete(e.kv.key);
      else this.view.set(e.kv.key, { ...e.kv });
    }
    this.applied = revision;
    await this.callHandler(events, { revision, kind: 'live', resync: false });
  }

  private async callHandler(events: readonly WatchEvent[], ctx: WatchContext): Promise<void> {
    for (let failures = 1; ; failures++) {
      try {
        await this.handler.onEvents(events, ctx);
        return;
      } catch (err) {
        if (this.stopped) return;
        this.log.error(
          { err: describeError(err), revision: String(ctx.revision), failures },
          'watch handler failed; retrying the same events',
        );
        await this.sleep(this.delay(failures));
      }
    }
  }

  /** Retries `fn` with backoff until it succeeds or the consumer stops. */
  private async retrying(fn: () => Promise<void>): Promise<void> {
    for (let failures = 1; !this.stopped; failures++) {
      try {
        await fn();
        return;
      } catch (err) {
        if (this.stopped) return;
        this.setStatus('disconnected');
        this.log.warn({ err: describeError(err), failures }, 'store call failed; retrying');
        await this.sleep(this.delay(failures));
      }
    }
  }

  private sleep(ms: number): Promise<void> {
    return this.sleepFn(ms, this.abort.signal);
  }

  /** Capped exponential backoff with "equal jitter": between half and all of the cap. */
  private delay(failures: number): number {
    const cap = Math.min(this.backoff.maxMs, this.backoff.initialMs * 2 ** Math.min(failures - 1, 20));
    return cap / 2 + this.random() * (cap / 2);
  }
}
