import { readFileSync } from 'node:fs';
import {
  ClientClosedError,
  Etcd3,
  EtcdAuthenticationFailedError,
  EtcdLeaseInvalidError,
  EtcdPermissionDeniedError,
  type ICompare,
  type IKeyValue,
  type IRequestOp,
  type IResponseOp,
  type IWatchResponse,
  type Namespace,
  type Watcher,
} from 'etcd3';
import { ConstantBackoff, handleWhen, noop, retry } from 'cockatiel';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import { AsyncQueue } from './async-queue.js';
import { storeCompacted, storeUnavailable } from './errors.js';
import type {
  Compare,
  KV,
  Lease,
  ListResult,
  Store,
  TxnOp,
  TxnOpResult,
  TxnRequest,
  TxnResult,
  WatchBatch,
  WatchEvent,
} from './types.js';

/**
 * Store on a real etcd (v3 API) through the `etcd3` package.
 *
 * - Unary calls carry a deadline, so an outage surfaces as E_STORE_UNAVAILABLE within
 *   `callTimeoutMs` instead of hanging.
 * - etcd3's retry and circuit-breaker policies are off: callers decide how to retry, and a breaker
 *   would keep a recovered etcd unreachable for seconds after it came back.
 * - Watches never resume inside etcd3 (whose resume would hide compaction and rollback): on the
 *   first disconnection the etcd3 watcher is cancelled and the iterable throws.
 * - A call that was never sent (no connection to its member, or a channel etcd3 closed under it) is
 *   tried again, on the next endpoint when there are several; anything else is the caller's to retry.
 * - TLS (`tls`) and etcd users (`auth`, or the client certificate's CN under etcd --client-cert-auth).
 *   A refused certificate, password or permission is E_STORE_ACCESS_DENIED: not worth retrying.
 */

/** PEM material: a file path, or the file's bytes. */
export type PemSource = string | Buffer;

export interface EtcdTlsOptions {
  /** The CA that signed the etcd servers' certificates. */
  ca: PemSource;
  /** This client's certificate and key (etcd --client-cert-auth): both or neither. */
  cert?: PemSource;
  key?: PemSource;
}

/** How to reach etcd and who to be there: what `store/etcd-config.ts` builds from flags and env. */
export interface EtcdConnectionOptions {
  /** http(s)://HOST:PORT, or unix:///PATH (TLS on it when `tls` is given). */
  endpoints: string[];
  tls?: EtcdTlsOptions;
  /** etcd user and password. Without it, under --client-cert-auth, etcd takes the user from the certificate's CN. */
  auth?: { username: string; password: string };
}

export interface EtcdStoreOptions extends EtcdConnectionOptions {
  /** Deadline of each unary call. Default 5 s. */
  callTimeoutMs?: number;
  /** gRPC connect timeout. Default 2 s. */
  dialTimeoutMs?: number;
  /** A watch that has not connected after this long fails with E_STORE_UNAVAILABLE. Default 10 s. */
  watchConnectTimeoutMs?: number;
  /** Batches buffered per watch before it fails with E_STORE_UNAVAILABLE (slow consumer). Default 10 000. */
  watchBufferLimit?: number;
  /**
   * A key this client may read (it need not exist): currentRevision() reads it count-only. With etcd
   * auth, pick one inside the user's permitted range (netd: "/netd/"). Default "\0".
   */
  probeKey?: string;
  logger?: Logger;
}

const COMPARE_TARGET = { modRevision: 'Mod', createRevision: 'Create', version: 'Version', value: 'Value' } as const;
const COMPARE_RESULT = { '=': 'Equal', '!=': 'NotEqual', '<': 'Less', '>': 'Greater' } as const;

export class EtcdStore implements Store {
  /** The underlying client, for what the Store interface does not cover (maintenance, tests). */
  readonly client: Etcd3;
  private readonly log: Logger;
  private readonly watchConnectTimeoutMs: number;
  private readonly watchBufferLimit: number;
  private readonly probeKey: Buffer;
  private readonly user: string | undefined;
  /** Where watches are made (one etcd3 watch stream); replaced after a refused watch, see watch(). */
  private watchRoot: Namespace;

  constructor(opts: EtcdStoreOptions) {
    const callTimeoutMs = opts.callTimeoutMs ?? 5_000;
    this.log = (opts.logger ?? silentLogger()).child({ component: 'store' });
    this.watchConnectTimeoutMs = opts.watchConnectTimeoutMs ?? 10_000;
    this.watchBufferLimit = opts.watchBufferLimit ?? 10_000;
    this.probeKey = Buffer.from(opts.probeKey ?? '\0');
    this.user = opts.auth?.username;
    if (opts.endpoints.length === 0) throw new AppError(ErrorCodes.INVALID_INPUT, 'no etcd endpoints given');
    // Calls that were never sent, so repeating them is safe whatever they do: the member could not be
    // reached (with several endpoints, the next attempt goes to the next one), or etcd3 closed the
    // channel under a queued call (it resets a host's channels when any stream on it fails).
    const multi = opts.endpoints.length > 1;
    const notSent = handleWhen(
      (err) =>
        /Channel closed before call started/.test(err.message) ||
        (multi && /No connection established/.test(err.message)),
    );
    this.client = new Etcd3({
      hosts: opts.endpoints,
      dialTimeout: opts.dialTimeoutMs ?? 2_000,
      ...(opts.tls && { credentials: tlsCredentials(opts.tls) }),
      // The password-to-token exchange gets the default (unary) deadline too.
      ...(opts.auth && { auth: { username: opts.auth.username, password: opts.auth.password } }),
      // Streams (watch, lease keep-alive) live on: a deadline would end them.
      defaultCallOptions: (ctx) => (ctx.isStream ? {} : { deadline: Date.now() + callTimeoutMs }),
      faultHandling: {
        host: () => noop,
        // etcd3 moves to the next endpoint on each attempt.
        global: retry(notSent, { maxAttempts: opts.endpoints.length, backoff: new ConstantBackoff(0) }),
      },
    });
    this.watchRoot = this.client;
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
    const res = await this.call(() =>
      this.client.kv.range({ key: Buffer.from(prefix), range_end: prefixEnd(prefix), keys_only: true }),
    );
    return { keys: res.kvs.map((kv) => kv.key.toString()), revision: BigInt(res.header.revision) };
  }

  async put(key: string, value: string, opts: { lease?: string } = {}): Promise<bigint> {
    const res = await this.call(() =>
      this.client.kv.put({
        key: Buffer.from(key),
        value: Buffer.from(value),
        ...(opts.lease !== undefined && { lease: opts.lease }),
      }),
    );
    return BigInt(res.header.revision);
  }

  async delete(key: string): Promise<bigint> {
    const res = await this.call(() => this.client.kv.deleteRange({ key: Buffer.from(key) }));
    return BigInt(res.header.revision);
  }

  async deletePrefix(prefix: string): Promise<bigint> {
    const res = await this.call(() =>
      this.client.kv.deleteRange({ key: Buffer.from(prefix), range_end: prefixEnd(prefix) }),
    );
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
    const ops = res.succeeded ? req.success : (req.failure ?? []);
    return {
      succeeded: res.succeeded,
      revision: BigInt(res.header.revision),
      responses: res.responses.map((r, i) => toOpResult(ops[i]!, r)),
    };
  }

  async lease(ttlSeconds: number): Promise<Lease> {
    if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1)
      throw new AppError(
        ErrorCodes.INVALID_INPUT,
        `lease TTL must be a whole number of seconds >= 1, got ${ttlSeconds}`,
      );
    const lease = this.client.lease(ttlSeconds, { autoKeepAlive: true });
    const lostCallbacks: Array<(err: Error) => void> = [];
    let lostError: Error | undefined;
    let leaseId: string | undefined;
    // Listen before the grant resolves: etcd3 emits 'lost' for a failed grant too.
    lease.on('lost', (err: Error) => {
      lostError = err;
      this.log.warn({ lease: leaseId, err: err.message }, 'lease lost');
      for (const cb of lostCallbacks.splice(0)) cb(err);
    });
    const id = (leaseId = String(await this.call(() => lease.grant())));
    // etcd raises a TTL below its minimum (1.5 x election timeout, 2 s by default): report the real one.
    const ttl = await this.call(() => this.client.leaseClient.leaseTimeToLive({ ID: id })).then(
      (r) => Number(r.grantedTTL) || ttlSeconds,
      () => ttlSeconds,
    );
    return {
      id,
      ttlSeconds: ttl,
      revoke: () => this.call(() => lease.revoke()),
      release: () => lease.release(),
      onLost: (cb) => {
        if (lostError) cb(lostError);
        else lostCallbacks.push(cb);
      },
    };
  }

  watch(prefix: string, fromRevision: bigint, signal: AbortSignal): AsyncIterable<WatchBatch> {
    // Filled in below; onClose may run before (an aborted signal), so they live in a holder.
    const held: { watcher?: Watcher; connectTimer?: NodeJS.Timeout } = {};
    // The revision the next batch must have at least: where a compaction check has to look.
    let next = fromRevision;
    const onAbort = (): void => queue.end();
    const queue = new AsyncQueue<WatchBatch>({
      limit: this.watchBufferLimit,
      overflow: () =>
        storeUnavailable(`watch buffer full (${this.watchBufferLimit} batches): the consumer is too slow`),
      onClose: () => {
        clearTimeout(held.connectTimer);
        signal.removeEventListener('abort', onAbort);
        const w = held.watcher;
        if (!w) return;
        // Cancel our etcd3 watcher, so etcd3 does not resume it behind our back.
        w.removeAllListeners();
        w.on('error', () => undefined);
        w.cancel().catch(() => undefined);
      },
    });
    if (signal.aborted) {
      queue.end();
      return queue;
    }
    signal.addEventListener('abort', onAbort, { once: true });
    const root = this.watchRoot;
    let connected = false;
    const watcher = (held.watcher = root
      .watch()
      .prefix(prefix)
      .startRevision(String(fromRevision))
      .withPreviousKV()
      .watcher());
    // etcd3 retries connecting forever; bound it, so an unreachable etcd is reported.
    held.connectTimer = setTimeout(
      () => queue.fail(storeUnavailable(`watch did not connect within ${this.watchConnectTimeoutMs} ms`)),
      this.watchConnectTimeoutMs,
    );
    watcher.on('connected', () => {
      connected = true;
      clearTimeout(held.connectTimer);
    });
    watcher.on('data', (res: IWatchResponse) => {
      for (const batch of groupByRevision(res)) {
        next = batch.revision + 1n;
        queue.push(batch);
      }
    });
    watcher.on('disconnected', (err: Error) => queue.fail(storeUnavailable(`watch disconnected: ${err.message}`, err)));
    watcher.on('error', (err: Error) => {
      // etcd3 wedges its watch stream when etcd refuses a watch at creation (permission denied): later
      // watches on it are never sent. Later watches go to a fresh stream (a namespace with no prefix).
      if (!connected && this.watchRoot === root) this.watchRoot = this.client.namespace('');
      const mapped = mapError(err);
      if (mapped.code === ErrorCodes.STORE_ACCESS_DENIED) return queue.fail(mapped);
      // etcd (3.4) cancels a watch on a compacted revision with an empty cancel_reason, and etcd3
      // drops the response's compact_revision: ask etcd whether `next` is still in history (reading
      // the watched prefix: whoever may watch it may read it).
      this.compactRevisionAbove(Buffer.from(prefix), next).then(
        (compactRevision) =>
          queue.fail(
            compactRevision !== undefined
              ? storeCompacted(next, compactRevision, err)
              : storeUnavailable(`watch cancelled: ${err.message}`, err),
          ),
        (probeErr: unknown) => queue.fail(probeErr),
      );
    });
    return queue;
  }

  async currentRevision(): Promise<bigint> {
    // A count-only range on one key: etcd answers with the header revision and no data.
    const res = await this.call(() => this.client.kv.range({ key: this.probeKey, count_only: true }));
    return BigInt(res.header.revision);
  }

  async compact(revision: bigint): Promise<void> {
    // physical: return once the data is really gone, so a following watch sees the compaction.
    await this.call(() => this.client.kv.compact({ revision: String(revision), physical: true }));
  }

  async close(): Promise<void> {
    this.client.close();
  }

  /**
   * The store's compact revision if `revision` has been compacted away, else undefined. etcd does not
   * tell (see watch()), so it is found by bisection: reads below the compact revision fail, reads at
   * or above it succeed. A few cheap count-only reads, only on the rare compaction path.
   */
  private async compactRevisionAbove(key: Buffer, revision: bigint): Promise<bigint | undefined> {
    if (await this.readableAt(key, revision)) return undefined;
    let unreadable = revision;
    let readable = BigInt((await this.call(() => this.client.kv.range({ key, count_only: true }))).header.revision);
    while (readable - unreadable > 1n) {
      const mid = (readable + unreadable) / 2n;
      if (await this.readableAt(key, mid)) readable = mid;
      else unreadable = mid;
    }
    return readable;
  }

  private async readableAt(key: Buffer, revision: bigint): Promise<boolean> {
    try {
      await this.client.kv.range({ key, count_only: true, revision: String(revision) });
      return true;
    } catch (err) {
      const mapped = mapError(err);
      if (mapped.code === ErrorCodes.STORE_COMPACTED) return false;
      if (mapped.code === ErrorCodes.INVALID_INPUT) return true; // a future revision: not compacted
      throw mapped;
    }
  }

  private async call<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      const mapped = mapError(err);
      if (mapped.code === ErrorCodes.STORE_ACCESS_DENIED && this.user && !mapped.details.user)
        throw new AppError(mapped.code, mapped.message, { ...mapped.details, user: this.user }, { cause: err });
      throw mapped;
    }
  }
}

/** PEM files are read once, here; a missing or unreadable one is bad input, said so by name. */
function tlsCredentials(tls: EtcdTlsOptions): { rootCertificate: Buffer; privateKey?: Buffer; certChain?: Buffer } {
  if ((tls.cert === undefined) !== (tls.key === undefined))
    throw new AppError(ErrorCodes.INVALID_INPUT, 'an etcd client certificate needs its key, and a key its certificate');
  return {
    rootCertificate: pem(tls.ca, 'etcd CA certificate'),
    ...(tls.cert !== undefined && { certChain: pem(tls.cert, 'etcd client certificate') }),
    ...(tls.key !== undefined && { privateKey: pem(tls.key, 'etcd client key') }),
  };
}

export function pem(source: PemSource, what: string): Buffer {
  let bytes: Buffer;
  try {
    bytes = typeof source === 'string' ? readFileSync(source) : source;
  } catch (err) {
    throw new AppError(
      ErrorCodes.INVALID_INPUT,
      `cannot read the ${what} ${source as string}: ${(err as Error).message}`,
      { file: source },
      { cause: err },
    );
  }
  if (!bytes.includes('-----BEGIN '))
    throw new AppError(
      ErrorCodes.INVALID_INPUT,
      `the ${what}${typeof source === 'string' ? ` ${source}` : ''} is not PEM`,
      typeof source === 'string' ? { file: source } : {},
    );
  return bytes;
}

/**
 * etcd3 errors to stable codes. Anything not recognised as a request problem counts as "cannot reach
 * the store" (connection refused, deadline, no leader, stream reset): those are the retryable ones.
 */
function mapError(err: unknown): AppError {
  if (err instanceof AppError) return err;
  if (err instanceof ClientClosedError)
    return new AppError(ErrorCodes.INTERNAL, 'store client is closed', {}, { cause: err });
  if (err instanceof EtcdLeaseInvalidError)
    return new AppError(ErrorCodes.NOT_FOUND, 'lease not found (expired or revoked)', {}, { cause: err });
  const message = err instanceof Error ? err.message : String(err);
  if (err instanceof EtcdAuthenticationFailedError || /authentication failed|invalid user ID or password/.test(message))
    return accessDenied(`etcd refused the user name or password (${message})`, err);
  if (err instanceof EtcdPermissionDeniedError || /permission denied|user name is empty/.test(message))
    return accessDenied(`etcd denied this user access to the key (${message})`, err);
  if (TLS_REFUSED.test(message)) return accessDenied(`TLS handshake with etcd failed (${message})`, err);
  if (/required revision has been compacted/.test(message))
    return new AppError(ErrorCodes.STORE_COMPACTED, message, {}, { cause: err });
  if (/requested lease not found/.test(message)) return new AppError(ErrorCodes.NOT_FOUND, message, {}, { cause: err });
  if (
    /future revision|duplicate key given in txn|too many operations in txn|request is too large|key is not provided/.test(
      message,
    )
  ) {
    return new AppError(ErrorCodes.INVALID_INPUT, message, {}, { cause: err });
  }
  return storeUnavailable(message, err);
}

/** TLS failures that mean "wrong certificate or CA", from either side of the handshake. */
const TLS_REFUSED =
  /alert (bad certificate|certificate required|unknown ca|certificate unknown|certificate expired|handshake failure)|unable to verify|self[- ]signed certificate|unable to get (local )?issuer|certificate has expired|does not match certificate's altnames|ERR_TLS_CERT|wrong version number/i;

function accessDenied(message: string, cause: unknown): AppError {
  return new AppError(ErrorCodes.STORE_ACCESS_DENIED, `state store refused access: ${message}`, {}, { cause });
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
    case 'modRevision':
      return { ...base, mod_revision: String(c.value) };
    case 'createRevision':
      return { ...base, create_revision: String(c.value) };
    case 'version':
      return { ...base, version: String(c.value) };
    case 'value':
      return { ...base, value: Buffer.from(String(c.value)) };
  }
}

function toRequestOp(op: TxnOp): IRequestOp {
  switch (op.type) {
    case 'put':
      return {
        request_put: {
          key: Buffer.from(op.key),
          value: Buffer.from(op.value),
          ...(op.lease !== undefined && { lease: op.lease }),
        },
      };
    case 'delete':
      return { request_delete_range: { key: Buffer.from(op.key) } };
    case 'deletePrefix':
      return { request_delete_range: { key: Buffer.from(op.prefix), range_end: prefixEnd(op.prefix) } };
    case 'get':
      return { request_range: { key: Buffer.from(op.key) } };
    case 'getPrefix':
      return { request_range: { key: Buffer.from(op.prefix), range_end: prefixEnd(op.prefix) } };
  }
}

function toOpResult(op: TxnOp, res: IResponseOp): TxnOpResult {
  switch (op.type) {
    case 'put':
      return { type: 'put' };
    case 'delete':
    case 'deletePrefix':
      return { type: op.type, deleted: Number(res.response_delete_range?.deleted ?? 0) };
    case 'get':
    case 'getPrefix':
      return { type: op.type, kvs: (res.response_range?.kvs ?? []).map(toKV) };
  }
}

/** etcd's range_end for a prefix: the prefix with its last byte below 0xff incremented. */
function prefixEnd(prefix: string): Buffer {
  const buf = Buffer.from(prefix);
  for (let i = buf.length - 1; i >= 0; i--) {
    if (buf[i]! < 0xff) {
      const end = Buffer.from(buf.subarray(0, i + 1));
      end[i] = end[i]! + 1;
      return end;
    }
  }
  return Buffer.from([0]); // every key
}

/** A watch response may carry several revisions (one per transaction): one batch per revision. */
function groupByRevision(res: IWatchResponse): WatchBatch[] {
  const batches: WatchBatch[] = [];
  for (const ev of res.events) {
    const event: WatchEvent = {
      type: ev.type === 'Delete' ? 'delete' : 'put',
      kv: toKV(ev.kv),
      ...(ev.prev_kv && { prevKv: toKV(ev.prev_kv) }),
    };
    const revision = event.kv.modRevision;
    const last = batches[batches.length - 1];
    if (last && last.revision === revision) last.events.push(event);
    else batches.push({ revision, events: [event] });
  }
  return batches;
}
