import { AppError, ErrorCodes, invalidInput, isAppError } from '../core/errors.js';
import {
  blockAt,
  blockCount,
  blockOf,
  cidrKey,
  contains,
  formatCidr,
  formatIp,
  parseCidr,
  parseIp,
  type Ip,
} from '../core/cidr.js';
import type { Logger } from '../sys/log.js';
import { silentLogger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import {
  allocate as allocateInBlock,
  allocateAt,
  allocatedCount,
  emptyBlock,
  freeOffsets,
  offsetOfIp,
  release as releaseInBlock,
  type BlockRecord,
} from './block.js';
import { buildPool, checkRoutedOverlap, type Pool, type PoolSpec } from './pool.js';
import { checkSegment, ipamKeys, stickyHandle, type HandleRecord, type StickyRecord } from './keys.js';
import { commitCas, type CasWrite } from './cas.js';
import { decideSweep, ownerGone, type OwnerCheck, type Suspect } from './sweep.js';

/**
 * The cluster IPAM on one host. Hot path: allocate from blocks this host claimed, with one etcd
 * transaction that compare-and-swaps the block record and creates the handle record together — no
 * cluster-wide lock. Concurrent requests on one host are coalesced: a lane per pool drains its
 * queue into one transaction (up to MAX_BATCH requests), so throughput grows with concurrency
 * instead of collapsing under it.
 */

export interface Owner {
  containerId?: string;
  ifname?: string;
  /** The container's netns path: the sweeper treats a vanished netns as a gone owner. */
  netns?: string;
}

export interface AllocateRequest {
  pool: string;
  handle: string;
  owner?: Owner;
  /** A specific address (CNI `ips` capability, `IP=` in CNI_ARGS). */
  ip?: string;
  /** Keep this workload's address across restarts: the same name gets the same address. */
  sticky?: string;
  /**
   * A record that names the address, written in the same transaction as the allocation (e.g.
   * netd's endpoint record): one etcd write instead of two on the ADD path. When the address
   * was found rather than allocated (the same handle again), nothing is written and
   * `Allocation.wroteAlso` is false: the caller writes it.
   */
  alsoWrite?: (allocation: Allocation) => { key: string; value: string };
}

export interface Allocation {
  handle: string;
  pool: string;
  ip: string;
  /** Address with the pool's prefix length, e.g. 10.1.0.7/16. */
  cidr: string;
  gateway: string;
  seq: number;
  block: string;
  /** Whether the request's `alsoWrite` record went in with the allocation. */
  wroteAlso?: boolean;
}

export interface IpamDeps {
  store: Store;
  host: string;
  logger?: Logger;
  now?: () => Date;
}

const MAX_BATCH = 40; // handle puts, callers' records and block puts stay under etcd's 128 ops per transaction
const MAX_ATTEMPTS = 20;

interface CachedBlock {
  record: BlockRecord;
  modRevision: bigint;
}

interface Pending {
  req: AllocateRequest;
  resolve: (a: Allocation) => void;
  reject: (e: unknown) => void;
}

interface PendingRelease {
  rec: HandleRecord;
  handleModRevision: bigint;
  resolve: (freed: boolean) => void;
  reject: (e: unknown) => void;
}

interface Lane {
  allocs: Pending[];
  releases: PendingRelease[];
  running: boolean;
}

export class Ipam {
  readonly host: string;
  private readonly store: Store;
  private readonly log: Logger;
  private readonly now: () => Date;
  private readonly pools = new Map<string, { pool: Pool; modRevision: bigint }>();
  /** The pool record's revision each Pool object was read at (what its transactions are guarded by). */
  private readonly poolRevisions = new WeakMap<Pool, bigint>();
  /** Blocks this host has claimed, per pool, as last read or written. */
  private readonly ownBlocks = new Map<string, Map<string, CachedBlock>>();
  private readonly loadedAffinity = new Set<string>();
  private readonly lanes = new Map<string, Lane>();

  constructor(deps: IpamDeps) {
    this.host = checkSegment('host', deps.host);
    this.store = deps.store;
    this.log = (deps.logger ?? silentLogger()).child({ component: 'ipam', host: this.host });
    this.now = deps.now ?? (() => new Date());
  }

  // ---- pools ---------------------------------------------------------------------------------

  async createPool(spec: PoolSpec): Promise<Pool> {
    const pool = buildPool(spec);
    const existing = await this.listPools();
    checkRoutedOverlap(pool, existing);
    const same = existing.find((p) => p.spec.name === pool.spec.name);
    const stored = same && (await this.store.get(ipamKeys.pool(pool.spec.name)));
    if (stored && (JSON.parse(stored.value) as { retiring?: boolean }).retiring) {
      throw new AppError(ErrorCodes.CONFLICT, `pool ${pool.spec.name} is being deleted; try again`, {
        pool: pool.spec.name,
      });
    }
    if (same) {
      if (JSON.stringify(same.spec) === JSON.stringify(pool.spec)) return same;
      throw new AppError(ErrorCodes.ALREADY_EXISTS, `pool ${pool.spec.name} exists with a different spec`, {
        pool: pool.spec.name,
      });
    }
    const { ok } = await commitCas(this.store, [
      { key: ipamKeys.pool(pool.spec.name), expectModRevision: 0n, value: JSON.stringify(pool.spec) },
    ]);
    if (!ok) return this.createPool(spec); // raced with an identical create, or lost to a different one
    return pool;
  }

  async listPools(): Promise<Pool[]> {
    const { kvs } = await this.store.list(ipamKeys.pools());
    return kvs.map((kv) => buildPool(JSON.parse(kv.value) as PoolSpec));
  }

  async getPool(name: string): Promise<Pool> {
    const cached = this.pools.get(name);
    if (cached) return cached.pool;
    const kv = await this.store.get(ipamKeys.pool(checkSegment('pool', name)));
    const spec = kv ? (JSON.parse(kv.value) as PoolSpec & { retiring?: boolean }) : undefined;
    if (!kv || !spec || spec.retiring) {
      throw new AppError(ErrorCodes.NOT_FOUND, `no pool "${name}"${spec?.retiring ? ' (being deleted)' : ''}`, {
        pool: name,
      });
    }
    const pool = buildPool(spec);
    this.pools.set(name, { pool, modRevision: kv.modRevision });
    this.poolRevisions.set(pool, kv.modRevision);
    return pool;
  }

  /**
   * A transaction condition: the pool is still the one this host cached. A VPC deleted and
   * created again with another CIDR has a new pool record, and allocating from the old one's
   * cached range would hand out addresses outside it.
   */
  private poolGuard(pool: Pool): CasWrite {
    return {
      key: ipamKeys.pool(pool.spec.name),
      expectModRevision: this.poolRevisions.get(pool) ?? 0n,
      value: undefined,
    };
  }

  /**
   * After a lost transaction: was it because `pool` (this copy of it) is no longer the stored
   * one? Then the caller must get the pool again; stale caches are forgotten.
   */
  private async poolMoved(pool: Pool): Promise<boolean> {
    const name = pool.spec.name;
    const kv = await this.store.get(ipamKeys.pool(name));
    if (kv && kv.modRevision === this.poolRevisions.get(pool)) return false;
    if (!kv || this.pools.get(name)?.modRevision !== kv.modRevision) this.forgetPool(name);
    return true;
  }

  private forgetPool(name: string): void {
    this.pools.delete(name);
    this.ownBlocks.delete(name);
    this.loadedAffinity.delete(name);
  }

  /** Refused while any block of the pool exists (addresses are in use). */
  async deletePool(name: string): Promise<void> {
    const key = ipamKeys.pool(checkSegment('pool', name));
    const kv = await this.store.get(key);
    this.forgetPool(name);
    if (!kv) return;
    // First retire the record: its new revision fails the guard of every allocation still in
    // flight (poolGuard), and getPool refuses it. Only then are blocks counted, so none can be
    // claimed between the count and the delete.
    const spec = JSON.parse(kv.value) as PoolSpec;
    const retired = await commitCas(this.store, [
      { key, expectModRevision: kv.modRevision, value: JSON.stringify({ ...spec, retiring: true }) },
    ]);
    if (!retired.ok)
      throw new AppError(ErrorCodes.CONFLICT, `pool ${name} changed meanwhile; try again`, { pool: name });
    const { keys } = await this.store.listKeys(ipamKeys.blocks(name));
    if (keys.length > 0) {
      // In use: the pool goes back to service as it was.
      await commitCas(this.store, [{ key, expectModRevision: retired.revision, value: kv.value }]);
      throw new AppError(ErrorCodes.CONFLICT, `pool ${name} still has ${keys.length} blocks in use`, { pool: name });
    }
    await commitCas(this.store, [{ key, expectModRevision: retired.revision, value: null }]);
  }

  // ---- allocation ----------------------------------------------------------------------------

  /** Idempotent per handle: the same handle gets the same address back. */
  async allocate(req: AllocateRequest): Promise<Allocation> {
    checkSegment('pool', req.pool);
    checkSegment('handle', req.handle);
    if (req.sticky !== undefined) checkSegment('sticky name', req.sticky);
    if (req.ip !== undefined) parseIp(req.ip);
    const pool = await this.getPool(req.pool);
    if (req.ip !== undefined || req.sticky !== undefined) {
      const existing = await this.store.get(ipamKeys.handleInPool(req.handle, req.pool));
      if (existing) return this.toAllocation(pool, JSON.parse(existing.value) as HandleRecord);
      return this.allocateSpecific(pool, req);
    }
    // The dynamic path does not look the handle up first: its transaction requires the handle to
    // be absent, and a conflict (the same ADD twice) is answered with the existing record.
    return new Promise<Allocation>((resolve, reject) => {
      const lane = this.lane(req.pool);
      lane.allocs.push({ req, resolve, reject });
      if (!lane.running) void this.drain(req.pool);
    });
  }

  private lane(pool: string): Lane {
    let lane = this.lanes.get(pool);
    if (!lane) {
      lane = { allocs: [], releases: [], running: false };
      this.lanes.set(pool, lane);
    }
    return lane;
  }

  /** One worker per pool turns whatever queued up meanwhile into as few transactions as it can. */
  private async drain(poolName: string): Promise<void> {
    const lane = this.lane(poolName);
    lane.running = true;
    try {
      while (lane.allocs.length > 0 || lane.releases.length > 0) {
        const releases = lane.releases.splice(0, MAX_BATCH);
        if (releases.length > 0) {
          await this.releaseBatch(poolName, releases).catch((err: unknown) => releases.forEach((r) => r.reject(err)));
        }
        const allocs = lane.allocs.splice(0, MAX_BATCH);
        if (allocs.length > 0) {
          await this.allocateBatch(poolName, allocs).catch((err: unknown) => allocs.forEach((p) => p.reject(err)));
        }
      }
    } finally {
      lane.running = false;
    }
  }

  /** Allocates for every request of the batch in one transaction (retried on CAS conflicts). */
  private async allocateBatch(poolName: string, batch: Pending[]): Promise<void> {
    let pool = await this.getPool(poolName);
    let pending = batch;
    for (let attempt = 0; attempt < MAX_ATTEMPTS && pending.length > 0; attempt++) {
      let blocks: CachedBlock[];
      try {
        blocks = await this.blocksWithRoom(pool, pending.length);
      } catch (err) {
        if (!(err instanceof PoolMoved)) throw err;
        pool = await this.getPool(poolName);
        continue;
      }
      if (blocks.length === 0) {
        const borrowed = pool.spec.strictAffinity ? undefined : await this.findBorrowable(pool);
        if (!borrowed) {
          const err = new AppError(
            ErrorCodes.POOL_EXHAUSTED,
            `pool ${pool.spec.name} (${pool.spec.cidr}) has no free address`,
            { pool: pool.spec.name },
          );
          for (const p of pending) p.reject(err);
          return;
        }
        blocks.push(borrowed);
      }
      const writes: CasWrite[] = [this.poolGuard(pool)];
      const results: Array<{ p: Pending; record: HandleRecord }> = [];
      const updated: Array<{ key: string; block: CachedBlock; record: BlockRecord }> = [];
      let queue = pending;
      for (const cached of blocks) {
        if (queue.length === 0) break;
        const { record, granted } = allocateInBlock(
          cached.record,
          queue.map((p) => p.req.handle),
          pool.reservedValues,
        );
        if (granted.length === 0) continue;
        const key = ipamKeys.block(pool.spec.name, cidrKey(parseCidr(cached.record.cidr)));
        writes.push({ key, expectModRevision: cached.modRevision, value: JSON.stringify(record) });
        updated.push({ key, block: cached, record });
        for (const [i, g] of granted.entries()) {
          const p = queue[i]!;
          const handle = this.handleRecord(pool, p.req, formatIp(g.ip), cached.record.cidr, g.seq);
          writes.push({
            key: ipamKeys.handleInPool(p.req.handle, pool.spec.name),
            expectModRevision: 0n,
            value: JSON.stringify(handle),
          });
          writes.push(...this.alsoWrites(pool, p.req, handle));
          results.push({ p, record: handle });
        }
        queue = queue.slice(granted.length);
      }
      const { ok, revision } = await commitCas(this.store, writes);
      if (ok) {
        for (const u of updated) this.remember(pool.spec.name, u.record, revision);
        for (const r of results)
          r.p.resolve({ ...this.toAllocation(pool, r.record), ...(r.p.req.alsoWrite && { wroteAlso: true }) });
        pending = queue;
        continue;
      }
      // Lost a race: the pool was replaced (start over with the new one), another host borrowed
      // from one of our blocks, or a handle exists already (the same ADD twice). Refresh what we
      // wrote against and answer existing handles.
      if (await this.poolMoved(pool)) {
        pool = await this.getPool(poolName);
        continue;
      }
      await this.refreshBlocks(
        pool.spec.name,
        updated.map((u) => u.key),
      );
      const still: Pending[] = [];
      for (const p of pending) {
        const kv = await this.store.get(ipamKeys.handleInPool(p.req.handle, pool.spec.name));
        if (kv) p.resolve(this.toAllocation(pool, JSON.parse(kv.value) as HandleRecord));
        else still.push(p);
      }
      pending = still;
    }
    const err = new AppError(ErrorCodes.CONFLICT, `allocation in pool ${pool.spec.name} kept losing races; try again`);
    for (const p of pending) p.reject(err);
  }

  /** Static or sticky: a specific address, in whatever block holds it. */
  private async allocateSpecific(initial: Pool, req: AllocateRequest): Promise<Allocation> {
    let pool = initial;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      let ip: Ip | undefined = req.ip === undefined ? undefined : parseIp(req.ip);
      let stickyKv;
      if (req.sticky !== undefined) {
        stickyKv = await this.store.get(ipamKeys.sticky(pool.spec.name, req.sticky));
        const stickyIp = stickyKv ? parseIp((JSON.parse(stickyKv.value) as StickyRecord).ip) : undefined;
        if (ip && stickyIp && ip.value !== stickyIp.value) {
          throw invalidInput(`sticky name ${req.sticky} holds ${formatIp(stickyIp)}, not ${req.ip}`);
        }
        ip ??= stickyIp;
      }
      if (!ip) {
        // A sticky name seen for the first time: allocate dynamically, then pin it.
        const a = await this.allocate({ pool: req.pool, handle: req.handle, owner: req.owner });
        const { ok: pinned } = await commitCas(this.store, [
          {
            key: ipamKeys.sticky(pool.spec.name, req.sticky!),
            expectModRevision: 0n,
            value: JSON.stringify({ pool: pool.spec.name, name: req.sticky!, ip: a.ip } satisfies StickyRecord),
          },
        ]);
        if (pinned) return a;
        await this.releaseHandle(req.handle); // someone pinned this name meanwhile: use theirs
        continue;
      }
      if (!contains(pool.cidr, ip))
        throw invalidInput(`${formatIp(ip)} is not in pool ${pool.spec.name} (${pool.spec.cidr})`);
      const blockCidr = blockOf(pool.cidr, pool.spec.blockPrefix, ip);
      const key = ipamKeys.block(pool.spec.name, cidrKey(blockCidr));
      const kv = await this.store.get(key);
      const current: BlockRecord = kv
        ? (JSON.parse(kv.value) as BlockRecord)
        : emptyBlock(formatCidr(blockCidr), pool.spec.name, this.host);
      // A sticky address waiting for its workload is held by the sticky handle: take it over.
      let base = current;
      if (req.sticky !== undefined) {
        const offset = offsetOfIp(current, ip);
        const held = current.allocations[offset];
        if (held && held.h === stickyHandle(req.sticky))
          base = releaseInBlock(current, offset, held.h, held.s) ?? current;
      }
      const { record, granted } = allocateAt(base, ip, req.handle, pool.reservedValues);
      const handle = this.handleRecord(pool, req, formatIp(ip), current.cidr, granted.seq);
      const writes: CasWrite[] = [
        this.poolGuard(pool),
        { key, expectModRevision: kv?.modRevision ?? 0n, value: JSON.stringify(record) },
        {
          key: ipamKeys.handleInPool(req.handle, pool.spec.name),
          expectModRevision: 0n,
          value: JSON.stringify(handle),
        },
      ];
      if (!kv)
        writes.push({
          key: ipamKeys.affinity(this.host, pool.spec.name, cidrKey(blockCidr)),
          expectModRevision: 0n,
          value: '',
        });
      writes.push(...this.alsoWrites(pool, req, handle));
      if ((await commitCas(this.store, writes)).ok) {
        this.ownBlocks.get(pool.spec.name)?.delete(key); // re-read on next use
        return { ...this.toAllocation(pool, handle), ...(req.alsoWrite && { wroteAlso: true }) };
      }
      const again = await this.store.get(ipamKeys.handleInPool(req.handle, pool.spec.name));
      if (again) return this.toAllocation(pool, JSON.parse(again.value) as HandleRecord);
      if (await this.poolMoved(pool)) pool = await this.getPool(pool.spec.name);
    }
    throw new AppError(ErrorCodes.CONFLICT, `static allocation in pool ${pool.spec.name} kept losing races; try again`);
  }

  // ---- release -------------------------------------------------------------------------------

  /**
   * Releases every address the handle holds (in `pool` only, when given). Idempotent: returns how
   * many it freed.
   */
  async releaseHandle(handle: string, pool?: string): Promise<number> {
    checkSegment('handle', handle);
    const { kvs } = await this.store.list(ipamKeys.handle(handle));
    let freed = 0;
    for (const kv of kvs) {
      const rec = JSON.parse(kv.value) as HandleRecord;
      if (pool !== undefined && rec.pool !== pool) continue;
      if (await this.releaseRecord(rec, kv.modRevision)) freed++;
    }
    return freed;
  }

  /**
   * Frees one allocation if it is still the one `rec` describes (same handle and sequence number),
   * deleting the handle record in the same transaction. An emptied block is given back to the pool.
   * Resolves true when it freed the address, false when there was nothing (left) to free.
   */
  releaseRecord(rec: HandleRecord, handleModRevision: bigint): Promise<boolean> {
    checkSegment('pool', rec.pool);
    return new Promise<boolean>((resolve, reject) => {
      const lane = this.lane(rec.pool);
      lane.releases.push({ rec, handleModRevision, resolve, reject });
      if (!lane.running) void this.drain(rec.pool);
    });
  }

  /** Applies a batch of releases: per block one CAS, all in one transaction with the handle deletes. */
  private async releaseBatch(poolName: string, batch: PendingRelease[]): Promise<void> {
    let pending = batch;
    for (let attempt = 0; attempt < MAX_ATTEMPTS && pending.length > 0; attempt++) {
      const byBlock = new Map<string, PendingRelease[]>();
      for (const r of pending) {
        const key = ipamKeys.block(poolName, cidrKey(parseCidr(r.rec.block)));
        byBlock.set(key, [...(byBlock.get(key) ?? []), r]);
      }
      const writes: CasWrite[] = [];
      const outcome = new Map<PendingRelease, boolean>();
      const after: Array<{ key: string; next: BlockRecord | undefined }> = [];
      for (const [key, group] of byBlock) {
        const kv = await this.store.get(key);
        let record = kv ? (JSON.parse(kv.value) as BlockRecord) : undefined;
        for (const r of group) {
          const held = record?.allocations[offsetOfIp(record, parseIp(r.rec.ip))];
          if (held && held.h === r.rec.handle && held.s !== r.rec.seq) {
            // A stale release: this handle holds the address under a newer sequence number.
            outcome.set(r, false);
            continue;
          }
          writes.push({
            key: ipamKeys.handleInPool(r.rec.handle, poolName),
            expectModRevision: r.handleModRevision,
            value: null,
          });
          const next = record && releaseInBlock(record, offsetOfIp(record, parseIp(r.rec.ip)), r.rec.handle, r.rec.seq);
          outcome.set(r, next !== undefined);
          if (next && r.rec.sticky) {
            // Keep the address for the named workload: the sticky handle holds it now.
            const offset = offsetOfIp(next, parseIp(r.rec.ip));
            record = {
              ...next,
              seq: next.seq + 1,
              allocations: { ...next.allocations, [offset]: { h: stickyHandle(r.rec.sticky), s: next.seq + 1 } },
            };
          } else if (next) {
            record = next;
          }
        }
        if (!kv || !record) continue;
        const empty = allocatedCount(record) === 0;
        writes.push({ key, expectModRevision: kv.modRevision, value: empty ? null : JSON.stringify(record) });
        if (empty && record.affinity)
          writes.push({
            key: ipamKeys.affinity(record.affinity, poolName, cidrKey(parseCidr(record.cidr))),
            value: null,
          });
        after.push({ key, next: empty ? undefined : record });
      }
      const { ok, revision } = await commitCas(this.store, writes);
      if (ok) {
        for (const a of after) {
          if (a.next) this.remember(poolName, a.next, revision);
          else this.ownBlocks.get(poolName)?.delete(a.key);
        }
        for (const r of pending) r.resolve(outcome.get(r) ?? false);
        return;
      }
      // A block changed under us (retry), or a handle record did: someone else released or
      // re-allocated it, so this release has nothing left to do.
      const still: PendingRelease[] = [];
      for (const r of pending) {
        const h = await this.store.get(ipamKeys.handleInPool(r.rec.handle, poolName));
        if (!h || h.modRevision !== r.handleModRevision) r.resolve(false);
        else still.push(r);
      }
      pending = still;
    }
    const err = new AppError(ErrorCodes.CONFLICT, `releases in pool ${poolName} kept losing races; try again`);
    for (const r of pending) r.reject(err);
  }

  /** Drops the sticky pin of a name, freeing its address if no workload holds it. */
  async releaseSticky(poolName: string, name: string): Promise<void> {
    checkSegment('sticky name', name);
    const kv = await this.store.get(ipamKeys.sticky(poolName, name));
    if (!kv) return;
    const sticky = JSON.parse(kv.value) as StickyRecord;
    const pool = await this.getPool(poolName);
    const ip = parseIp(sticky.ip);
    const key = ipamKeys.block(poolName, cidrKey(blockOf(pool.cidr, pool.spec.blockPrefix, ip)));
    const bkv = await this.store.get(key);
    const writes: CasWrite[] = [
      { key: ipamKeys.sticky(poolName, name), expectModRevision: kv.modRevision, value: null },
    ];
    if (bkv) {
      const block = JSON.parse(bkv.value) as BlockRecord;
      const offset = offsetOfIp(block, ip);
      const held = block.allocations[offset];
      const next = held && held.h === stickyHandle(name) ? releaseInBlock(block, offset, held.h, held.s) : undefined;
      if (next) {
        const empty = allocatedCount(next) === 0;
        writes.push({ key, expectModRevision: bkv.modRevision, value: empty ? null : JSON.stringify(next) });
        if (empty && next.affinity)
          writes.push({ key: ipamKeys.affinity(next.affinity, poolName, cidrKey(parseCidr(next.cidr))), value: null });
      }
    }
    if (!(await commitCas(this.store, writes)).ok) return this.releaseSticky(poolName, name);
    this.ownBlocks.get(poolName)?.delete(key);
  }

  // ---- garbage collection ------------------------------------------------------------------

  /**
   * The CNI GC verb: releases this host's handles in `pool` whose attachment (container id +
   * interface) the runtime no longer lists. Handles without an attachment (sticky) are kept.
   */
  async gcAttachments(pool: string, valid: ReadonlyArray<{ containerId: string; ifname: string }>): Promise<string[]> {
    const keep = new Set(valid.map((v) => `${v.containerId}\u0000${v.ifname}`));
    const released: string[] = [];
    for (const { record, modRevision } of await this.handles({ host: this.host })) {
      if (record.pool !== pool || record.containerId === undefined || record.ifname === undefined) continue;
      if (keep.has(`${record.containerId}\u0000${record.ifname}`)) continue;
      if (await this.releaseRecord(record, modRevision)) released.push(record.handle);
    }
    if (released.length) this.log.info({ pool, released: released.length }, 'gc released stale attachments');
    return released;
  }

  /**
   * One sweeper pass over every handle: releases addresses whose owner (host or netns) has been
   * gone for `graceMs`, re-validating the record just before release. Call it periodically and
   * pass the returned suspects back in.
   */
  async sweep(
    check: OwnerCheck,
    previous: ReadonlyMap<string, Suspect>,
    graceMs: number,
  ): Promise<{ released: HandleRecord[]; suspects: Map<string, Suspect> }> {
    const all = new Map((await this.handles()).map((h) => [ipamKeys.handleInPool(h.record.handle, h.record.pool), h]));
    const decision = decideSweep(all, previous, this.host, check, this.now().getTime(), graceMs);
    const released: HandleRecord[] = [];
    for (const key of decision.release) {
      // Re-validate: the record must be unchanged and its owner still gone.
      const kv = await this.store.get(key);
      const before = all.get(key);
      if (!kv || !before || kv.modRevision !== before.modRevision) continue;
      const record = JSON.parse(kv.value) as HandleRecord;
      if (!ownerGone(record, this.host, check)) continue;
      if (await this.releaseRecord(record, kv.modRevision)) released.push(record);
    }
    if (released.length)
      this.log.info({ released: released.map((r) => r.ip) }, 'sweeper released addresses of gone owners');
    return { released, suspects: decision.suspects };
  }

  // ---- queries -------------------------------------------------------------------------------

  async handles(filter: { host?: string } = {}): Promise<Array<{ record: HandleRecord; modRevision: bigint }>> {
    const { kvs } = await this.store.list(ipamKeys.allHandles());
    return kvs
      .map((kv) => ({ record: JSON.parse(kv.value) as HandleRecord, modRevision: kv.modRevision }))
      .filter((h) => filter.host === undefined || h.record.host === filter.host);
  }

  async getHandle(handle: string): Promise<HandleRecord[]> {
    const { kvs } = await this.store.list(ipamKeys.handle(checkSegment('handle', handle)));
    return kvs.map((kv) => JSON.parse(kv.value) as HandleRecord);
  }

  async blocks(poolName: string): Promise<BlockRecord[]> {
    const { kvs } = await this.store.list(ipamKeys.blocks(poolName));
    return kvs.map((kv) => JSON.parse(kv.value) as BlockRecord);
  }

  // ---- blocks --------------------------------------------------------------------------------

  /** This host's blocks that have room, claiming a new block when they hold fewer than `want`. */
  private async blocksWithRoom(pool: Pool, want: number): Promise<CachedBlock[]> {
    await this.loadAffinity(pool.spec.name);
    const own = this.ownBlocks.get(pool.spec.name)!;
    const withRoom: CachedBlock[] = [];
    let room = 0;
    for (const b of own.values()) {
      const free = freeOffsets(b.record, pool.reservedValues, want - room).length;
      if (free > 0) {
        withRoom.push(b);
        room += free;
      }
      if (room >= want) return withRoom;
    }
    while (room < want) {
      const claimed = await this.claimBlock(pool);
      if (!claimed) break;
      withRoom.push(claimed);
      room += freeOffsets(claimed.record, pool.reservedValues).length;
    }
    return withRoom;
  }

  private async loadAffinity(poolName: string): Promise<void> {
    if (this.loadedAffinity.has(poolName)) return;
    const own = new Map<string, CachedBlock>();
    this.ownBlocks.set(poolName, own);
    const { kvs } = await this.store.list(`${ipamKeys.hostAffinities(this.host)}${poolName}/`);
    for (const kv of kvs) {
      const cidrKeyPart = kv.key.slice(kv.key.lastIndexOf('/') + 1);
      const key = ipamKeys.block(poolName, cidrKeyPart);
      const b = await this.store.get(key);
      if (b) own.set(key, { record: JSON.parse(b.value) as BlockRecord, modRevision: b.modRevision });
    }
    this.loadedAffinity.add(poolName);
  }

  /**
   * Claims a free block: the first unused block index at or after a per-host starting point (so
   * hosts rarely race for the same block), created with CAS on "absent".
   */
  private async claimBlock(pool: Pool): Promise<CachedBlock | undefined> {
    const total = blockCount(pool.cidr, pool.spec.blockPrefix);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const { keys } = await this.store.listKeys(ipamKeys.blocks(pool.spec.name));
      const used = new Set(keys.map((k) => k.slice(k.lastIndexOf('/') + 1)));
      if (BigInt(used.size) >= total) return undefined;
      const start = hashIndex(this.host, total);
      let chosen: string | undefined;
      for (let i = 0n; i < total; i++) {
        const candidate = cidrKey(blockAt(pool.cidr, pool.spec.blockPrefix, (start + i) % total));
        if (!used.has(candidate)) {
          chosen = candidate;
          break;
        }
      }
      if (!chosen) return undefined;
      const cidr = blockAt(pool.cidr, pool.spec.blockPrefix, indexOfKey(pool, chosen));
      const record = emptyBlock(formatCidr(cidr), pool.spec.name, this.host);
      const key = ipamKeys.block(pool.spec.name, chosen);
      const { ok, revision } = await commitCas(this.store, [
        this.poolGuard(pool),
        { key, expectModRevision: 0n, value: JSON.stringify(record) },
        { key: ipamKeys.affinity(this.host, pool.spec.name, chosen), expectModRevision: 0n, value: '' },
      ]);
      if (!ok && (await this.poolMoved(pool))) throw new PoolMoved();
      if (ok) {
        this.log.debug({ pool: pool.spec.name, block: record.cidr }, 'claimed block');
        const cached = { record, modRevision: revision };
        this.ownBlocks.get(pool.spec.name)?.set(key, cached);
        return cached;
      }
    }
    return undefined;
  }

  /** With the pool out of free blocks, find another host's block with a free address. */
  private async findBorrowable(pool: Pool): Promise<CachedBlock | undefined> {
    const { kvs } = await this.store.list(ipamKeys.blocks(pool.spec.name));
    for (const kv of kvs) {
      const record = JSON.parse(kv.value) as BlockRecord;
      if (freeOffsets(record, pool.reservedValues, 1).length > 0) return { record, modRevision: kv.modRevision };
    }
    return undefined;
  }

  private remember(poolName: string, record: BlockRecord, modRevision: bigint): void {
    if (record.affinity !== this.host) return;
    const key = ipamKeys.block(poolName, cidrKey(parseCidr(record.cidr)));
    this.ownBlocks.get(poolName)?.set(key, { record, modRevision });
  }

  private async refreshBlocks(poolName: string, keys: string[]): Promise<void> {
    const own = this.ownBlocks.get(poolName);
    for (const key of keys) {
      const kv = await this.store.get(key);
      if (!kv) own?.delete(key);
      else {
        const record = JSON.parse(kv.value) as BlockRecord;
        if (record.affinity === this.host) own?.set(key, { record, modRevision: kv.modRevision });
        else own?.delete(key);
      }
    }
  }

  private handleRecord(pool: Pool, req: AllocateRequest, ip: string, block: string, seq: number): HandleRecord {
    return {
      handle: req.handle,
      pool: pool.spec.name,
      ip,
      prefixLength: pool.cidr.prefixLength,
      block,
      seq,
      host: this.host,
      ...(req.owner?.containerId !== undefined && { containerId: req.owner.containerId }),
      ...(req.owner?.ifname !== undefined && { ifname: req.owner.ifname }),
      ...(req.owner?.netns !== undefined && { netns: req.owner.netns }),
      ...(req.sticky !== undefined && { sticky: req.sticky }),
      createdAt: this.now().toISOString(),
    };
  }

  /** The caller's record that goes with a fresh allocation (unguarded: it names the address). */
  private alsoWrites(pool: Pool, req: AllocateRequest, handle: HandleRecord): CasWrite[] {
    if (!req.alsoWrite) return [];
    const { key, value } = req.alsoWrite(this.toAllocation(pool, handle));
    return [{ key, value }];
  }

  private toAllocation(pool: Pool, rec: HandleRecord): Allocation {
    return {
      handle: rec.handle,
      pool: rec.pool,
      ip: rec.ip,
      cidr: `${rec.ip}/${pool.cidr.prefixLength}`,
      gateway: pool.spec.gateway,
      seq: rec.seq,
      block: rec.block,
    };
  }
}

/** The pool record changed under a cached copy (see Ipam.poolGuard): start over with the new one. */
class PoolMoved extends Error {}

function hashIndex(text: string, modulo: bigint): bigint {
  let h = 2166136261;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619) >>> 0;
  return BigInt(h) % modulo;
}

function indexOfKey(pool: Pool, key: string): bigint {
  const cidr = parseCidr(key.replace(/-(\d+)$/, '/$1'));
  return (cidr.network - pool.cidr.network) >> BigInt((pool.cidr.family === 4 ? 32 : 128) - pool.spec.blockPrefix);
}

export function isRetryable(err: unknown): boolean {
  return isAppError(err, ErrorCodes.STORE_UNAVAILABLE) || isAppError(err, ErrorCodes.CONFLICT);
}
