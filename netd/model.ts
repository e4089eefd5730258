/**
 * The records netd reconciles from (as stored in etcd under /netd/v1/), reduced to what the data
 * path needs. Pure types.
 */

export type ModeName = 'vxlan' | 'vlan' | 'routed';

export interface VpcRecord {
  name: string;
  tenant: string;
  mode: ModeName;
  cidr: string;
  /** VXLAN network identifier (vxlan mode), 1..16777215. */
  vni: number;
  /** Overlay MTU; default: underlay MTU - 50 (VXLAN overhead). */
  mtu?: number;
  /** Default rate limits of the VPC's interfaces. */
  qos?: QosSpec;
}

export interface HostRecord {
  name: string;
  underlayIp: string;
  /** The interface carrying the underlay. */
  uplink: string;
  underlayMtu: number;
}

/** One container interface attached to a VPC (eth1), as recorded in etcd. */
export interface EndpointRecord {
  vpc: string;
  /** Stable id: container id + interface, hashed into link names. */
  id: string;
  host: string;
  ip: string;
  mac: string;
  /** Host-side veth name. */
  hostIf: string;
  /** The CNI attachment (written by netd's ADD; absent in records made by other tools). */
  containerId?: string;
  ifname?: string;
  netns?: string;
  /** Rate limits of this interface; the VPC's defaults when absent. */
  qos?: QosSpec;
}

/**
 * Rate limits of one container interface, in bits per second. "ingress" is traffic into the
 * container and "egress" traffic out of it, as in the CNI bandwidth capability.
 */
export interface QosSpec {
  ingressBps?: number;
  egressBps?: number;
}

/** Everything one host needs to converge its data path. */
export interface HostView {
  self: HostRecord;
  hosts: ReadonlyMap<string, HostRecord>;
  vpcs: ReadonlyMap<string, VpcRecord>;
  endpoints: readonly EndpointRecord[];
}
