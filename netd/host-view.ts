import type { Logger } from '../sys/log.js';
import type { Store } from '../store/types.js';
import { WatchedRecords } from '../store/watched-records.js';
import { PodMap } from '../tenancy/pod-map.js';
import { modelKeys } from '../tenancy/keys.js';
import type {
  AttachmentRecord,
  EndpointRecord,
  ExternalEndpointRecord,
  HostRecord,
  VpcRecord,
} from '../tenancy/records.js';
import { ipamKeys } from '../ipam/keys.js';
import type { NetworkPolicy } from '../tenancy/policy.js';
import type { BlockAffinity, HostSnapshot } from './model.js';

/**
 * The cluster as one host's netd sees it, fed by etcd watches: the pod map (VPCs, endpoints), the
 * registered hosts, and this host's external (eth0) endpoints. The last known state stays
 * readable while etcd is away; `synced` says whether it is current. Records this daemon writes
 * enter the view at once (note), so their watch echoes change nothing.
 */
export class HostView {
  readonly pods: PodMap;
  readonly hosts: WatchedRecords<HostRecord>;
  readonly externals: WatchedRecords<ExternalEndpointRecord>;
  /** Which host claimed which address block (routed mode routes blocks to their hosts). */
  readonly blocks: WatchedRecords<BlockAffinity>;
  /** The operator's network policy (one record; tagqueue reads its infrastructure and allow-list). */
  readonly policy: WatchedRecords<NetworkPolicy>;

  private readonly ownBlocksMatter: boolean;

  /** `ownBlocksMatter`: this host's own block claims wake listeners too (it announces them: BGP). */
  constructor(
    readonly self: HostRecord,
    deps: { store: Store; logger?: Logger; ownBlocksMatter?: boolean },
  ) {
    this.ownBlocksMatter = deps.ownBlocksMatter ?? false;
    this.pods = new PodMap(deps);
    this.hosts = new WatchedRecords({ ...deps, prefix: modelKeys.hosts() });
    this.externals = new WatchedRecords({ ...deps, prefix: modelKeys.hostExternals(self.name) });
    this.policy = new WatchedRecords({ ...deps, prefix: modelKeys.policy() });
    this.blocks = new WatchedRecords({
      ...deps,
      prefix: ipamKeys.allAffinities(),
      parse: (_v, key) => affinityOf(key),
    });
  }

  /** Every watched part of the view. */
  private parts(): Array<{ start(): Promise<void>; stop(): Promise<void>; readonly synced: boolean }> {
    return [this.pods, this.hosts, this.externals, this.blocks, this.policy];
  }

  async start(): Promise<void> {
    await Promise.all(this.parts().map((p) => p.start()));
  }

  async stop(): Promise<void> {
    await Promise.all(this.parts().map((p) => p.stop()));
  }

  get synced(): boolean {
    return this.parts().every((p) => p.synced);
  }

  onChange(cb: () => void): void {
    this.pods.onChange(cb);
    this.hosts.onChange(cb);
    this.externals.onChange(cb);
    this.policy.onChange(cb);
    // Blocks matter only as routes to other hosts' blocks of routed VPCs: neither a vxlan-only
    // cluster nor this host's own claims (its ADDs) wake the reconciler.
    let remoteRouted = this.remoteRoutedBlocks();
    this.blocks.onChange(() => {
      const now = this.remoteRoutedBlocks();
      if (now === remoteRouted) return;
      remoteRouted = now;
      cb();
    });
  }

  /** Other hosts' blocks of routed VPCs, as one comparable string. */
  private remoteRoutedBlocks(): string {
    const routed = new Set([...this.pods.vpcs.values()].filter((v) => v.mode === 'routed').map((v) => v.name));
    if (routed.size === 0) return '';
    return [...this.blocks.values()]
      .filter((b) => (this.ownBlocksMatter || b.host !== this.self.name) && routed.has(b.pool))
      .map((b) => `${b.host}|${b.pool}|${b.cidr}`)
      .sort()
      .join(',');
  }

  /** The operator's network policy as last seen (empty when none was set). */
  networkPolicy(): NetworkPolicy {
    return this.policy.get(modelKeys.policy()) ?? {};
  }

  vpc(id: string): VpcRecord | undefined {
    return this.pods.vpc(id);
  }

  localEndpoints(): EndpointRecord[] {
    return [...this.pods.endpoints.values()].filter((e) => e.host === this.self.name);
  }

  localExternals(): ExternalEndpointRecord[] {
    return [...this.externals.values()];
  }

  /**
   * A record (endpoint or external) as etcd holds it now, answered from memory when the view is
   * in sync (null: there is none); undefined when only etcd can tell. Saves a read on every ADD.
   */
  current(key: string): AttachmentRecord | null | undefined {
    if (!this.synced) return undefined;
    return this.lastKnown(key) ?? null;
  }

  /** The record as last seen, in sync or not (what DEL and CHECK serve from while etcd is away). */
  lastKnown(key: string): AttachmentRecord | undefined {
    return this.pods.endpoints.get(key) ?? this.externals.get(key);
  }

  /** A record this daemon wrote (or deleted: undefined), known before its watch event arrives. */
  note(key: string, record: AttachmentRecord | undefined): void {
    const map = key.startsWith(modelKeys.externals()) ? this.externals : this.pods.endpoints;
    if (record) map.note(key, record as never);
    else map.forget(key);
  }

  snapshot(): HostSnapshot {
    const hosts = new Map([...this.hosts.values()].map((h) => [h.name, h]));
    hosts.set(this.self.name, this.self);
    const vpcs = new Map([...this.pods.vpcs.values()].map((v) => [v.name, v]));
    return {
      self: this.self,
      hosts,
      vpcs,
      endpoints: [...this.pods.endpoints.values()],
      blocks: [...this.blocks.values()],
      caps: this.pods.caps(),
    };
  }

  counts(): { vpc: number; external: number } {
    return { vpc: this.localEndpoints().length, external: this.externals.size };
  }
}

/** `<affinity prefix><host>/<pool>/<cidr-key>` → the block and its host. */
export function affinityOf(key: string): BlockAffinity {
  const [host = '', pool = '', cidrKey = ''] = key.slice(ipamKeys.allAffinities().length).split('/');
  return { host, pool, cidr: cidrKey.replace('-', '/') };
}
