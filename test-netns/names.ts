import { invalidInput } from '../core/errors.js';

/**
 * Naming rules of the virtual cluster, in one place so the harness and the leak checker agree.
 * Everything a cluster creates lives in namespaces named `tn-<prefix>-<role>`; inside them, link
 * names are short and fixed (the 15-character ifname limit never meets the prefix).
 */

export const NETNS_PREFIX = 'tn-';
export const STATE_ROOT = '/run/test-netns';
/** Data that must be on disk (etcd's): /run may be a tmpfs (it is on many CI machines). */
export const DATA_ROOT = '/var/lib/test-netns';
export const NETNS_DIR = '/run/netns';

const PREFIX_RE = /^[a-z][a-z0-9]{0,19}$/;
const CONTAINER_RE = /^[a-z][a-z0-9]{0,10}$/;

export function checkPrefix(prefix: string): string {
  if (!PREFIX_RE.test(prefix)) {
    throw invalidInput(`prefix "${prefix}" must be 1-20 lowercase letters/digits starting with a letter`, { prefix });
  }
  return prefix;
}

export function checkContainerName(name: string): string {
  if (!CONTAINER_RE.test(name)) {
    throw invalidInput(`container name "${name}" must be 1-11 lowercase letters/digits starting with a letter`, {
      name,
    });
  }
  return name;
}

export const names = {
  fabricNetns: (prefix: string) => `${NETNS_PREFIX}${prefix}-fab`,
  hostNetns: (prefix: string, host: string) => `${NETNS_PREFIX}${prefix}-${host}`,
  outsideNetns: (prefix: string) => `${NETNS_PREFIX}${prefix}-out`,
  containerNetns: (prefix: string, host: string, container: string) => `${NETNS_PREFIX}${prefix}-${host}-${container}`,
  /** Every namespace of the cluster starts with this. */
  clusterNetnsStem: (prefix: string) => `${NETNS_PREFIX}${prefix}-`,
  hostName: (index: number) => `h${index + 1}`,
  stateDir: (prefix: string) => `${STATE_ROOT}/${prefix}`,
  dataDir: (prefix: string) => `${DATA_ROOT}/${prefix}`,
  netnsPath: (netns: string) => `${NETNS_DIR}/${netns}`,
  /** Host-side veth of a test container (≤ 15 chars). */
  containerHostIf: (container: string) => `c-${container}`,
};

/** The fabric bridge and the links that join it, inside their namespaces. */
export const FABRIC_BRIDGE = 'fabric';
export const HOST_UPLINK = 'uplink';
