import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import {
  parseCidr,
  parseIp,
  formatCidr,
  formatIp,
  contains,
  overlaps,
  addressAt,
  cidrSize,
  familyBits,
  type Cidr,
  type Ip,
} from '../core/cidr.js';

/**
 * Pools and their reserved addresses (pure). A pool is one VPC's CIDR (internal, eth1) or an
 * external range (eth0). Hosts claim blocks of it; within a block, the reserved addresses — network,
 * broadcast, gateway and the VPC's service addresses (dns, lb) — are never handed out.
 */

export type PoolKind = 'vpc' | 'external';

export interface PoolSpec {
  name: string;
  cidr: string;
  kind: PoolKind;
  /** Prefix length of the blocks hosts claim; default /26 (IPv4), /122 (IPv6). */
  blockPrefix?: number;
  /** Only allocate from blocks this host has claimed: never borrow from other hosts. */
  strictAffinity?: boolean;
  /** Routed pools must not overlap other routed pools (they share the hosts' routing tables). */
  routed?: boolean;
  /** Default: first usable address. */
  gateway?: string;
  /** Addresses kept for per-VPC services; default: the two after the gateway (dns, lb). */
  serviceAddresses?: string[];
  /** Further addresses never to hand out. */
  reserved?: string[];
}

export interface Pool {
  spec: Required<Omit<PoolSpec, 'gateway' | 'serviceAddresses' | 'reserved'>> & {
    gateway: string;
    serviceAddresses: string[];
    reserved: string[];
  };
  cidr: Cidr;
  /** Absolute address values never handed out. */
  reservedValues: ReadonlySet<bigint>;
}

const NAME_RE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;

export function defaultBlockPrefix(family: 4 | 6): number {
  return family === 4 ? 26 : 122;
}

/** Validates a spec and derives its reserved set. Throws E_INVALID_INPUT with the reason. */
export function buildPool(spec: PoolSpec): Pool {
  if (!spec || typeof spec !== 'object') throw invalidInput('pool spec must be an object');
  if (typeof spec.name !== 'string' || !NAME_RE.test(spec.name)) {
    throw invalidInput(
      `pool name "${String(spec.name)}" must be 1-63 of a-z 0-9 _ . - starting with a letter or digit`,
    );
  }
  if (spec.kind !== 'vpc' && spec.kind !== 'external') throw invalidInput(`pool kind must be "vpc" or "external"`);
  const cidr = parseCidr(spec.cidr);
  const bits = familyBits(cidr.family);
  const blockPrefix = spec.blockPrefix ?? Math.max(defaultBlockPrefix(cidr.family), cidr.prefixLength);
  if (!Number.isInteger(blockPrefix) || blockPrefix < cidr.prefixLength || blockPrefix > bits - 2) {
    throw invalidInput(
      `block prefix /${blockPrefix} must be between /${cidr.prefixLength} and /${bits - 2} for ${spec.cidr}`,
    );
  }
  if (cidrSize(cidr) < 8n) throw invalidInput(`pool ${spec.cidr} is too small (at least 8 addresses)`);
  const inPool = (text: string, what: string): Ip => {
    const ip = parseIp(text);
    if (!contains(cidr, ip)) throw invalidInput(`${what} ${text} is not in ${spec.cidr}`);
    return ip;
  };
  const gateway = spec.gateway === undefined ? addressAt(cidr, 1) : inPool(spec.gateway, 'gateway');
  const services =
    spec.serviceAddresses === undefined
      ? [addressAt(cidr, gateway.value - cidr.network + 1n), addressAt(cidr, gateway.value - cidr.network + 2n)]
      : spec.serviceAddresses.map((s) => inPool(s, 'service address'));
  const extra = (spec.reserved ?? []).map((r) => inPool(r, 'reserved address'));
  const reservedValues = new Set<bigint>([
    cidr.network,
    gateway.value,
    ...services.map((s) => s.value),
    ...extra.map((e) => e.value),
  ]);
  if (cidr.family === 4) reservedValues.add(cidr.network + cidrSize(cidr) - 1n); // broadcast
  return {
    spec: {
      name: spec.name,
      cidr: formatCidr(cidr),
      kind: spec.kind,
      blockPrefix,
      strictAffinity: spec.strictAffinity ?? false,
      routed: spec.routed ?? false,
      gateway: formatIp(gateway),
      serviceAddresses: services.map(formatIp),
      reserved: extra.map(formatIp),
    },
    cidr,
    reservedValues,
  };
}

/** Routed pools and external pools both enter the hosts' routing: they must not overlap each other. */
function entersHostRouting(p: Pool): boolean {
  return p.spec.routed === true || p.spec.kind === 'external';
}

/** Routed pools share the hosts' routing tables (with external pools), so they must not overlap. */
export function checkRoutedOverlap(candidate: Pool, existing: readonly Pool[]): void {
  if (!entersHostRouting(candidate)) return;
  for (const other of existing) {
    if (other.spec.name !== candidate.spec.name && entersHostRouting(other) && overlaps(candidate.cidr, other.cidr)) {
      throw new AppError(
        ErrorCodes.POOL_OVERLAP,
        `${candidate.spec.kind === 'external' ? 'external' : 'routed'} pool ${candidate.spec.name} (${candidate.spec.cidr}) overlaps ${other.spec.kind === 'external' ? 'external' : 'routed'} pool ${other.spec.name} (${other.spec.cidr})`,
        { pool: candidate.spec.name, other: other.spec.name },
      );
    }
  }
}
