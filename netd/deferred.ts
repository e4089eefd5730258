import { describeError, isAppError, ErrorCodes } from '../core/errors.js';
import type { Logger } from '../sys/log.js';

/**
 * etcd writes that could not be made while etcd was away, kept in order per endpoint and retried
 * until they succeed. A DEL removes the kernel side at once and answers; its record delete and
 * address release wait here (the address stays held meanwhile, so it cannot be handed out while
 * its old interface might exist). An ADD for the same endpoint first settles them. After a crash
 * nothing here survives; recovery then finds the records whose interfaces are gone and removes them.
 *
 * Per key, one step runs at a time (whoever drives it: the retry timer or an ADD settling), so a
 * step never runs twice and the queue is never shifted past a step that did not run.
 */
export class DeferredStoreWork {
  private readonly queues = new Map<string, Array<{ label: string; run: () => Promise<unknown> }>>();
  /** The drive of a key's queue in progress, if any. */
  private readonly driving = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private delayMs: number;

  constructor(
    private readonly log: Logger,
    private readonly retryMs = 500,
    /** Whether etcd is thought reachable: when not, steps are queued without a try (no deadline to wait out). */
    private readonly available: () => boolean = () => true,
  ) {
    this.delayMs = retryMs;
  }

  /**
   * Runs `run` now, unless earlier work for `key` is waiting (then it waits behind it) or etcd is
   * known to be away. Resolves true when done, false when deferred; errors other than etcd being
   * unavailable throw.
   */
  async attempt(key: string, label: string, run: () => Promise<unknown>): Promise<boolean> {
    const queue = this.queues.get(key);
    if (queue || !this.available()) {
      this.enqueue(key, label, run);
      return false;
    }
    try {
      await run();
      return true;
    } catch (err) {
      if (!isAppError(err, ErrorCodes.STORE_UNAVAILABLE)) throw err;
      this.log.warn({ key, step: label, err: describeError(err) }, 'etcd unavailable: step deferred until it returns');
      this.enqueue(key, label, run);
      return false;
    }
  }

  /** Runs what waits for `key` now; throws (E_STORE_UNAVAILABLE while etcd is away) while it still cannot. */
  settle(key: string): Promise<void> {
    const inFlight = this.driving.get(key);
    if (inFlight) return inFlight.then(() => this.settle(key));
    if (!this.queues.has(key)) return Promise.resolve();
    const drive = (async () => {
      const queue = this.queues.get(key)!;
      while (queue.length > 0) {
        await queue[0]!.run();
        queue.shift();
      }
      this.queues.delete(key);
    })().finally(() => this.driving.delete(key));
    this.driving.set(key, drive);
    return drive;
  }

  /** Keys with work waiting. */
  pending(): string[] {
    return [...this.queues.keys()];
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private enqueue(key: string, label: string, run: () => Promise<unknown>): void {
    const queue = this.queues.get(key) ?? [];
    queue.push({ label, run });
    this.queues.set(key, queue);
    this.arm();
  }

  private arm(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => void this.drain(), this.delayMs);
    this.timer.unref();
  }

  /** Retries every waiting key; failures other than an outage are logged and retried later too. */
  private async drain(): Promise<void> {
    this.timer = undefined;
    let failed = false;
    for (const key of this.pending()) {
      try {
        await this.settle(key);
        this.log.info({ key }, 'deferred etcd work done');
      } catch (err) {
        failed = true;
        const outage = isAppError(err, ErrorCodes.STORE_UNAVAILABLE);
        (outage ? this.log.debug : this.log.error).call(
          this.log,
          { key, err: describeError(err) },
          'deferred etcd work failed; will retry',
        );
      }
    }
    // Back off while it keeps failing (capped), start over quickly once it works.
    this.delayMs = failed ? Math.min(this.delayMs * 2, 5_000) : this.retryMs;
    if (this.queues.size > 0) this.arm();
  }
}
