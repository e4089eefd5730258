import { invalidInput } from '../../core/errors.js';
import type { HostSnapshot } from '../model.js';
import { emptyDesired, type DesiredL2, type NetworkMode } from './mode.js';
import { linkNames } from '../names.js';

/**
 * vlan mode: each local container of a vlan VPC is an access port of the VPC's VLAN on the host's
 * Open vSwitch bridge, whose trunk carries every VLAN to the fabric. There is no per-VPC device
 * and nothing per remote endpoint: the fabric and OVS learn MACs per VLAN, so a host's desired
 * state is only its own ports (on no Linux bridge) and their tags.
 *
 * `physnet()` is the physical network the host's trunk is on now (undefined while vlan mode is not
 * set up). Only VPCs on it get OVS ports: a tag means something on one physical network only, so a
 * port of a VPC on another (the host's trunk moved) leaves the bridge rather than joining whatever
 * that tag is here. The links themselves are always kept (their containers' records stand).
 * `shapes()`: each port may have a shaper veth beside it (OVS's userspace datapath; vlan-host.ts),
 * kept with it (listed as a port: the reconciler keeps it, and never creates one).
 */
export function createVlanMode(physnet: () => string | undefined, shapes: () => boolean = () => false): NetworkMode {
  return {
    name: 'vlan',
    render(view: HostSnapshot): DesiredL2 {
      const desired = emptyDesired();
      const here = physnet();
      for (const e of view.endpoints) {
        if (e.host !== view.self.name) continue;
        const vpc = view.vpcs.get(e.vpc);
        if (!vpc || vpc.mode !== 'vlan') continue;
        if (vpc.vlan === undefined || !Number.isInteger(vpc.vlan) || vpc.vlan < 1 || vpc.vlan > 4094)
          throw invalidInput(`VPC ${vpc.name}: VLAN id ${vpc.vlan} outside 1..4094`);
        desired.ports.set(e.hostIf, '');
        if (shapes()) desired.ports.set(linkNames.ifbFor(e.hostIf), '');
        if (here !== undefined && vpc.physnet === here) desired.ovsPorts.set(e.hostIf, vpc.vlan);
      }
      return desired;
    },
  };
}
