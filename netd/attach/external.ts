import { IpBatch, type IpClient } from '../../sys/ip.js';
import { SysctlClient } from '../../sys/sysctl.js';
import type { CommandRunner, NetnsTarget } from '../../sys/runner.js';
import { modelKeys } from '../../tenancy/keys.js';
import { endpointId, type ExternalEndpointRecord, type HostRecord, type QosSpec } from '../../tenancy/records.js';
import type { ExternalMode } from '../external.js';
import { LINK_LOCAL_GATEWAY, linkNames } from '../names.js';
import { proxyClaim } from '../port-claims.js';
import { endpointMac } from './internal.js';
import type { InterfacePlan } from './template.js';
import { capQos } from '../../tenancy/qos.js';
import type { PortGuard } from '../../tagqueue/port-guard.js';

/**
 * eth0, the external interface: an address from the external pool as a /32, a default route via a
 * link-local gateway that the host answers by proxy ARP (Calico's trick: no per-container gateway
 * address, no bridge), and a /32 host route to the container. In `routed` mode the host also
 * answers ARP for the container's address on its uplink (see ../external.ts for how the pool
 * leaves the host). Nothing of a VPC is reachable this way: VPC bridges carry no address.
 */

export { LINK_LOCAL_GATEWAY };

export interface ExternalRequest {
  containerId: string;
  ifname: string;
  netnsPath: string;
  mac?: string;
  ip?: string;
  qos?: QosSpec;
  /** The eth0 cap of the container's tenants, when known at ADD (the reconciler applies it later). */
  cap?: QosSpec;
}

export function externalPlan(
  req: ExternalRequest,
  ctx: {
    self: HostRecord;
    pool: string;
    mode: ExternalMode;
    runner: CommandRunner;
    hostNetns?: NetnsTarget;
    hostIp: IpClient;
    /** tagqueue's table (none in tests that leave it out). */
    ports?: PortGuard;
  },
): InterfacePlan<ExternalEndpointRecord> {
  const { self } = ctx;
  const id = endpointId({ host: self.name, containerId: req.containerId, ifname: req.ifname });
  const hostIf = linkNames.externalPort(id);
  const mac = (req.mac ?? endpointMac(id)).toLowerCase();
  const routed = ctx.mode === 'routed';
  const applied = capQos(req.qos, req.cap);
  return {
    kind: 'external',
    logContext: { pool: ctx.pool },
    id,
    containerId: req.containerId,
    ifname: req.ifname,
    netnsPath: req.netnsPath,
    pool: ctx.pool,
    recordKey: modelKeys.external(self.name, id),
    hostIf,
    mtu: self.underlayMtu,
    // eth0 is IPv4 (a /32 behind the IPv4 link-local gateway).
    noLinkLocal: true,
    creationMac: mac,
    macFor: () => mac,
    ...(applied && { qos: applied }),
    ...(req.ip !== undefined && { ip: req.ip }),
    record: (a) => ({
      id,
      host: self.name,
      pool: ctx.pool,
      ip: a.ip,
      mac,
      hostIf,
      containerId: req.containerId,
      ifname: req.ifname,
      netns: req.netnsPath,
      ...(req.qos && { qos: req.qos }),
    }),
    // The host answers ARP for the link-local gateway on this port (an explicit proxy entry).
    onHost: (b) => b.add('neigh', 'replace', 'proxy', LINK_LOCAL_GATEWAY, 'dev', hostIf),
    onHostWithAddress: (b, a) => {
      b.routeReplace(`${a.ip}/32`, { dev: hostIf, scope: 'link' });
      if (routed) b.proxyNeighReplace(a.ip, self.uplink);
    },
    onAddress: (a, hold, undo) => {
      if (!routed) return;
      // The uplink's entry for this address is this ADD's until it answers (not an orphan).
      hold(proxyClaim(a.ip));
      undo.push('remove uplink proxy entry', () =>
        ctx.hostIp.applyForgivingMissing(new IpBatch().proxyNeighDel(a.ip, self.uplink)),
      );
    },
    inside: (b, a) =>
      b
        .addrAdd(`${a.ip}/32`, req.ifname)
        .routeReplace(`${LINK_LOCAL_GATEWAY}/32`, { dev: req.ifname, scope: 'link' })
        .routeReplace('default', { via: LINK_LOCAL_GATEWAY, dev: req.ifname, onlink: true }),
    // The host answers the container's ARP for the gateway at once (proxy replies are otherwise
    // delayed up to proxy_delay, 0.8 s: a slow first packet). Calico does the same on its ports.
    // Strict reverse-path filtering too: the container sends only with its own address (else one
    // could borrow a routed VPC's source and be routed by that VPC's table); and no IPv6 on the
    // port (eth0 is IPv4: a forged IPv6 source would otherwise be routed by an IPv6 VPC's table).
    // And tagqueue's elements: its own MAC and address, the host and the infrastructure out of
    // reach. Before the container's side comes up.
    secure: async (a) => {
      await Promise.all([
        new SysctlClient(ctx.runner, ctx.hostNetns).setAll([
          [`net.ipv4.neigh.${hostIf}.proxy_delay`, 0],
          [`net.ipv4.conf.${hostIf}.rp_filter`, 1],
          [`net.ipv6.conf.${hostIf}.disable_ipv6`, 1],
        ]),
        ctx.ports?.admit({ port: hostIf, kind: 'external', ip: a.ip, mac }),
      ]);
    },
  };
}
