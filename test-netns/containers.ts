import { AppError, ErrorCodes } from '../core/errors.js';
import { type CommandRunner, type CommandResult, type Command } from '../sys/runner.js';
import { IpBatch, IpClient } from '../sys/ip.js';
import type { VirtualCluster } from './cluster.js';
import { checkContainerName, names } from './names.js';

/**
 * Bare "containers" for tests that need an endpoint on a host without a runtime: a namespace
 * `tn-P-HOST-NAME` with `eth0` whose peer `c-NAME` sits in the host namespace. Real runtimes
 * (podman) are used where the runtime itself is under test.
 */

export interface ContainerSpec {
  host: string;
  name: string;
  /** CIDR on the container's eth0, e.g. 10.1.0.2/24. */
  address?: string;
  /** CIDR on the host-side veth. */
  hostAddress?: string;
  /** Default route via this address (on-link). */
  gateway?: string;
  mtu?: number;
}

export interface TestContainer {
  name: string;
  host: string;
  netns: string;
  netnsPath: string;
  /** The host-side veth, in the host's namespace. */
  hostIf: string;
  ifname: 'eth0';
}

export class Containers {
  private readonly ip: IpClient;

  constructor(
    private readonly cluster: VirtualCluster,
    private readonly runner: CommandRunner,
  ) {
    this.ip = new IpClient(runner);
  }

  async add(spec: ContainerSpec): Promise<TestContainer> {
    const name = checkContainerName(spec.name);
    const host = this.cluster.host(spec.host);
    const netns = names.containerNetns(this.cluster.prefix, host.name, name);
    const hostIf = names.containerHostIf(name);
    const mtu = spec.mtu ?? this.cluster.description.underlay.mtu;
    const container: TestContainer = {
      name,
      host: host.name,
      netns,
      netnsPath: names.netnsPath(netns),
      hostIf,
      ifname: 'eth0',
    };
    await this.ip.addNetns([netns]);
    try {
      const onHost = new IpBatch().linkAddVeth(hostIf, 'eth0', { peerNetns: netns, mtu }).linkSet(hostIf, { up: true });
      if (spec.hostAddress) onHost.addrAdd(spec.hostAddress, hostIf);
      await this.ip.in({ name: host.netns }).apply(onHost);
      const inside = new IpBatch().linkSet('lo', { up: true }).linkSet('eth0', { up: true });
      if (spec.address) inside.addrAdd(spec.address, 'eth0');
      if (spec.gateway) inside.routeReplace('default', { via: spec.gateway, dev: 'eth0', onlink: true });
      await this.ip.in({ name: netns }).apply(inside);
      return container;
    } catch (err) {
      await this.remove(container);
      throw err;
    }
  }

  /**
   * Deletes the host-side veth first: that removes both ends at once, whereas the kernel destroys a
   * deleted namespace's links asynchronously and the peer would linger for a moment.
   */
  async remove(container: TestContainer): Promise<void> {
    const host = this.cluster.host(container.host);
    await this.ip.in({ name: host.netns }).deleteLinkIfExists(container.hostIf);
    await this.ip.deleteNetns([container.netns]);
  }

  /** Runs argv inside the container's namespace. */
  exec(
    container: TestContainer,
    argv: readonly string[],
    opts: Omit<Command, 'argv' | 'netns'> = {},
  ): Promise<CommandResult> {
    if (argv.length === 0) throw new AppError(ErrorCodes.INVALID_INPUT, 'empty argv');
    return this.runner.run({ ...opts, argv, netns: { name: container.netns } });
  }
}
