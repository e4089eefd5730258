import { invalidInput } from '../../core/errors.js';
import { parseCidr } from '../../core/cidr.js';
import type { HostSnapshot } from '../model.js';
import { linkNames } from '../names.js';
import { emptyDesired, fdbKey, neighKey, type DesiredL2, type NetworkMode } from './mode.js';

/** VXLAN overhead on an IPv4 underlay: outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14. */
export const VXLAN_OVERHEAD = 50;
const ZERO_MAC = '00:00:00:00:00:00';

/**
 * vxlan mode: per VPC present on this host, a bridge and a VXLAN device (VNI per VPC, learning off,
 * gbp on so tagqueue can carry the tenant tag). Remote endpoints become static FDB entries and
 * neighbour entries on the VXLAN device, which answers ARP for them itself (proxy: no ARP request
 * crosses the underlay); remote hosts that have the VPC form its flood list (for broadcast). The
 * bridge has no address: a VPC's CIDR never enters the host's routing table, so VPCs may overlap.
 */
export const vxlanMode: NetworkMode = {
  name: 'vxlan',
  render(view: HostSnapshot): DesiredL2 {
    const desired = emptyDesired();
    const self = view.self.name;
    const local = view.endpoints.filter((e) => e.host === self);
    const localVpcs = new Set(local.map((e) => e.vpc));
    for (const vpcName of localVpcs) {
      const vpc = view.vpcs.get(vpcName);
      if (!vpc || vpc.mode !== 'vxlan') continue;
      if (!Number.isInteger(vpc.vni) || vpc.vni < 1 || vpc.vni > 0xffffff)
        throw invalidInput(`VPC ${vpc.name}: VNI ${vpc.vni} outside 1..16777215`);
      const mtu = vpc.mtu ?? view.self.underlayMtu - VXLAN_OVERHEAD;
      const bridge = linkNames.bridge(vpc.vni);
      const vxlan = linkNames.vxlan(vpc.vni);
      desired.bridges.set(bridge, { name: bridge, mtu });
      // ARP suppression on IPv4 VPCs (their MACs follow addresses: attach.ts); IPv6 VPCs flood ND.
      const suppress = parseCidr(vpc.cidr).family === 4;
      desired.vxlans.set(vxlan, {
        name: vxlan,
        vni: vpc.vni,
        local: view.self.underlayIp,
        dev: view.self.uplink,
        mtu,
        master: bridge,
        proxy: suppress,
      });
      for (const e of local.filter((x) => x.vpc === vpcName)) desired.ports.set(e.hostIf, bridge);
      for (const e of view.endpoints) {
        if (e.vpc !== vpcName || e.host === self) continue;
        const remote = view.hosts.get(e.host);
        if (!remote) continue; // host gone: its endpoints are stale and get no entries
        for (const f of [
          { mac: ZERO_MAC, dev: vxlan, dst: remote.underlayIp },
          { mac: e.mac.toLowerCase(), dev: vxlan, dst: remote.underlayIp },
        ]) {
          desired.fdb.set(fdbKey(f), f);
        }
        const n = { ip: e.ip, mac: e.mac.toLowerCase(), dev: vxlan };
        if (suppress) desired.neighbours.set(neighKey(n), n);
      }
    }
    return desired;
  },
};
