import type { CapLookup } from '../tenancy/qos.js';
import type { EndpointRecord, HostRecord, VpcRecord } from '../tenancy/records.js';

/** Everything one host needs to render its data path (a snapshot of its HostView). Pure data. */
export interface HostSnapshot {
  self: HostRecord;
  hosts: ReadonlyMap<string, HostRecord>;
  /** By VPC id. */
  vpcs: ReadonlyMap<string, VpcRecord>;
  endpoints: readonly EndpointRecord[];
  /** Address blocks and the host that claimed each (ipam block affinity): routed mode's routes. */
  blocks?: readonly BlockAffinity[];
  /** The operator's caps on the tenants' interfaces (none: no caps). */
  caps?: CapLookup;
}

export interface BlockAffinity {
  host: string;
  /** The ipam pool: a VPC's id. */
  pool: string;
  cidr: string;
}
