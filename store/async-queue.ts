/**
 * An unbounded single-consumer queue turned into an async iterator; producers push values or a
 * final error. Used to bridge event emitters (etcd3 watchers, MemoryStore) to `for await`.
 */
export class AsyncQueue<T> implements AsyncIterableIterator<T> {
  private readonly items: T[] = [];
  private waiting: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;
  private ended = false;

  push(item: T): void {
    if (this.ended || this.failure !== undefined) return;
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = undefined;
      w.resolve({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** Ends the iteration after the queued items. */
  end(): void {
    this.ended = true;
    this.wake();
  }

  /** Fails the iteration after the queued items. */
  fail(err: unknown): void {
    if (this.ended || this.failure !== undefined) return;
    this.failure = err;
    this.wake();
  }

  private wake(): void {
    if (!this.waiting || this.items.length > 0) return;
    const w = this.waiting;
    this.waiting = undefined;
    if (this.failure !== undefined) w.reject(this.failure);
    else w.resolve({ value: undefined, done: true });
  }

  next(): Promise<IteratorResult<T>> {
    if (this.items.length > 0) return Promise.resolve({ value: this.items.shift()!, done: false });
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiting = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.ended = true;
    this.items.length = 0;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<T> {
    return this;
  }
}
