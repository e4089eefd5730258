import type { Logger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import { WatchedRecords } from '../store/watched-records.js';
import { modelKeys } from './keys.js';
import { capsOf, type CapLookup } from './qos.js';
import type { EndpointRecord, TenantRecord, VpcRecord } from './records.js';

/**
 * The pod map as a live, in-memory view: every tenant (tags, caps), VPC and endpoint record of the
 * cluster, followed from etcd. netd's host view is built on it; tagqueue, dns and lb follow the same one.
 * The last known state stays readable while etcd is away.
 */
export class PodMap {
  readonly tenants: WatchedRecords<TenantRecord>;
  readonly vpcs: WatchedRecords<VpcRecord>;
  readonly endpoints: WatchedRecords<EndpointRecord>;

  constructor(opts: { store: Store; logger?: Logger }) {
    this.tenants = new WatchedRecords({ ...opts, prefix: modelKeys.tenants() });
    this.vpcs = new WatchedRecords({ ...opts, prefix: modelKeys.vpcs() });
    this.endpoints = new WatchedRecords({ ...opts, prefix: modelKeys.endpoints() });
  }

  async start(): Promise<void> {
    await Promise.all([this.tenants.start(), this.vpcs.start(), this.endpoints.start()]);
  }

  async stop(): Promise<void> {
    await Promise.all([this.tenants.stop(), this.vpcs.stop(), this.endpoints.stop()]);
  }

  get synced(): boolean {
    return this.tenants.synced && this.vpcs.synced && this.endpoints.synced;
  }

  onChange(cb: () => void): void {
    this.tenants.onChange(cb);
    this.vpcs.onChange(cb);
    this.endpoints.onChange(cb);
  }

  tenant(name: string): TenantRecord | undefined {
    return this.tenants.get(modelKeys.tenant(name));
  }

  /** The operator's caps over the interfaces this map's records describe (tenancy/qos.ts). */
  caps(): CapLookup {
    return capsOf({
      vpc: (id) => this.vpc(id),
      tenant: (name) => this.tenant(name),
      endpoints: () => this.endpoints.values(),
    });
  }

  vpc(id: string): VpcRecord | undefined {
    return this.vpcs.get(modelKeys.vpc(id));
  }

  endpointsOf(vpc: string): EndpointRecord[] {
    return [...this.endpoints.values()].filter((e) => e.vpc === vpc);
  }
}
