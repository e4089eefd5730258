import { Address4, Address6 } from 'ip-address';
import { invalidInput } from './errors.js';

/**
 * CIDR arithmetic on bigints, for both families. Parsing and validation go through `ip-address`;
 * the hot paths (offsets, block math) are plain bigint arithmetic.
 */

export type IpFamily = 4 | 6;

export interface Ip {
  family: IpFamily;
  value: bigint;
}

export interface Cidr {
  family: IpFamily;
  /** The network address (host bits zero). */
  network: bigint;
  prefixLength: number;
}

const BITS: Record<IpFamily, number> = { 4: 32, 6: 128 };

export function familyBits(family: IpFamily): number {
  return BITS[family];
}

export function parseIp(text: string): Ip {
  if (typeof text !== 'string' || text.length === 0 || text.length > 45 || text.includes('/')) {
    throw invalidInput(`"${String(text)}" is not an IP address`);
  }
  try {
    if (text.includes(':')) return { family: 6, value: new Address6(text).bigInt() };
    if (!/^\d{1,3}(\.\d{1,3}){3}$/.test(text)) throw new Error('not dotted quad');
    return { family: 4, value: new Address4(text).bigInt() };
  } catch {
    throw invalidInput(`"${text}" is not an IP address`);
  }
}

export function formatIp(ip: Ip): string {
  return ip.family === 4 ? Address4.fromBigInt(ip.value).correctForm() : Address6.fromBigInt(ip.value).correctForm();
}

/**
 * Parses "a.b.c.d/n" or "x::/n". With `strict` (the default) host bits must be zero, as for a
 * pool or block; otherwise they are masked off and the address is kept separately by the caller.
 */
export function parseCidr(text: string, opts: { strict?: boolean } = {}): Cidr {
  const strict = opts.strict ?? true;
  if (typeof text !== 'string') throw invalidInput('CIDR must be a string');
  const slash = text.indexOf('/');
  if (slash < 0) throw invalidInput(`"${text}" is not a CIDR (missing /prefix)`);
  const ip = parseIp(text.slice(0, slash));
  const lenText = text.slice(slash + 1);
  const prefixLength = Number(lenText);
  if (!/^\d{1,3}$/.test(lenText) || prefixLength > BITS[ip.family]) {
    throw invalidInput(`"${text}" has an invalid prefix length`);
  }
  const network = ip.value & mask(ip.family, prefixLength);
  if (strict && network !== ip.value) {
    throw invalidInput(
      `"${text}" has host bits set (network is ${formatCidr({ family: ip.family, network, prefixLength })})`,
    );
  }
  return { family: ip.family, network, prefixLength };
}

export function formatCidr(c: Cidr): string {
  return `${formatIp({ family: c.family, value: c.network })}/${c.prefixLength}`;
}

function mask(family: IpFamily, prefixLength: number): bigint {
  const bits = BITS[family];
  const all = (1n << BigInt(bits)) - 1n;
  return (all >> BigInt(bits - prefixLength)) << BigInt(bits - prefixLength);
}

export function cidrSize(c: Cidr): bigint {
  return 1n << BigInt(BITS[c.family] - c.prefixLength);
}

export function lastAddress(c: Cidr): bigint {
  return c.network + cidrSize(c) - 1n;
}

export function contains(c: Cidr, ip: Ip): boolean {
  return ip.family === c.family && ip.value >= c.network && ip.value <= lastAddress(c);
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return a.family === b.family && a.network <= lastAddress(b) && b.network <= lastAddress(a);
}

/** The address at `offset` inside `c`. */
export function addressAt(c: Cidr, offset: bigint | number): Ip {
  const off = BigInt(offset);
  if (off < 0n || off >= cidrSize(c)) throw invalidInput(`offset ${off} outside ${formatCidr(c)}`);
  return { family: c.family, value: c.network + off };
}

export function offsetOf(c: Cidr, ip: Ip): bigint {
  if (!contains(c, ip)) throw invalidInput(`${formatIp(ip)} is not in ${formatCidr(c)}`);
  return ip.value - c.network;
}

/** How many /`blockPrefix` blocks `c` holds. */
export function blockCount(c: Cidr, blockPrefix: number): bigint {
  if (blockPrefix < c.prefixLength || blockPrefix > BITS[c.family]) {
    throw invalidInput(`block size /${blockPrefix} does not fit in ${formatCidr(c)}`);
  }
  return 1n << BigInt(blockPrefix - c.prefixLength);
}

/** The `index`-th /`blockPrefix` block of `c`. */
export function blockAt(c: Cidr, blockPrefix: number, index: bigint | number): Cidr {
  const i = BigInt(index);
  if (i < 0n || i >= blockCount(c, blockPrefix)) throw invalidInput(`block index ${i} outside ${formatCidr(c)}`);
  return {
    family: c.family,
    network: c.network + i * (1n << BigInt(BITS[c.family] - blockPrefix)),
    prefixLength: blockPrefix,
  };
}

/** The /`blockPrefix` block of `c` that holds `ip`. */
export function blockOf(c: Cidr, blockPrefix: number, ip: Ip): Cidr {
  const index = offsetOf(c, ip) >> BigInt(BITS[c.family] - blockPrefix);
  return blockAt(c, blockPrefix, index);
}

/** Escapes a CIDR for use as one etcd key segment ("10.0.0.0/26" → "10.0.0.0-26"). */
export function cidrKey(c: Cidr): string {
  return formatCidr(c).replace('/', '-');
}
