import { createHash } from 'node:crypto';

/**
 * Names of what netd creates in a host namespace. Every name starts with "n" and a kind letter, so
 * the reconciler can recognise (and garbage-collect) exactly its own objects; all fit in 15 chars.
 */
export const linkNames = {
  /** VPC bridge: "nb" + VNI in hex (≤ 6 hex digits). */
  bridge: (vni: number) => `nb${vni.toString(16)}`,
  /** VXLAN device of a VPC. */
  vxlan: (vni: number) => `nx${vni.toString(16)}`,
  /** Host side of a container's eth1 (internal) and eth0 (external). */
  internalPort: (endpointId: string) => `ni${shortHash(endpointId)}`,
  externalPort: (endpointId: string) => `ne${shortHash(endpointId)}`,
  /** The ifb that shapes what a container sends out of the port `hostIf` ("nq" + the port's hash). */
  ifbFor: (hostIf: string) => `nq${hostIf.slice(2)}`,
};

export const OWNED_LINK_RE = /^n[bxieq][0-9a-f]{1,10}$/;

export function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 10);
}
