import { Etcd3, GRPCGenericError, ClientClosedError, type IKeyValue, type IRequestOp, type ICompare, type IWatchResponse, type Watcher } from 'etcd3';
import { noop } from 'cockatiel';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import { AsyncQueue } from './async-queue.js';
import { storeCompacted, storeUnavailable } from './errors.js';
import type { Compare, KV, Lease, ListResult, Store, TxnOp, TxnRequest, TxnResult, WatchBatch, WatchEvent } from './types.js';

/**
 * Store on a real etcd (v3 API) through the `etcd3` package. Calls have a deadline, so an outage
 * surfaces as E_STORE_UNAVAILABLE within `callTimeoutMs` instead of hanging; the client's own
 * retry and circuit-breaker policies are off, because callers decide how to retry (and a breaker
 * would keep a recovered etcd unreachable for seconds).
 */

export interface EtcdStoreOptions {
  endpoints: string[];
  callTimeoutMs?: number;
  dialTimeoutMs?: number;
  logger?: Logger;
}

const COMPARE_TARGET = { modRevision: 'Mod', createRevision: 'Create', version: 'Version', value: 'Value' } as const;
const COMPARE_RESULT = { '=': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;

export class EtcdStore implements Store {
  readonly client: Etcd3;
  private readonly log: Logger;

  constructor(opts: EtcdStoreOptions) {
    const callTimeoutMs = opts.callTimeoutMs ?? 5_000;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'store' });
    this.client = new Etcd3({
      hosts: opts.endpoints,
      dialTimeout: opts.dialTimeoutMs ?? 2_000,
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: { host: () => noop, global: noop },
    });
  }

  async get(key: string): Promise<KV | undefined> {
    const res = await this.call(() => this.client.kv.range({ key: Buffer.from(key) }));
    const kv = res.kvs[0];
    return kv && toKV(kv);
  }

  async list(prefix: string): Promise<ListResult> {
    const res = await this.call(() => this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix) }));
    return { kvs: res.kvs.map(toKV), revision: BigInt(res.header.revision) };
  }

  async listKeys(prefix: string): Promise<{ keys: string[]; revision: bigint }> {
    const res = await this.call(() => this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix), keys_only: true }));
    return { keys: res.kvs.map((kv) => kv.key.toString()), revision: BigInt(res.header.revision) };
  }

  async put(key: string, value: string, opts: { lease?: string } = {}): Promise<bigint> {
    const res = await this.call(() => this.client.kv.put({ key: Buffer.from(key), value: Buffer.from(value), ...(opts.lease && { lease: opts.lease }) }));
    return BigInt(res.header.revision);
  }

  async delete(key: string): Promise<bigint> {
    const res = await this.call(() => this.client.kv.deleteRange({ key: Buffer.from(key) }));
    return BigInt(res.header.revision);
  }

  async deletePrefix(prefix: string): Promise<bigint> {
    const res = await this.call(() => this.client.kv.deleteRange({ key: Buffer.from(prefix), range_end: prefixEnd(prefix) }));
    return BigInt(res.header.revision);
  }

  async txn(req: TxnRequest): Promise<TxnResult> {
    const res = await this.call(() =>
      this.client.kv.txn({
        compare: req.compare.map(toCompare),
        success: req.success.map(toRequestOp),
        failure: (req.failure ?? []).map(toRequestOp),
      }),
    );
    return { succeeded: res.succeeded, revision: BigInt(res.header.revision) };
  }

  async lease(ttlSeconds: number): Promise<Lease> {
    const lease = this.client.lease(ttlSeconds, { autoKeepAlive: true });
    const id = await this.call(() => lease.grant());
    const lostCallbacks: Array<(err: Error) => void> = [];
    lease.on('lost', (err: Error) => {
      this.log.warn({ lease: id, err: err.message }, 'lease lost');
      for (const cb of lostCallbacks) cb(err);
    });
    return {
      id,
      ttlSeconds,
      revoke: () => this.call(() => lease.revoke()),
      release: () => lease.release(),
      onLost: (cb) => {
        lostCallbacks.push(cb);
      },
    };
  }

  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch> {
    const queue = new AsyncQueue<WatchBatch>();
    const watcher: Watcher = this.client.watch().prefix(prefix).startRevision(String(fromRevision)).withPreviousKV().watcher();
    let done = false;
    let next = fromRevision;
    const stop = (err?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(connectTimer);
      if (err === undefined) queue.end();
      else queue.fail(err);
      // Cancel our etcd3 watcher: we resume ourselves, from what the consumer applied.
      watcher.removeAllListeners();
      watcher.on('error', () => undefined);
      void watcher.cancel().catch(() => undefined);
    };
    // The manager retries connecting forever; bound it, so an unreachable etcd is reported.
    const connectTimer = setTimeout(() => stop(storeUnavailable('watch could not connect')), 10_000);
    watcher.on('connected', () => clearTimeout(connectTimer));
    watcher.on('data', (res: IWatchResponse) => {
      if (res.compact_revision && res.compact_revision !== '0' && res.canceled) {
        stop(storeCompacted(fromRevision, BigInt(res.compact_revision)));
        return;
      }
      const batches = groupByRevision(res);
      for (const b of batches) {
        queue.push(b);
        next = b.revision + 1n;
      }
    });
    watcher.on('disconnected', (err: Error) => stop(storeUnavailable(`watch disconnected: ${err.message}`, err)));
    watcher.on('error', (err: Error) => {
      // etcd3 reports a cancelled watch without the compact revision: ask etcd whether the
      // revision we need is still in history.
      void this.compactedSince(next).then(
        (compactRevision) =>
          stop(compactRevision === undefined ? storeUnavailable(`watch failed: ${err.message}`, err) : storeCompacted(next, compactRevision)),
        (probeErr: unknown) => stop(probeErr),
      );
    });
    signal.addEventListener('abort', () => stop(), { once: true });
    if (signal.aborted) stop();
    return queue;
  }

  /** The compact revision if `revision` is no longer readable, else undefined. */
  private async compactedSince(revision: bigint): Promise<bigint | undefined> {
    try {
      await this.client.kv.range({ key: Buffer.from('\0'), count_only: true, revision: String(revision) });
      return undefined;
    } catch (err) {
      // etcd does not say up to where it compacted; "at least this revision" is what callers need.
      if (err instanceof Error && /compacted/i.test(err.message)) return revision;
      if (err instanceof Error && /future revision/i.test(err.message)) return undefined;
      throw mapError(err);
    }
  }

  async currentRevision(): Promise<bigint> {
    // A count-only range on one key: etcd answers with the header revision and no data.
    const res = await this.call(() => this.client.kv.range({ key: Buffer.from('\0'), count_only: true }));
    return BigInt(res.header.revision);
  }

  async compact(revision: bigint): Promise<void> {
    await this.call(() => this.client.kv.compact({ revision: String(revision), physical: true }));
  }

  async close(): Promise<void> {
    this.client.close();
  }

  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw mapError(err);
    }
  }
}

function mapError(err: unknown): unknown {
  if (err instanceof AppError) return err;
  if (err instanceof ClientClosedError) return new AppError(ErrorCodes.INTERNAL, 'store client is closed', {}, { cause: err });
  if (err instanceof GRPCGenericError) {
    if (/compacted/i.test(err.message)) return new AppError(ErrorCodes.STORE_COMPACTED, err.message, {}, { cause: err });
    if (/future revision/i.test(err.message)) return new AppError(ErrorCodes.INVALID_INPUT, err.message, {}, { cause: err });
    if (/requested lease not found/i.test(err.message)) return new AppError(ErrorCodes.NOT_FOUND, err.message, {}, { cause: err });
    return storeUnavailable(err.message, err);
  }
  if (err instanceof Error && /lease/i.test(err.message)) return new AppError(ErrorCodes.NOT_FOUND, err.message, {}, { cause: err });
  return storeUnavailable(err instanceof Error ? err.message : String(err), err);
}

function toKV(kv: IKeyValue): KV {
  return {
    key: kv.key.toString(),
    value: kv.value.toString(),
    createRevision: BigInt(kv.create_revision),
    modRevision: BigInt(kv.mod_revision),
    version: Number(kv.version),
    ...(kv.lease && kv.lease !== '0' && { lease: String(kv.lease) }),
  };
}

function toCompare(c: Compare): ICompare {
  const base: ICompare = { key: Buffer.from(c.key), target: COMPARE_TARGET[c.target], result: COMPARE_RESULT[c.op] };
  switch (c.target) {
    case 'modRevision': return { ...base, mod_revision: String(c.value) };
    case 'createRevision': return { ...base, create_revision: String(c.value) };
    case 'version': return { ...base, version: String(c.value) };
    case 'value': return { ...base, value: Buffer.from(String(c.value)) };
  }
}

function toRequestOp(op: TxnOp): IRequestOp {
  switch (op.type) {
    case 'put':
      return { request_put: { key: Buffer.from(op.key), value: Buffer.from(op.value), ...(op.lease && { lease: op.lease }) } };
    case 'delete':
      return { request_delete_range: { key: Buffer.from(op.key) } };
    case 'deletePrefix':
      return { request_delete_range: { key: Buffer.from(op.prefix), range_end: prefixEnd(op.prefix) } };
  }
}

/** etcd's range_end for a prefix: the prefix with its last byte incremented. */
function prefixEnd(prefix: string): Buffer {
  const buf = Buffer.from(prefix);
  for (let i = buf.length - 1; i >= 0; i--) {
    if (buf[i]! < 0xff) {
      const end = Buffer.from(buf.subarray(0, i + 1));
      end[i] = end[i]! + 1;
      return end;
    }
  }
  return Buffer.from([0]);
}

/** A watch response may carry several revisions (one per transaction); split them. */
function groupByRevision(res: IWatchResponse): WatchBatch[] {
  const batches: WatchBatch[] = [];
  for (const ev of res.events) {
    const modRevision = BigInt(ev.kv.mod_revision);
    const event: WatchEvent = {
      type: ev.type === 'Delete' ? 'delete' : 'put',
      key: ev.kv.key.toString(),
      value: ev.type === 'Delete' ? '' : ev.kv.value.toString(),
      modRevision,
      ...(ev.prev_kv && { prev: toKV(ev.prev_kv) }),
    };
    const last = batches[batches.length - 1];
    if (last && last.revision === modRevision) last.events.push(event);
    else batches.push({ revision: modRevision, events: [event] });
  }
  return batches;
}
