import { statfsSync } from 'node:fs';
import { AppError, ErrorCodes } from '../../core/errors.js';
import type { CommandRunner } from '../../sys/runner.js';
import {
  VirtualCluster,
  teardownCluster,
  type ClusterOptions,
  type HostDescription,
} from '../../test-netns/cluster.js';
import { uniqueSuffix } from '../../test-netns/testing.js';
import { etcdFlags, hostEtcdClient, type EtcdClientFiles } from '../../test-netns/etcd-cluster.js';
import { EtcdStore } from '../../store/etcd.js';

/**
 * The one place the benchmarks use test-netns and open etcd: a virtual cluster whose etcd has 1 or
 * 3 members. When the cluster harness changes (members, TLS), this file is what to adapt.
 */

export type EtcdMembers = 1 | 3;

/** The store variants a cluster benchmark is registered with; the default keeps the plain name. */
export const STORE_VARIANTS: ReadonlyArray<{ etcdMembers: EtcdMembers; suffix: string }> = [
  { etcdMembers: 1, suffix: '' },
  { etcdMembers: 3, suffix: '@etcd3' },
];

/** statfs magic numbers of the filesystems these machines use. */
const FS_TYPES: Record<number, string> = {
  0xef53: 'ext4',
  0x01021994: 'tmpfs',
  0x9123683e: 'btrfs',
  0x58465342: 'xfs',
  0x794c7630: 'overlayfs',
};

/** "disk (ext4)" or "memory (tmpfs)": what an fsync there costs depends on it. */
export function describeFilesystem(path: string): string {
  const type = FS_TYPES[Number(statfsSync(path).type)] ?? `filesystem 0x${Number(statfsSync(path).type).toString(16)}`;
  return type === 'tmpfs' ? 'memory (tmpfs)' : `disk (${type})`;
}

export class BenchCluster {
  private constructor(
    private readonly cluster: VirtualCluster,
    private readonly runner: CommandRunner,
    readonly etcdMembers: EtcdMembers,
    private readonly etcdVersion: string,
  ) {}

  /**
   * Brings a cluster up and checks that its etcd has the members asked for: a harness that does
   * not know `etcdMembers` yet would otherwise run a 1-member etcd under a 3-member label.
   */
  static async up(
    opts: { prefix: string; hosts: number; etcdMembers: EtcdMembers; vlan?: boolean },
    runner: CommandRunner,
  ) {
    const options: ClusterOptions = {
      prefix: `${opts.prefix}${uniqueSuffix(2)}`,
      hosts: opts.hosts,
      etcdMembers: opts.etcdMembers,
      ...(opts.vlan && { vlan: true }),
    };
    const cluster = await VirtualCluster.up(options, { runner });
    const bench = new BenchCluster(cluster, runner, opts.etcdMembers, '');
    const store = bench.openStore();
    try {
      const members = (await store.client.cluster.memberList({})).members ?? [];
      const version = (await store.client.maintenance.status()).version;
      if (members.length !== opts.etcdMembers) {
        throw new AppError(
          ErrorCodes.UNSUPPORTED,
          `asked for an etcd of ${opts.etcdMembers} member(s), the cluster harness started ${members.length}`,
          { etcdMembers: opts.etcdMembers },
        );
      }
      return new BenchCluster(cluster, runner, opts.etcdMembers, version);
    } catch (err) {
      await teardownCluster(cluster.prefix, { runner });
      throw err;
    } finally {
      await store.close();
    }
  }

  get prefix(): string {
    return this.cluster.prefix;
  }

  get hosts(): HostDescription[] {
    return this.cluster.description.hosts;
  }

  host(name: string): HostDescription {
    return this.cluster.host(name);
  }

  /**
   * Reaching etcd from a host's namespace (what the workers are given): TLS, as etcd user `netd`
   * (read-write on /netd/), or `root` for a peer that keeps its state elsewhere.
   */
  hostClient(user: 'netd' | 'root' = 'netd'): EtcdClientFiles {
    return hostEtcdClient(this.cluster.description, user);
  }

  /** netd's etcd flags on a host. */
  etcdFlags(): string[] {
    return etcdFlags(this.cluster.description);
  }

  /** A client from the benchmark's own (root) namespace, as etcd user root. */
  openStore(): EtcdStore {
    return new EtcdStore(this.cluster.description.etcd.client);
  }

  /** For the report: members, where their data lives, and that every commit is fsync'd. */
  describe(): string {
    const where = describeFilesystem(this.cluster.description.etcd.members[0]!.dataDir);
    const members =
      this.etcdMembers === 1 ? '1 member' : `${this.etcdMembers} members (Raft: a commit waits for a quorum)`;
    return `etcd ${this.etcdVersion}, ${members}, TLS with client certificates and RBAC, data on ${where}, fsync of the WAL on every commit`;
  }

  async teardown(): Promise<void> {
    await teardownCluster(this.cluster.prefix, { runner: this.runner });
  }
}
