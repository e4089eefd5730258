import type { CommandRunner, NetnsTarget } from './runner.js';
import { ifname } from './tokens.js';

/**
 * Device offloads through `ethtool`. Open vSwitch's userspace datapath reads and writes frames on
 * a veth through a packet socket: a frame sent with checksum offload arrives there with its TCP or
 * UDP checksum not yet computed, and leaves OVS as it is, so the receiver drops it (ping works,
 * TCP does not). Checksums must then be computed by the sender: `tx off` on both ends.
 */

export class EthtoolClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  /** Transmit checksum offload (and with it TSO, which needs it) off on `dev`. */
  async txChecksumOff(dev: string): Promise<void> {
    await this.runner.run({ argv: ['ethtool', '-K', ifname(dev), 'tx', 'off'], netns: this.netns });
  }

  /** Whether transmit checksum offload is on (`tx-checksumming: on`). */
  async txChecksumOn(dev: string): Promise<boolean> {
    const { stdout } = await this.runner.run({ argv: ['ethtool', '-k', ifname(dev)], netns: this.netns });
    return /^tx-checksumming: on/m.test(stdout);
  }
}
