import { invalidInput } from '../core/errors.js';
import type { CommandRunner } from './runner.js';

/**
 * Open vSwitch through `ovs-vsctl` (vlan mode where the kernel has no 802.1Q: DESIGN.md runs OVS
 * with the userspace datapath). Every mutation is idempotent (--may-exist / --if-exists). A missing
 * ovs-vsctl surfaces as E_UNSUPPORTED from the runner.
 */

const NAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export function ovsName(what: string, value: string): string {
  if (!NAME_RE.test(value)) throw invalidInput(`OVS ${what} "${value}" must be 1-15 of A-Z a-z 0-9 _ . -`);
  return value;
}

/** One ovs-vsctl command of a transaction (see OvsTransaction). */
type VsctlCommand = string[];

/**
 * Several ovs-vsctl commands sent as one OVSDB transaction (one process, all or nothing), so a
 * reconcile's changes cost one round trip. Names are checked as they are added.
 */
export class OvsTransaction {
  readonly commands: VsctlCommand[] = [];

  get empty(): boolean {
    return this.commands.length === 0;
  }

  /** An access port of VLAN `tag` (or a trunk without one); an existing port keeps its row. */
  addPort(bridge: string, port: string, tag?: number): this {
    const cmd = ['--may-exist', 'add-port', ovsName('bridge', bridge), ovsName('port', port)];
    this.commands.push(cmd);
    if (tag !== undefined) this.setTag(port, tag);
    return this;
  }

  setTag(port: string, tag: number): this {
    this.commands.push(['set', 'port', ovsName('port', port), `tag=${checkTag(tag)}`]);
    return this;
  }

  deletePort(bridge: string, port: string): this {
    this.commands.push(['--if-exists', 'del-port', ovsName('bridge', bridge), ovsName('port', port)]);
    return this;
  }

  /** The argv after `ovs-vsctl <global options>`: commands joined by `--`. */
  args(): string[] {
    return this.commands.flatMap((c, i) => (i === 0 ? c : ['--', ...c]));
  }
}

export function checkTag(tag: number): number {
  if (!Number.isInteger(tag) || tag < 1 || tag > 4094) throw invalidInput(`VLAN tag ${tag} outside 1..4094`);
  return tag;
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

  /** Sends a transaction (nothing when it is empty); ovs-vsctl waits until ovs-vswitchd applied it. */
  async apply(tx: OvsTransaction): Promise<void> {
    if (!tx.empty) await this.vsctl(tx.args());
  }

  /** The datapath types this ovs-vswitchd supports ("netdev" userspace, "system" kernel). */
  async datapathTypes(): Promise<string[]> {
    const { stdout } = await this.vsctl(['get', 'Open_vSwitch', '.', 'datapath_types']);
    // OVSDB set syntax: [netdev, system]
    return stdout
      .trim()
      .replace(/^\[|\]$/g, '')
      .split(',')
      .map((x) => x.trim().replace(/^"|"$/g, ''))
      .filter(Boolean);
  }

  /** The bridge's ports with their VLAN tags (undefined: a trunk). */
  async bridgePorts(bridge: string): Promise<Map<string, number | undefined>> {
    const names = new Set(await this.ports(bridge));
    const tags = await this.portTags();
    return new Map([...names].map((n) => [n, tags.get(n)]));
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
    await this.apply(new OvsTransaction().addPort(bridge, port, opts.tag));
  }

  async deletePort(bridge: string, port: string): Promise<void> {
    await this.apply(new OvsTransaction().deletePort(bridge, port));
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
