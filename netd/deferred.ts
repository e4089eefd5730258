import { describeError, isAppError, ErrorCodes } from '../core/errors.js';
import type { Logger } from '../sys/log.js';

/**
 * etcd writes that could not be made while etcd was away, kept in order per endpoint and retried
 * until they succeed. A DEL removes the kernel side at once and answers; its record delete and
 * address release wait here (the address stays held meanwhile, so it cannot be handed out while
 * its old interface might exist). An ADD for the same endpoint first settles them. After a crash
 * nothing here survives, and recovery removes what they would have (the records' ports are gone).
 */
export class DeferredStoreWork {
  private readonly queues = new Map<string, Array<{ label: string; run: () => Promise<unknown> }>>();
  private timer: NodeJS.Timeout | undefined;
  private draining = false;

  constructor(
    private readonly log: Logger,
    private readonly retryMs = 500,
  ) {}

  /**
   * Runs `run` now, unless earlier work for `key` is still waiting (then it waits behind it).
   * Resolves true when done, false when deferred because etcd is unavailable; other errors throw.
   */
  async attempt(key: string, label: string, run: () => Promise<unknown>): Promise<boolean> {
    const queue = this.queues.get(key);
    if (queue) {
      queue.push({ label, run });
      return false;
    }
    try {
      await run();
      return true;
    } catch (err) {
      if (!isAppError(err, ErrorCodes.STORE_UNAVAILABLE)) throw err;
      this.log.warn({ key, step: label, err: describeError(err) }, 'etcd unavailable: step deferred until it returns');
      this.queues.set(key, [{ label, run }]);
      this.arm();
      return false;
    }
  }

  /** Runs what waits for `key` now; throws E_STORE_UNAVAILABLE while it still cannot. */
  async settle(key: string): Promise<void> {
    const queue = this.queues.get(key);
    while (queue && queue.length > 0) {
      await queue[0]!.run();
      queue.shift();
    }
    this.queues.delete(key);
  }

  /** Keys with work waiting. */
  pending(): string[] {
    return [...this.queues.keys()];
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => void this.drain(), this.retryMs);
    this.timer.unref();
  }

  private async drain(): Promise<void> {
    this.timer = undefined;
    if (this.draining) return;
    this.draining = true;
    try {
      for (const key of this.pending()) {
        try {
          await this.settle(key);
          this.log.info({ key }, 'deferred etcd work done');
        } catch (err) {
          if (!isAppError(err, ErrorCodes.STORE_UNAVAILABLE)) {
            // Not an outage: retrying will not help. Said loudly; recovery or the sweeper ends it.
            this.log.error({ key, err: describeError(err) }, 'deferred etcd work failed; dropped');
            this.queues.delete(key);
          }
        }
      }
    } finally {
      this.draining = false;
      if (this.queues.size > 0) this.arm();
    }
  }
}
