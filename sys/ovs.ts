import { invalidInput } from '../core/errors.js';
import type { CommandRunner } from './runner.js';

/**
 * Open vSwitch through `ovs-vsctl` (vlan mode where the kernel has no 802.1Q: DESIGN.md runs OVS
 * with the userspace datapath). Every mutation is idempotent (--may-exist / --if-exists). A missing
 * ovs-vsctl surfaces as E_UNSUPPORTED from the runner.
 */

const NAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function ovsName(what: string, value: string): string {
  if (!NAME_RE.test(value)) throw invalidInput(`OVS ${what} "${value}" must be 1-15 of A-Z a-z 0-9 _ . -`);
  return value;
}

export class OvsClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly opts: { timeoutSeconds?: number; dbSocket?: string } = {},
  ) {}

  private vsctl(args: string[]): Promise<{ stdout: string }> {
    const global = [
      `--timeout=${this.opts.timeoutSeconds ?? 5}`,
      ...(this.opts.dbSocket ? [`--db=unix:${this.opts.dbSocket}`] : []),
    ];
    return this.runner.run({ argv: ['ovs-vsctl', ...global, ...args] });
  }

  async addBridge(bridge: string, opts: { datapathType?: 'system' | 'netdev' } = {}): Promise<void> {
    const args = ['--may-exist', 'add-br', ovsName('bridge', bridge)];
    if (opts.datapathType) args.push('--', 'set', 'bridge', bridge, `datapath_type=${opts.datapathType}`);
    await this.vsctl(args);
  }

  async deleteBridge(bridge: string): Promise<void> {
    await this.vsctl(['--if-exists', 'del-br', ovsName('bridge', bridge)]);
  }

  /** A port with `tag` is an access port of that VLAN; without it, a trunk. */
  async addPort(bridge: string, port: string, opts: { tag?: number } = {}): Promise<void> {
    if (opts.tag !== undefined && (!Number.isInteger(opts.tag) || opts.tag < 1 || opts.tag > 4094)) {
      throw invalidInput(`VLAN tag ${opts.tag} outside 1..4094`);
    }
    const args = ['--may-exist', 'add-port', ovsName('bridge', bridge), ovsName('port', port)];
    if (opts.tag !== undefined) args.push('--', 'set', 'port', port, `tag=${opts.tag}`);
    await this.vsctl(args);
  }

  async deletePort(bridge: string, port: string): Promise<void> {
    await this.vsctl(['--if-exists', 'del-port', ovsName('bridge', bridge), ovsName('port', port)]);
  }

  async bridges(): Promise<string[]> {
    const { stdout } = await this.vsctl(['list-br']);
    return stdout.split('\n').filter(Boolean);
  }

  async ports(bridge: string): Promise<string[]> {
    const { stdout } = await this.vsctl(['list-ports', ovsName('bridge', bridge)]);
    return stdout.split('\n').filter(Boolean);
  }

  /** Port name → VLAN tag (undefined for trunks), read as JSON. */
  async portTags(): Promise<Map<string, number | undefined>> {
    const { stdout } = await this.vsctl(['--format=json', '--columns=name,tag', 'list', 'Port']);
    const table = JSON.parse(stdout) as { headings: string[]; data: Array<[string, unknown]> };
    const out = new Map<string, number | undefined>();
    for (const [portName, tag] of table.data) {
      // An empty optional column is ["set", []] in OVSDB's JSON.
      out.set(portName, typeof tag === 'number' ? tag : undefined);
    }
    return out;
  }
}
