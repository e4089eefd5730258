import type { HostSnapshot } from '../model.js';
import type { DesiredRouting } from './routed.js';

/**
 * A network mode turns the cluster's records into the data path one host should have. Modes are
 * pure: they compute; the dataplane module reads the kernel, diffs and applies.
 */

export interface BridgeSpec {
  name: string;
  mtu: number;
  /** Read from the kernel only: false for a device that is administratively down. */
  up?: boolean;
}

export interface VxlanDeviceSpec {
  name: string;
  vni: number;
  local: string;
  dev: string;
  mtu: number;
  master: string;
  /** ARP suppression: the device answers ARP from its neighbour entries. */
  proxy: boolean;
  /** Read from the kernel only: false for a device that is administratively down. */
  up?: boolean;
}

/** A remote endpoint's IP → MAC on a VXLAN device (what ARP suppression answers with). */
export interface NeighSpec {
  ip: string;
  mac: string;
  dev: string;
}

export interface FdbSpec {
  mac: string;
  dev: string;
  dst: string;
}

/** What one host's data path must contain, for the objects netd owns. */
export interface DesiredL2 {
  bridges: Map<string, BridgeSpec>;
  vxlans: Map<string, VxlanDeviceSpec>;
  /** Host-side container ports → the bridge they belong to. */
  ports: Map<string, string>;
  /** Keyed by fdbKey(). */
  fdb: Map<string, FdbSpec>;
  /** Keyed by neighKey(). */
  neighbours: Map<string, NeighSpec>;
  /** ifb devices that shape what containers send (see qos.ts). */
  ifbs: Set<string>;
  /** vlan mode: host ports on the Open vSwitch bridge → their VLAN (see vlan-host.ts). */
  ovsPorts: Map<string, number>;
}

export function fdbKey(f: FdbSpec): string {
  return `${f.dev}|${f.mac}|${f.dst}`;
}

export function neighKey(n: { dev: string; ip: string }): string {
  return `${n.dev}|${n.ip}`;
}

export interface NetworkMode {
  readonly name: 'vxlan' | 'vlan' | 'routed';
  render(view: HostSnapshot): DesiredL2;
  /** Routes and policy rules the mode needs (routed mode); none when absent. */
  renderRouting?(view: HostSnapshot): DesiredRouting;
}

export function emptyDesired(): DesiredL2 {
  return {
    bridges: new Map(),
    vxlans: new Map(),
    ports: new Map(),
    fdb: new Map(),
    neighbours: new Map(),
    ifbs: new Set(),
    ovsPorts: new Map(),
  };
}
