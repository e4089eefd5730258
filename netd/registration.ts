import { describeError } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import type { Lease, Store } from '../store/types.js';
import { modelKeys } from '../tenancy/keys.js';
import type { HostRecord } from '../tenancy/records.js';

/**
 * This host's entry in /netd/v1/hosts/, bound to a lease: other hosts render only registered
 * hosts. A graceful stop releases the lease (stops renewing it) without revoking it, so a restart
 * within its TTL is invisible to the other hosts; a lost lease registers again.
 */
export class HostRegistration {
  private current: Lease | undefined;
  private stopped = false;

  constructor(
    private self: HostRecord,
    private readonly deps: { store: Store; ttlSeconds: number; logger: Logger },
  ) {}

  /** The record to register from now on (what the host found it can build, before registering). */
  describe(record: HostRecord): void {
    this.self = record;
  }

  /** Rewrites the registered record (same lease): what the host can build changed. */
  async update(record: HostRecord): Promise<void> {
    this.self = record;
    const lease = this.current;
    if (!lease) return; // not registered (yet, or again): the next registration writes it
    await this.deps.store.put(modelKeys.host(record.name), JSON.stringify(record), { lease: lease.id });
  }

  get lease(): Lease | undefined {
    return this.current;
  }

  async register(): Promise<void> {
    const lease = await this.deps.store.lease(this.deps.ttlSeconds);
    try {
      await this.deps.store.put(modelKeys.host(this.self.name), JSON.stringify(this.self), { lease: lease.id });
    } catch (err) {
      // A lease kept alive for nothing would hold nothing but etcd's memory: give it back.
      await lease.revoke().catch(() => lease.release());
      throw err;
    }
    this.current = lease;
    lease.onLost((err) => {
      if (this.stopped) return;
      this.deps.logger.warn({ err: err.message }, 'host lease lost; registering again');
      void this.registerUntilDone();
    });
  }

  /**
   * Registers again, retrying (capped backoff) until it works: an etcd outage longer than the
   * lease's TTL must not leave the host unregistered once etcd is back.
   */
  private async registerUntilDone(): Promise<void> {
    for (let delay = 250; !this.stopped; delay = Math.min(delay * 2, 5_000)) {
      try {
        await this.register();
        this.deps.logger.info('host registered again');
        return;
      } catch (e) {
        this.deps.logger.warn({ err: describeError(e), retryMs: delay }, 're-registration failed; will retry');
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
      }
    }
  }

  /** Stops renewing: the entry outlives a quick restart. */
  release(): void {
    this.stopped = true;
    this.current?.release();
  }

  /** Leaves the cluster for good: the entry goes at once. */
  async revoke(): Promise<void> {
    this.stopped = true;
    await this.current?.revoke();
  }
}
