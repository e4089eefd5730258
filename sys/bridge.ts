import type { CommandRunner, NetnsTarget } from './runner.js';
import { ifname, LineBatch } from './tokens.js';

/**
 * `bridge` (fdb): static forwarding entries replace flooding and learning on vxlan devices. Reads
 * with `-j`, writes as one `bridge -batch -`.
 */

export interface FdbEntry {
  mac: string;
  ifname: string;
  dst?: string;
  master?: string;
  state?: string;
  flags?: string[];
  vni?: number;
}

export class BridgeBatch extends LineBatch {
  /** `append` allows several remote VTEPs for one MAC (the all-zero MAC: flood list). */
  fdbAppend(mac: string, dev: string, opts: { dst?: string; permanent?: boolean } = {}): this {
    return this.add(
      'fdb',
      'append',
      mac,
      'dev',
      ifname(dev),
      ...(opts.dst ? ['dst', opts.dst] : []),
      'self',
      ...(opts.permanent === false ? [] : ['permanent']),
    );
  }

  fdbReplace(mac: string, dev: string, opts: { dst?: string; permanent?: boolean } = {}): this {
    return this.add(
      'fdb',
      'replace',
      mac,
      'dev',
      ifname(dev),
      ...(opts.dst ? ['dst', opts.dst] : []),
      'self',
      ...(opts.permanent === false ? [] : ['permanent']),
    );
  }

  fdbDel(mac: string, dev: string, opts: { dst?: string } = {}): this {
    return this.add('fdb', 'del', mac, 'dev', ifname(dev), ...(opts.dst ? ['dst', opts.dst] : []), 'self');
  }
}

export class BridgeClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  async fdb(opts: { dev?: string; br?: string } = {}): Promise<FdbEntry[]> {
    const args = [
      'bridge',
      '-j',
      'fdb',
      'show',
      ...(opts.dev ? ['dev', ifname(opts.dev)] : []),
      ...(opts.br ? ['br', ifname(opts.br)] : []),
    ];
    const { stdout } = await this.runner.run({ argv: args, netns: this.netns });
    return (stdout.trim() === '' ? [] : JSON.parse(stdout)) as FdbEntry[];
  }

  async apply(batch: BridgeBatch): Promise<void> {
    if (batch.empty) return;
    await this.runner.run({ argv: ['bridge', '-batch', '-'], stdin: batch.render(), netns: this.netns });
  }
}
