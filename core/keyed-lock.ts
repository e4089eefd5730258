/**
 * One holder at a time per key, others queue in order (an async mutex per key). Pure: no I/O.
 * Used so that two CNI calls for the same endpoint (a runtime retrying an ADD that is still
 * running, or a DEL racing it) never interleave their steps.
 */
export class KeyedLock {
  private readonly tails = new Map<string, Promise<void>>();

  async with<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key) ?? Promise.resolve();
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = before.then(() => mine);
    this.tails.set(key, tail);
    await before;
    try {
      return await fn();
    } finally {
      release();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }

  /** Keys held or waited for (for tests). */
  get size(): number {
    return this.tails.size;
  }
}
