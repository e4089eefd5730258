import type { EndpointRecord, HostRecord, VpcRecord } from '../tenancy/records.js';

/** Everything one host needs to render its data path (a snapshot of its HostView). Pure data. */
export interface HostSnapshot {
  self: HostRecord;
  hosts: ReadonlyMap<string, HostRecord>;
  /** By VPC id. */
  vpcs: ReadonlyMap<string, VpcRecord>;
  endpoints: readonly EndpointRecord[];
}
