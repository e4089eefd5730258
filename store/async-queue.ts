/**
 * A single-consumer queue exposed as an async iterator; producers push values, end it, or fail it.
 * Bridges event emitters (etcd3 watchers, MemoryStore) to `for await`.
 *
 * `onClose` runs exactly once when the iteration is over for any reason (end, failure, or the
 * consumer leaving the loop early), so producers can release what they hold (listeners, watchers).
 * With `limit`, a producer that outruns the consumer fails the queue with `overflow()` instead of
 * growing without bound: for a watch that is safe, because the consumer resumes from what it applied.
 */
export interface AsyncQueueOptions {
  limit?: number;
  overflow?: () => unknown;
  onClose?: () => void;
}

export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private failure: { err: unknown } | undefined;
  private ended = false;
  private closed = false;

  constructor(private readonly opts: AsyncQueueOptions = {}) {}

  /** True once ended or failed: further pushes are ignored. */
  get finished(): boolean {
    return this.ended || this.failure !== undefined;
  }

  push(item: T): void {
    if (this.finished) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: item, done: false });
      return;
    }
    if (this.opts.limit !== undefined && this.items.length >= this.opts.limit) {
      this.fail(this.opts.overflow?.() ?? new Error(`queue overflow (${this.opts.limit} items)`));
      return;
    }
    this.items.push(item);
  }

  /** Ends the iteration after the queued items. */
  end(): void {
    if (this.finished) return;
    this.ended = true;
    this.close();
    this.wake();
  }

  /** Fails the iteration after the queued items. */
  fail(err: unknown): void {
    if (this.finished) return;
    this.failure = { err };
    this.close();
    this.wake();
  }

  private close(): void {
    if (this.closed) return;
    this.closed = true;
    this.opts.onClose?.();
  }

  private wake(): void {
    if (!this.waiting || this.items.length > 0) return;
    const w = this.waiting;
    this.waiting = undefined;
    if (this.failure) w.reject(this.failure.err);
    else w.resolve({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift() as T, done: false });
    if (this.failure) return Promise.reject(this.failure.err);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  /** The consumer left the loop: drop what is queued and release the producer. */
  return(): Promise<IteratorResult<T>> {
    this.items.length = 0;
    this.end();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
