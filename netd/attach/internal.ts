import { parseCidr } from '../../core/cidr.js';
import { modelKeys } from '../../tenancy/keys.js';
import {
  endpointId,
  type EndpointRecord,
  type HostRecord,
  type QosSpec,
  type VpcRecord,
} from '../../tenancy/records.js';
import { VXLAN_OVERHEAD } from '../modes/vxlan.js';
import { ROUTED_PROTO, routedFamily, routedTable } from '../modes/routed.js';
import type { SourceGuard } from '../source-guard.js';
import type { SysctlClient } from '../../sys/sysctl.js';
import { linkNames, shortHash } from '../names.js';
import type { VlanHost } from '../vlan-host.js';
import type { InterfacePlan } from './template.js';
import { capQos } from '../../tenancy/qos.js';
import type { PortGuard } from '../../tagqueue/port-guard.js';

/** eth1, a container's interface on its VPC (vxlan mode: a veth whose host end is on the VPC bridge). */

export interface InternalRequest {
  containerId: string;
  ifname: string;
  netnsPath: string;
  vpc: VpcRecord;
  mac?: string;
  ip?: string;
  qos?: QosSpec;
  /** The tenant's eth1 cap: the limits applied are lowered to it (the record keeps what was asked). */
  cap?: QosSpec;
}

/** 02:<VNI's low byte>:<the four address bytes>: one MAC per address in a VPC (locally administered). */
export function macForAddress(vni: number, ip: string): string {
  const bytes = [vni & 0xff, ...ip.split('.').map(Number)];
  return `02:${bytes.map((b) => b.toString(16).padStart(2, '0')).join(':')}`;
}

/** A stable locally administered MAC per endpoint, so a retried ADD gets the same one. */
export function endpointMac(id: string): string {
  const h = shortHash(`mac:${id}`);
  return `02:${h.slice(0, 2)}:${h.slice(2, 4)}:${h.slice(4, 6)}:${h.slice(6, 8)}:${h.slice(8, 10)}`;
}

/** What every eth1 plan shares, whatever its VPC's mode; `macOf` gives the MAC it ends with. */
function vpcPlan(
  req: InternalRequest,
  self: HostRecord,
  id: string,
  macOf: (ip: string) => string,
): Omit<InterfacePlan<EndpointRecord>, 'mtu' | 'noLinkLocal' | 'creationMac' | 'inside'> {
  const { vpc } = req;
  const hostIf = linkNames.internalPort(id);
  // The endpoint's own limits, else its VPC's defaults: applied by the ADD, not a later reconcile.
  const qos = capQos(req.qos ?? vpc.qos, req.cap);
  return {
    kind: 'vpc',
    logContext: { tenant: vpc.tenant, vpc: vpc.name, mode: vpc.mode },
    id,
    containerId: req.containerId,
    ifname: req.ifname,
    netnsPath: req.netnsPath,
    pool: vpc.name,
    recordKey: modelKeys.endpoint(vpc.name, id),
    hostIf,
    macFor: macOf,
    ...(qos && { qos }),
    ...(req.ip !== undefined && { ip: req.ip }),
    record: (a) => ({
      vpc: vpc.name,
      id,
      host: self.name,
      ip: a.ip,
      mac: macOf(a.ip),
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    }),
  };
}

function vpcEndpointId(req: InternalRequest, self: HostRecord): string {
  return endpointId({ host: self.name, containerId: req.containerId, ifname: req.ifname });
}

export function internalPlan(
  req: InternalRequest,
  self: HostRecord,
  bridgeUp: string | undefined,
): InterfacePlan<EndpointRecord> {
  const { vpc } = req;
  const id = vpcEndpointId(req, self);
  const ipv4 = parseCidr(vpc.cidr).family === 4;
  // On an IPv4 VPC the MAC follows the address (unless the runtime asked for one): the VXLAN
  // devices answer ARP themselves, so a peer never hears a new container's ARP, and a reused
  // address must not leave peers' caches pointing at an old MAC. The veth is created before the
  // address is known, under a provisional MAC replaced before the link comes up.
  const creationMac = (req.mac ?? endpointMac(id)).toLowerCase();
  return {
    ...vpcPlan(req, self, id, (ip) => (req.mac === undefined && ipv4 ? macForAddress(vpc.vni, ip) : creationMac)),
    mtu: vpc.mtu ?? self.underlayMtu - VXLAN_OVERHEAD,
    noLinkLocal: ipv4,
    creationMac,
    ...(bridgeUp !== undefined && { master: bridgeUp }),
    inside: (b, a) => b.addrAdd(a.cidr, req.ifname),
  };
}

/**
 * The shared part of a plan whose MAC is the endpoint's own for good (the runtime's, else a stable
 * one per endpoint): routed and vlan, where nothing answers ARP from the address.
 */
function ownMacPlan(req: InternalRequest, self: HostRecord) {
  const id = vpcEndpointId(req, self);
  const mac = (req.mac ?? endpointMac(id)).toLowerCase();
  return { base: vpcPlan(req, self, id, () => mac), mac };
}

/**
 * eth1 on a routed VPC: the address as a /32 (/128), the VPC's CIDR via a link-local gateway (IPv4:
 * a host address in the VPC's table, the host answers ARP for it; IPv6: fe80::1 on the port
 * itself), and on the host a route to the container in the VPC's table. The container sends only
 * with its own address: strict reverse-path filtering on the port (IPv4), the source guard (IPv6).
 * The VPC's rules and the rest of its table are the reconciler's (wireRouted, before the answer).
 */
export function routedInternalPlan(
  req: InternalRequest,
  self: HostRecord,
  deps: { hostSysctl: SysctlClient; guard: SourceGuard; ports?: PortGuard },
): InterfacePlan<EndpointRecord> {
  const { vpc } = req;
  const { base, mac } = ownMacPlan(req, self);
  const { family, gateway, hostPrefix } = routedFamily(vpc.cidr);
  const v6 = family === 6;
  return {
    ...base,
    // No encapsulation: the underlay's MTU.
    mtu: vpc.mtu ?? self.underlayMtu,
    // IPv6 too: the container needs no link-local address (its neighbour solicitations for the
    // gateway come from its own address), and none means no duplicate address detection.
    noLinkLocal: true,
    creationMac: mac,
    ...(v6 && { onHost: (b) => b.addrAdd(`${gateway}/64`, base.hostIf, { nodad: true }) }),
    onHostWithAddress: (b, a) =>
      b.routeReplace(`${a.ip}/${hostPrefix}`, {
        dev: base.hostIf,
        ...(!v6 && { scope: 'link' }),
        table: routedTable(vpc),
        proto: ROUTED_PROTO,
      }),
    inside: (b, a) =>
      b
        .addrAdd(`${a.ip}/${hostPrefix}`, req.ifname, { nodad: v6 })
        .routeReplace(vpc.cidr, { via: gateway, dev: req.ifname, ...(!v6 && { onlink: true }) }),
    // No packet whose source is not the container's, before the container can send: strict
    // reverse-path filtering for IPv4 either way (an IPv6 container may still forge IPv4), and for
    // IPv6 the guard's elements, or on an IPv4 port no IPv6 at all.
    secure: async (a) => {
      await Promise.all([
        deps.hostSysctl.setAll([
          [`net.ipv4.conf.${base.hostIf}.rp_filter`, 1],
          ...(v6 ? [] : ([[`net.ipv6.conf.${base.hostIf}.disable_ipv6`, 1]] as const)),
        ]),
        v6 ? deps.guard.add({ port: base.hostIf, ip: a.ip }) : undefined,
        deps.ports?.admit({ port: base.hostIf, kind: 'routed', ip: a.ip, mac }),
      ]);
    },
  };
}

/**
 * eth1 on a vlan VPC: the VPC's CIDR on the container's interface (L2 with its peers on every
 * host, through the trunk), MTU the trunk's (the tag rides beside it), and the host end an access
 * port of the VPC's VLAN on the Open vSwitch bridge (on the userspace datapath through its shaper
 * pair), plugged as the ADD's last step. The MAC is the
 * endpoint's own (the fabric learns it; nothing answers ARP on the container's behalf).
 */
export function vlanInternalPlan(
  req: InternalRequest,
  self: HostRecord,
  vlanHost: VlanHost,
  tag: number,
): InterfacePlan<EndpointRecord> {
  const { vpc } = req;
  const { base, mac } = ownMacPlan(req, self);
  const mtu = vpc.mtu ?? vlanHost.capability?.mtu ?? self.underlayMtu;
  // On the userspace datapath the port reaches OVS through a shaper pair made with it (vlan-host.ts).
  const shaper = vlanHost.shapes;
  // Whether this ADD created the pair (a retry that found the attachment wired did not: plug looks).
  let shaperMade = false;
  return {
    ...base,
    mtu,
    noLinkLocal: parseCidr(vpc.cidr).family === 4,
    creationMac: mac,
    ...(shaper && {
      shaper: true,
      onHost: (b) => {
        vlanHost.shaperLines(b, base.hostIf, mtu);
        shaperMade = true;
      },
    }),
    inside: (b, a) => b.addrAdd(a.cidr, req.ifname),
    finish: () => vlanHost.plug(base.hostIf, tag, { netnsPath: req.netnsPath, ifname: req.ifname }, { shaperMade }),
  };
}
