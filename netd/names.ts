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
  /**
   * What shapes what a container sends out of the port `hostIf` ("nq" + the port's hash): an ifb;
   * on Open vSwitch's userspace datapath, a veth whose peer `ovsPeerFor(hostIf)` is the OVS port.
   */
  ifbFor: (hostIf: string) => `nq${hostIf.slice(2)}`,
  ovsPeerFor: (hostIf: string) => `no${hostIf.slice(2)}`,
};

/**
 * The gateway of every container interface netd routes (eth0, and eth1 on routed VPCs): a
 * link-local address the host answers for on each port, so no port needs an address of its own.
 */
export const LINK_LOCAL_GATEWAY = '169.254.1.1';

export const OWNED_LINK_RE = /^n[bxieqo][0-9a-f]{1,10}$/;

export function shortHash(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 10);
}
