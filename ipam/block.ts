import { AppError, ErrorCodes } from '../core/errors.js';
import { cidrSize, formatIp, addressAt, offsetOf, parseCidr, type Cidr, type Ip } from '../core/cidr.js';

/**
 * A block is a small CIDR (default /26) of a pool, claimed by one host ("affinity"). It is one etcd
 * key, updated with compare-and-swap on its mod revision, so allocation needs no cluster-wide lock.
 * Each allocation records its handle and a per-block sequence number: a release must name the
 * sequence it was given, so a stale release cannot free an address that was since re-allocated.
 *
 * Functions here are pure: they take a record and return a new one.
 */

export interface BlockAllocation {
  /** Handle: who holds it (container id + interface, or `sticky:<name>`). */
  h: string;
  /** Sequence number of this allocation within the block. */
  s: number;
}

export interface BlockRecord {
  cidr: string;
  pool: string;
  /** The host that claimed the block; null once it was given up but still holds borrowed addresses. */
  affinity: string | null;
  /** Last sequence number handed out in this block. */
  seq: number;
  /** Offset within the block → allocation. */
  allocations: Record<string, BlockAllocation>;
}

/**
 * A new block's sequence starts at a random point: blocks are deleted when they empty, and a later
 * block for the same CIDR must not reissue the sequence numbers of the earlier one (a delayed
 * release carrying an old number would otherwise match). 2^48 leaves room for 2^5 increments.
 */
export function emptyBlock(
  cidr: string,
  pool: string,
  affinity: string | null,
  seqBase = randomSeqBase(),
): BlockRecord {
  return { cidr, pool, affinity, seq: seqBase, allocations: {} };
}

function randomSeqBase(): number {
  return Math.floor(Math.random() * 2 ** 48);
}

export function blockCidr(b: BlockRecord): Cidr {
  return parseCidr(b.cidr);
}

export function allocatedCount(b: BlockRecord): number {
  return Object.keys(b.allocations).length;
}

/** Free offsets in ascending order, skipping the pool's reserved addresses. */
export function freeOffsets(b: BlockRecord, reserved: ReadonlySet<bigint>, limit = Infinity): number[] {
  const cidr = blockCidr(b);
  const size = Number(cidrSize(cidr));
  const out: number[] = [];
  for (let off = 0; off < size && out.length < limit; off++) {
    if (b.allocations[off] !== undefined) continue;
    if (reserved.has(cidr.network + BigInt(off))) continue;
    out.push(off);
  }
  return out;
}

export interface Granted {
  handle: string;
  ip: Ip;
  offset: number;
  seq: number;
}

/**
 * Allocates one address per handle (lowest free first). Returns the new record and what each handle
 * got; handles that did not fit are left out (the caller tries another block).
 */
export function allocate(
  b: BlockRecord,
  handles: readonly string[],
  reserved: ReadonlySet<bigint>,
): { record: BlockRecord; granted: Granted[] } {
  const cidr = blockCidr(b);
  const free = freeOffsets(b, reserved, handles.length);
  const record: BlockRecord = { ...b, allocations: { ...b.allocations } };
  const granted: Granted[] = [];
  for (let i = 0; i < free.length; i++) {
    const offset = free[i]!;
    const handle = handles[i]!;
    record.seq += 1;
    record.allocations[offset] = { h: handle, s: record.seq };
    granted.push({ handle, ip: addressAt(cidr, offset), offset, seq: record.seq });
  }
  return { record, granted };
}

/** Allocates a specific address (static IP). Throws E_ADDRESS_IN_USE when someone else holds it. */
export function allocateAt(
  b: BlockRecord,
  ip: Ip,
  handle: string,
  reserved: ReadonlySet<bigint>,
): { record: BlockRecord; granted: Granted } {
  const cidr = blockCidr(b);
  const offset = Number(offsetOf(cidr, ip));
  if (reserved.has(ip.value)) {
    throw new AppError(
      ErrorCodes.ADDRESS_IN_USE,
      `${formatIp(ip)} is reserved (network, broadcast, gateway or service address)`,
    );
  }
  const current = b.allocations[offset];
  if (current && current.h !== handle) {
    throw new AppError(ErrorCodes.ADDRESS_IN_USE, `${formatIp(ip)} is already allocated`, { ip: formatIp(ip) });
  }
  if (current) return { record: b, granted: { handle, ip, offset, seq: current.s } };
  const record: BlockRecord = {
    ...b,
    seq: b.seq + 1,
    allocations: { ...b.allocations, [offset]: { h: handle, s: b.seq + 1 } },
  };
  return { record, granted: { handle, ip, offset, seq: record.seq } };
}

/**
 * Frees `offset` if it is still held by `handle` with sequence `seq`. Returns undefined when there
 * is nothing to do (already free, or re-allocated since: a stale release).
 */
export function release(b: BlockRecord, offset: number, handle: string, seq: number): BlockRecord | undefined {
  const current = b.allocations[offset];
  if (!current || current.h !== handle || current.s !== seq) return undefined;
  const allocations = { ...b.allocations };
  delete allocations[offset];
  return { ...b, allocations };
}

export function offsetOfIp(b: BlockRecord, ip: Ip): number {
  return Number(offsetOf(blockCidr(b), ip));
}
