import { invalidInput } from '../core/errors.js';
import { formatCidr, parseCidr } from '../core/cidr.js';
import type { Store } from '../store/types.js';
import { getJson } from '../store/json.js';
import { modelKeys } from './keys.js';
import { PHYSNET_RE } from './records.js';

/**
 * The operator's network policy, one record in etcd for the whole cluster (every netd serving the
 * API reads the same one, so no API endpoint is laxer than another): where routed VPCs may be, and
 * which VLAN ids each physical network offers. Changing it applies to VPCs created afterwards.
 */
export interface NetworkPolicy {
  /** Routed VPC CIDRs must lie within one of these (anywhere not refused otherwise when unset). */
  routedRanges?: string[];
  /** VLAN ids per physical network (default when unset: physnet0, 100..4094). */
  vlanRanges?: Array<{ physnet: string; min: number; max: number }>;
  /**
   * Infrastructure no container's eth0 may reach, besides every host's underlay addresses and the
   * etcd members, which are always in it (tagqueue): management networks, storage nodes, ...
   */
  infraRanges?: string[];
  /** What containers may reach of the hosts and the infrastructure nonetheless (e.g. a DNS forwarder). */
  infraAllow?: Array<{ cidr: string; proto: 'tcp' | 'udp'; port: number }>;
}

export function checkPolicy(p: NetworkPolicy): NetworkPolicy {
  const out: NetworkPolicy = {};
  if (p.routedRanges !== undefined) out.routedRanges = p.routedRanges.map((c) => formatCidr(parseCidr(c)));
  if (p.vlanRanges !== undefined) {
    const seen = new Set<string>();
    out.vlanRanges = p.vlanRanges.map((r) => {
      if (!PHYSNET_RE.test(r.physnet)) throw invalidInput(`physnet "${r.physnet}" must match ${PHYSNET_RE}`);
      if (seen.has(r.physnet)) throw invalidInput(`physnet ${r.physnet} has two VLAN ranges`);
      seen.add(r.physnet);
      if (!Number.isInteger(r.min) || !Number.isInteger(r.max) || r.min < 1 || r.max > 4094 || r.min > r.max)
        throw invalidInput(`VLAN range of ${r.physnet} must have 1 <= min <= max <= 4094`);
      return { physnet: r.physnet, min: r.min, max: r.max };
    });
  }
  if (p.infraRanges !== undefined) out.infraRanges = p.infraRanges.map((c) => formatCidr(parseCidr(c)));
  if (p.infraAllow !== undefined) {
    out.infraAllow = p.infraAllow.map((r) => {
      const c = parseCidr(r.cidr);
      if (c.family !== 4) throw invalidInput(`infraAllow ${r.cidr}: IPv4 only (eth0 is IPv4)`);
      if (r.proto !== 'tcp' && r.proto !== 'udp') throw invalidInput(`infraAllow proto must be tcp or udp`);
      if (!Number.isInteger(r.port) || r.port < 1 || r.port > 65535)
        throw invalidInput(`infraAllow port must be 1..65535`);
      return { cidr: formatCidr(c), proto: r.proto, port: r.port };
    });
  }
  return out;
}

export class PolicyDirectory {
  constructor(private readonly store: Store) {}

  async get(): Promise<NetworkPolicy> {
    return (await getJson<NetworkPolicy>(this.store, modelKeys.policy()))?.value ?? {};
  }

  /** Replaces the policy (validated first; nothing is written when it is not valid). */
  async set(policy: NetworkPolicy): Promise<NetworkPolicy> {
    const checked = checkPolicy(policy);
    await this.store.put(modelKeys.policy(), JSON.stringify(checked));
    return checked;
  }
}
