import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * Bearer tokens. A tenant's token names its tenant ("<tenant>.<secret>") so a request can be
 * checked with one read; only its SHA-256 is stored. Comparisons take the same time whatever
 * the input, so a token cannot be guessed byte by byte.
 */

export function newTenantToken(tenant: string): string {
  return `${tenant}.${randomBytes(24).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** The tenant a token claims to be (checked against the stored hash by the caller). */
export function tokenTenant(token: string): string {
  return token.split('.')[0] ?? '';
}

/** Constant-time: compares the hashes, so lengths never leak. */
export function tokenMatchesHash(token: string, storedHash: string): boolean {
  const a = Buffer.from(hashToken(token));
  const b = Buffer.from(storedHash);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function sameToken(a: string, b: string): boolean {
  return tokenMatchesHash(a, hashToken(b));
}
