import { invalidInput } from '../core/errors.js';

/**
 * The cluster's model, as every component reads it from etcd (JSON values; keys in keys.ts):
 * tenants, their VPCs, the hosts, and the endpoint records — "the pod map" that netd writes and
 * tagqueue, dns and lb follow. Pure types and identity rules; no I/O.
 */

export type ModeName = 'vxlan' | 'vlan' | 'routed';

export interface TenantRecord {
  name: string;
  /** 16-bit tenant tag (tagqueue marks every packet with it). */
  tag: number;
  /** SHA-256 of the tenant's bearer token (the token itself is never stored). */
  tokenHash: string;
  /** The operator's caps (the tenant's plan): the most its interfaces may carry, whatever it asks. */
  caps?: TenantCaps;
}

/** Per-tenant maximum rates, per interface kind: eth0 (external) and eth1 (its VPCs). */
export interface TenantCaps {
  eth0?: QosSpec;
  eth1?: QosSpec;
}

/**
 * Rate limits of one container interface, in bits per second. "ingress" is traffic into the
 * container and "egress" traffic out of it, as in the CNI bandwidth capability.
 */
export interface QosSpec {
  ingressBps?: number;
  egressBps?: number;
}

export interface VpcRecord {
  /** The VPC's id, "<tenant>.<name>": unique in the cluster, and the name of its address pool. */
  name: string;
  tenant: string;
  mode: ModeName;
  cidr: string;
  /**
   * VXLAN network identifier (vxlan mode), 1..16777215; every VPC holds one: it also numbers the
   * VPC on each host (routed tables, MACs).
   */
  vni: number;
  /** vlan mode: the VPC's 802.1Q VLAN id, unique on its physical network. */
  vlan?: number;
  /** vlan mode: the physical network (a trunk every serving host is plugged into) the VLAN is on. */
  physnet?: string;
  /** Overlay MTU; default: underlay MTU - 50 (VXLAN overhead). */
  mtu?: number;
  /** Default rate limits of the VPC's interfaces. */
  qos?: QosSpec;
}

export interface HostRecord {
  name: string;
  underlayIp: string;
  /** The host's IPv6 underlay address on the same interface: IPv6 routed VPCs route to it. */
  underlayIp6?: string;
  /** The interface carrying the underlay. */
  uplink: string;
  underlayMtu: number;
  /** The modes this host's netd builds (absent in records of older daemons: vxlan and routed). */
  modes?: ModeName[];
  /** vlan mode: the host's trunk, when it has one and can tag (see netd/vlan-host.ts). */
  vlan?: VlanCapability;
}

/** How a host serves vlan VPCs. */
export interface VlanCapability {
  /** The physical network its trunk is plugged into. */
  physnet: string;
  /** Open vSwitch's datapath: the kernel's ('system') or userspace ('netdev', no kernel module). */
  datapath: 'system' | 'netdev';
  /** The trunk's MTU: a vlan VPC's default MTU (the tag is carried beside it). */
  mtu: number;
}

/** Names of physical networks (vlan mode): like a VPC name. */
export const PHYSNET_RE = /^[a-z][a-z0-9-]{0,30}$/;

/** What both kinds of endpoint record share: one container interface on one host. */
export interface AttachmentRecord {
  /** Endpoint id (endpointId()): host, container and interface. Hashed into link names. */
  id: string;
  host: string;
  ip: string;
  mac: string;
  /** Host-side veth name. */
  hostIf: string;
  /** The CNI attachment (absent in records made by other tools). */
  containerId?: string;
  ifname?: string;
  netns?: string;
  /** Rate limits of this interface (for eth1: the VPC's defaults when absent). */
  qos?: QosSpec;
}

/** One container interface attached to a VPC (eth1): the pod map's entry. */
export interface EndpointRecord extends AttachmentRecord {
  vpc: string;
}

/** A container's external interface (eth0), from the external pool; recorded per host. */
export interface ExternalEndpointRecord extends AttachmentRecord {
  pool: string;
  containerId: string;
  ifname: string;
  netns: string;
}

// ---- names and ids ---------------------------------------------------------------------------

const TENANT_NAME = '[a-z][a-z0-9-]{0,30}';
export const TENANT_NAME_RE = new RegExp(`^${TENANT_NAME}$`);
/** A VPC's name within its tenant. */
export const VPC_NAME_RE = TENANT_NAME_RE;
/** A VPC as a tenant may address it: its name ("web") or its id ("acme.web"). */
export const VPC_REF_PATTERN = `^${TENANT_NAME}(\\.${TENANT_NAME})?$`;
/** Host names become key segments and part of endpoint ids: DNS-label-like, no ':' or '/'. */
export const HOST_NAME_RE = /^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/;

export function checkHostName(name: unknown): string {
  if (typeof name !== 'string' || !HOST_NAME_RE.test(name)) {
    throw invalidInput(`host name "${String(name)}" must be 1-63 of a-z 0-9 . - (starting and ending alphanumeric)`);
  }
  return name;
}

export function vpcId(tenant: string, name: string): string {
  return `${tenant}.${name}`;
}

/**
 * The VPC id a tenant means by `ref`: its own VPC by name ("web") or by the id the API returned
 * ("acme.web"). Another tenant's id resolves to that id, which the caller then does not find
 * among the tenant's VPCs: the answer is the same 404 as for a VPC that does not exist.
 */
export function resolveVpcRef(tenant: string, ref: string): string {
  if (!new RegExp(VPC_REF_PATTERN).test(ref)) throw invalidInput(`"${ref}" is not a VPC name or id`);
  return ref.includes('.') ? ref : vpcId(tenant, ref);
}

/** The VPC's name within its tenant ("web" for "acme.web"). */
export function vpcShortName(v: Pick<VpcRecord, 'name' | 'tenant'>): string {
  return v.name.startsWith(`${v.tenant}.`) ? v.name.slice(v.tenant.length + 1) : v.name;
}

/**
 * An endpoint's identity: the host, the runtime's container id and the interface. The host is
 * part of it because container ids are only unique per runtime: two hosts may be given the same
 * one, and they must not share a record or an address. Also the ipam handle of its address.
 */
export interface EndpointRef {
  host: string;
  containerId: string;
  ifname: string;
}

export function endpointId(ref: EndpointRef): string {
  return `${ref.host}:${ref.containerId}:${ref.ifname}`;
}

/** Parses an id made by endpointId(); undefined for anything else (e.g. records of other tools). */
export function parseEndpointId(id: string): EndpointRef | undefined {
  const parts = id.split(':');
  if (parts.length !== 3 || parts.some((p) => p === '')) return undefined;
  const [host, containerId, ifname] = parts as [string, string, string];
  return { host, containerId, ifname };
}
