import { invalidInput } from '../core/errors.js';
import type { QosSpec } from './records.js';

/** Limits an operator or tenant may set on an interface, in bits/s (what tc's tbf handles well). */
export const MIN_RATE_BPS = 8_000;
export const MAX_RATE_BPS = 100_000_000_000;

/** Validates rate limits; an empty spec is "no limits" (undefined). */
export function checkQos(q: QosSpec | undefined): QosSpec | undefined {
  if (!q) return undefined;
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < MIN_RATE_BPS || v > MAX_RATE_BPS) {
      throw invalidInput(`qos.${k} must be an integer from ${MIN_RATE_BPS} to ${MAX_RATE_BPS} bits/s`, { [k]: v });
    }
  }
  return q.ingressBps === undefined && q.egressBps === undefined ? undefined : q;
}
