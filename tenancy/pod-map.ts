import type { Logger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import { WatchedRecords } from '../store/watched-records.js';
import { modelKeys } from './keys.js';
import type { EndpointRecord, VpcRecord } from './records.js';

/**
 * The pod map as a live, in-memory view: every VPC and every endpoint record of the cluster,
 * followed from etcd. netd's host view is built on it; tagqueue, dns and lb follow the same one.
 * The last known state stays readable while etcd is away.
 */
export class PodMap {
  readonly vpcs: WatchedRecords<VpcRecord>;
  readonly endpoints: WatchedRecords<EndpointRecord>;

  constructor(opts: { store: Store; logger?: Logger }) {
    this.vpcs = new WatchedRecords({ ...opts, prefix: modelKeys.vpcs() });
    this.endpoints = new WatchedRecords({ ...opts, prefix: modelKeys.endpoints() });
  }

  async start(): Promise<void> {
    await Promise.all([this.vpcs.start(), this.endpoints.start()]);
  }

  async stop(): Promise<void> {
    await Promise.all([this.vpcs.stop(), this.endpoints.stop()]);
  }

  get synced(): boolean {
    return this.vpcs.synced && this.endpoints.synced;
  }

  onChange(cb: () => void): void {
    this.vpcs.onChange(cb);
    this.endpoints.onChange(cb);
  }

  vpc(id: string): VpcRecord | undefined {
    return this.vpcs.get(modelKeys.vpc(id));
  }

  endpointsOf(vpc: string): EndpointRecord[] {
    return [...this.endpoints.values()].filter((e) => e.vpc === vpc);
  }
}
