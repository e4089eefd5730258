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
import { linkNames, shortHash } from '../names.js';
import type { InterfacePlan } from './template.js';

/** eth1, a container's interface on its VPC (vxlan mode: a veth whose host end is on the VPC bridge). */

export interface InternalRequest {
  containerId: string;
  ifname: string;
  netnsPath: string;
  vpc: VpcRecord;
  mac?: string;
  ip?: string;
  qos?: QosSpec;
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

export function internalPlan(
  req: InternalRequest,
  self: HostRecord,
  bridgeUp: string | undefined,
): InterfacePlan<EndpointRecord> {
  const { vpc } = req;
  const id = endpointId({ host: self.name, containerId: req.containerId, ifname: req.ifname });
  const hostIf = linkNames.internalPort(id);
  const ipv4 = parseCidr(vpc.cidr).family === 4;
  // On an IPv4 VPC the MAC follows the address (unless the runtime asked for one): the VXLAN
  // devices answer ARP themselves, so a peer never hears a new container's ARP, and a reused
  // address must not leave peers' caches pointing at an old MAC. The veth is created before the
  // address is known, under a provisional MAC replaced before the link comes up.
  const creationMac = (req.mac ?? endpointMac(id)).toLowerCase();
  // The endpoint's own limits, else its VPC's defaults: applied by the ADD, not a later reconcile.
  const qos = req.qos ?? vpc.qos;
  return {
    kind: 'vpc',
    logContext: { tenant: vpc.tenant, vpc: vpc.name },
    id,
    containerId: req.containerId,
    ifname: req.ifname,
    netnsPath: req.netnsPath,
    pool: vpc.name,
    recordKey: modelKeys.endpoint(vpc.name, id),
    hostIf,
    mtu: vpc.mtu ?? self.underlayMtu - VXLAN_OVERHEAD,
    ipv4Only: ipv4,
    creationMac,
    macFor: (ip) => (req.mac === undefined && ipv4 ? macForAddress(vpc.vni, ip) : creationMac),
    ...(bridgeUp !== undefined && { master: bridgeUp }),
    ...(qos && { qos }),
    ...(req.ip !== undefined && { ip: req.ip }),
    record: (a) => ({
      vpc: vpc.name,
      id,
      host: self.name,
      ip: a.ip,
      mac: req.mac === undefined && ipv4 ? macForAddress(vpc.vni, a.ip) : creationMac,
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    }),
    inside: (b, a) => b.addrAdd(a.cidr, req.ifname),
  };
}
