import { invalidInput } from '../core/errors.js';

/**
 * The ipam layout in etcd (versioned prefix, JSON values):
 *
 *   /netd/v1/ipam/pools/<pool>                      PoolSpec
 *   /netd/v1/ipam/blocks/<pool>/<cidr-key>          BlockRecord (CAS on mod revision)
 *   /netd/v1/ipam/affinity/<host>/<pool>/<cidr-key> "" — index of the blocks a host claimed
 *   /netd/v1/ipam/handles/<handle>/<pool>           HandleRecord — who holds which address
 *   /netd/v1/ipam/sticky/<pool>/<name>              StickyRecord — an address kept for a named workload
 */

export const IPAM_ROOT = '/netd/v1/ipam/';

const SEGMENT_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,399}$/;

/** Handles, hosts and names become key segments: no slashes, bounded, printable. */
export function checkSegment(what: string, value: unknown): string {
  if (typeof value !== 'string' || !SEGMENT_RE.test(value)) {
    throw invalidInput(
      `${what} "${String(value)}" must be 1-400 characters of A-Z a-z 0-9 _ . : - (starting alphanumeric)`,
      { [what]: value },
    );
  }
  return value;
}

export const ipamKeys = {
  pools: () => `${IPAM_ROOT}pools/`,
  pool: (pool: string) => `${IPAM_ROOT}pools/${pool}`,
  blocks: (pool: string) => `${IPAM_ROOT}blocks/${pool}/`,
  block: (pool: string, cidrKey: string) => `${IPAM_ROOT}blocks/${pool}/${cidrKey}`,
  allBlocks: () => `${IPAM_ROOT}blocks/`,
  allAffinities: () => `${IPAM_ROOT}affinity/`,
  hostAffinities: (host: string) => `${IPAM_ROOT}affinity/${host}/`,
  affinity: (host: string, pool: string, cidrKey: string) => `${IPAM_ROOT}affinity/${host}/${pool}/${cidrKey}`,
  allHandles: () => `${IPAM_ROOT}handles/`,
  handle: (handle: string) => `${IPAM_ROOT}handles/${handle}/`,
  handleInPool: (handle: string, pool: string) => `${IPAM_ROOT}handles/${handle}/${pool}`,
  sticky: (pool: string, name: string) => `${IPAM_ROOT}sticky/${pool}/${name}`,
};

/** Who holds an address. Written in the same transaction as the block allocation. */
export interface HandleRecord {
  handle: string;
  pool: string;
  ip: string;
  /** Prefix length of the pool, for the CNI result. */
  prefixLength: number;
  block: string;
  seq: number;
  host: string;
  containerId?: string;
  ifname?: string;
  netns?: string;
  sticky?: string;
  createdAt: string;
}

export interface StickyRecord {
  pool: string;
  name: string;
  ip: string;
}

/** The handle that keeps a sticky address reserved while its workload is away. */
export function stickyHandle(name: string): string {
  return `sticky:${name}`;
}
