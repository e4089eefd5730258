import type { Logger } from '../sys/log.js';
import type { Store, WatchEvent } from './types.js';
import { WatchConsumer, type WatchStatus } from './watch-consumer.js';

/**
 * JSON records under a store prefix, kept current by a WatchConsumer. The last known state stays
 * readable while the store is away (`synced` says whether it is current). A record this process
 * wrote itself can be noted at once (`note`): its watch echo then changes nothing and wakes no
 * listener — at 16 ADDs in flight, a reconcile per echo would keep a core busy.
 */
export class WatchedRecords<T> {
  private readonly records = new Map<string, T>();
  private readonly consumer: WatchConsumer;
  private readonly listeners: Array<() => void> = [];
  private readonly parse: ((value: string, key: string) => T) | undefined;

  /** `parse`: how a value becomes a record (default JSON; a key-only index derives it from the key). */
  constructor(opts: { store: Store; prefix: string; logger?: Logger; parse?: (value: string, key: string) => T }) {
    this.parse = opts.parse;
    this.consumer = new WatchConsumer({
      store: opts.store,
      prefix: opts.prefix,
      ...(opts.logger && { logger: opts.logger }),
      handler: { onEvents: (events) => this.apply(events) },
    });
  }

  start(): Promise<void> {
    return this.consumer.start();
  }

  stop(): Promise<void> {
    return this.consumer.stop();
  }

  get status(): WatchStatus {
    return this.consumer.status;
  }

  /** True when the records are the store's current ones (not just the last known). */
  get synced(): boolean {
    return this.consumer.status === 'synced';
  }

  get(key: string): T | undefined {
    return this.records.get(key);
  }

  values(): IterableIterator<T> {
    return this.records.values();
  }

  entries(): IterableIterator<[string, T]> {
    return this.records.entries();
  }

  get size(): number {
    return this.records.size;
  }

  /** A record this process just wrote, known before its watch event arrives. */
  note(key: string, value: T): void {
    this.records.set(key, value);
  }

  /** A record this process just deleted. */
  forget(key: string): void {
    this.records.delete(key);
  }

  /** Called after every change that was not an echo of note()/forget(). */
  onChange(cb: () => void): void {
    this.listeners.push(cb);
  }

  private apply(events: readonly WatchEvent[]): void {
    let changed = false;
    for (const e of events) {
      if (e.type === 'delete') {
        changed = this.records.delete(e.kv.key) || changed;
        continue;
      }
      const known = this.records.get(e.kv.key);
      if (this.parse) {
        const next = this.parse(e.kv.value, e.kv.key);
        if (known === undefined || JSON.stringify(known) !== JSON.stringify(next)) {
          this.records.set(e.kv.key, next);
          changed = true;
        }
      } else if (known === undefined || JSON.stringify(known) !== e.kv.value) {
        this.records.set(e.kv.key, JSON.parse(e.kv.value) as T);
        changed = true;
      }
    }
    if (changed) for (const cb of this.listeners) cb();
  }
}
