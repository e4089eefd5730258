import { existsSync } from 'node:fs';
import { describeError } from '../core/errors.js';
import { EthtoolClient } from '../sys/ethtool.js';
import { IpBatch, IpClient } from '../sys/ip.js';
import { TcClient } from '../sys/tc.js';
import { shaperRedirects } from './qos.js';
import { OvsClient, OvsTransaction } from '../sys/ovs.js';
import { OvsdbClient } from '../sys/ovsdb.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import type { VlanCapability } from '../tenancy/records.js';
import { linkNames, OWNED_LINK_RE } from './names.js';

/**
 * This host's part of vlan mode: an Open vSwitch bridge with the host's trunk on it (all VLANs)
 * and each vlan container's port as an access port of its VPC's VLAN. OVS runs as the host's
 * service (ovsdb-server + ovs-vswitchd, like the kernel: netd does not own its processes); netd owns
 * the bridge's ports named as its own (names.ts) and reconciles them: tags, orphans, and ports a
 * crash left off the bridge. The kernel datapath is used where the openvswitch module is loaded;
 * else the userspace one (this machine), whose packet sockets need checksum offload off (ethtool.ts).
 *
 * On the userspace datapath OVS reads a port through a packet socket, which sees a frame before
 * tc's ingress hook: an ifb redirect there (how other modes shape what a container sends) would
 * come too late. So each container port gets a second veth pair on that datapath, its "shaper"
 * `nq…` and the shaper's peer `no…`, and the peer is the OVS port:
 *
 *   container eth1 ── ni… ─(tc ingress: redirect)→ nq… [root tbf: egress limit] ── no… → OVS
 *   container eth1 ←─ ni… [root tbf: ingress limit] ←(tc ingress: redirect)─ nq… ←── no… ← OVS
 *
 * The redirects live as long as the port; a limit is only the root qdisc of `nq…` (qos.ts).
 */

export interface VlanHostOptions {
  /** The interface plugged into the VLAN-aware fabric (a second NIC, or a bond). */
  trunk: string;
  /** The physical network it is plugged into (VLAN ids are unique per physical network). */
  physnet: string;
  /** The OVS bridge netd uses (created if absent). */
  bridge?: string;
  /** ovsdb-server's socket (default: OVS's own, /var/run/openvswitch/db.sock). */
  dbSocket?: string;
}

export const DEFAULT_OVS_BRIDGE = 'br-netd';
/** Where Debian's openvswitch-switch service puts its database socket. */
export const DEFAULT_OVS_DB = '/var/run/openvswitch/db.sock';

export class VlanHost {
  readonly bridge: string;
  private readonly ovs: OvsClient;
  private readonly ovsdb: OvsdbClient;
  private readonly ethtool: EthtoolClient;
  /** What this host offers, once setup() found Open vSwitch and the trunk. */
  capability: VlanCapability | undefined;
  /** Why it offers nothing, when it does not (for /readyz and the CNI error). */
  refusal: string | undefined = 'vlan mode is not set up yet';
  /** The last reconcile found none of netd's ports and wanted none: until a plug, nothing to read. */
  private clean = false;

  constructor(
    private readonly opts: VlanHostOptions,
    private readonly deps: { runner: CommandRunner; netns?: NetnsTarget; logger: Logger },
  ) {
    this.bridge = opts.bridge ?? DEFAULT_OVS_BRIDGE;
    this.ovs = new OvsClient(deps.runner, { ...(opts.dbSocket && { dbSocket: opts.dbSocket }), timeoutSeconds: 10 });
    // Per-port changes go straight to the database (a millisecond, not an ovs-vsctl process).
    this.ovsdb = new OvsdbClient(opts.dbSocket ?? DEFAULT_OVS_DB, {
      timeoutMs: 10_000,
      logger: deps.logger.child({ part: 'vlan' }),
    });
    this.ethtool = new EthtoolClient(deps.runner, deps.netns);
  }

  /** Userspace datapath: frames cross packet sockets, so checksums are computed by the senders. */
  private get userspace(): boolean {
    return this.capability?.datapath !== 'system';
  }

  /**
   * Whether container ports reach OVS through a shaper veth pair (the userspace datapath; see
   * above): known once setup() found the datapath, and kept while Open vSwitch is away (the pairs
   * must outlive an outage); undefined before.
   */
  get shaping(): boolean | undefined {
    return this.datapath === undefined ? undefined : this.datapath === 'netdev';
  }

  get shapes(): boolean {
    return this.shaping === true;
  }

  private datapath: VlanCapability['datapath'] | undefined;

  /** The name OVS knows a container port by. */
  ovsPortOf(port: string): string {
    return this.shapes ? linkNames.ovsPeerFor(port) : port;
  }

  /** The container port behind an OVS port name of netd's. */
  private containerPortOf(ovsPort: string): string {
    return ovsPort.startsWith('no') ? `ni${ovsPort.slice(2)}` : ovsPort;
  }

  /**
   * The lines that create a port's shaper pair (both ends up, no IPv6 of their own): an ADD puts
   * them in the batch that creates the port.
   */
  shaperLines(b: IpBatch, port: string, mtu: number): IpBatch {
    const shaper = linkNames.ifbFor(port);
    const peer = linkNames.ovsPeerFor(port);
    return b
      .linkAddVeth(shaper, peer, { mtu })
      .linkSet(shaper, { addrGenMode: 'none' })
      .linkSet(peer, { addrGenMode: 'none' })
      .linkSet(shaper, { up: true })
      .linkSet(peer, { up: true });
  }

  /** Frames between the port and its shaper, both ways (idempotent: fixed filter handles). */
  private async redirectThroughShaper(port: string): Promise<void> {
    const shaper = linkNames.ifbFor(port);
    const b = shaperRedirects(port, shaper);
    this.deps.logger.debug({ part: 'vlan', tc: b.lines }, 'tc');
    await new TcClient(this.deps.runner, this.deps.netns).apply(b);
  }

  /**
   * Finds Open vSwitch and the trunk, and puts the bridge and the trunk port in place. Never
   * throws: a host without them serves the other modes and says why it serves no vlan VPC.
   */
  async setup(): Promise<VlanCapability | undefined> {
    const log = this.deps.logger.child({ part: 'vlan' });
    try {
      const types = await this.ovs.datapathTypes();
      // The kernel datapath where the module is loaded (it also runs in the host's namespace).
      const datapath = types.includes('system') && existsSync('/sys/module/openvswitch') ? 'system' : 'netdev';
      if (!types.includes(datapath)) {
        this.refusal = `Open vSwitch offers no usable datapath (has: ${types.join(', ') || 'none'})`;
        return undefined;
      }
      const trunk = await new IpClient(this.deps.runner, this.deps.netns).link(this.opts.trunk);
      if (!trunk) {
        this.refusal = `the VLAN trunk ${this.opts.trunk} does not exist`;
        return undefined;
      }
      // An existing bridge is used as it is (its datapath is the operator's); a new one gets ours.
      if (!(await this.ovs.bridges()).includes(this.bridge))
        await this.ovs.addBridge(this.bridge, { datapathType: datapath });
      await this.ovs.apply(new OvsTransaction().addPort(this.bridge, this.opts.trunk));
      if (datapath === 'netdev') await this.ethtool.txChecksumOff(this.opts.trunk);
      // Published last: an ADD that sees it finds everything in place.
      this.datapath = datapath;
      this.capability = { physnet: this.opts.physnet, datapath, mtu: trunk.mtu };
      this.refusal = undefined;
      log.info({ ...this.capability, bridge: this.bridge, trunk: this.opts.trunk }, 'vlan mode set up');
      return this.capability;
    } catch (err) {
      this.capability = undefined;
      const refusal = `vlan mode unavailable: Open vSwitch not usable (${describeError(err)})`;
      // Set up again on every resync until it works: said once per reason, not every 5 s.
      if (refusal !== this.refusal) log.error({ err: describeError(err) }, refusal);
      this.refusal = refusal;
      return undefined;
    }
  }

  private lose(err: unknown): void {
    this.capability = undefined;
    this.refusal = `vlan mode unavailable: Open vSwitch not usable (${describeError(err)})`;
    this.deps.logger.error({ part: 'vlan', err: describeError(err) }, this.refusal);
  }

  /** Closes the database connection (the daemon stops). */
  close(): void {
    this.ovsdb.close();
  }

  /** The physical network this host's trunk is on, while vlan mode is set up. */
  get physnet(): string | undefined {
    return this.capability?.physnet;
  }

  /**
   * Puts a new container port on the bridge as an access port of `tag` (what an ADD does last,
   * before its answer). With the userspace datapath, both ends of the pair stop offloading checksums first.
   */
  async plug(
    port: string,
    tag: number,
    container: { netnsPath: string; ifname: string },
    opts: { shaperMade?: boolean } = {},
  ): Promise<void> {
    const ovsPort = this.ovsPortOf(port);
    // A port wired before its shaper existed (a retried or repaired ADD) gets one now.
    if (this.shapes && !opts.shaperMade) {
      const ip = new IpClient(this.deps.runner, this.deps.netns);
      const link = await ip.link(port);
      if (link && !(await ip.link(ovsPort))) await ip.apply(this.shaperLines(new IpBatch(), port, link.mtu));
    }
    // Independent of each other: one process each, side by side. (An ADD that made the shaper
    // set its redirects with the port's limits, in its second round: veth.ts.)
    await Promise.all([
      this.shapes && !opts.shaperMade ? this.redirectThroughShaper(port) : undefined,
      ...(this.userspace
        ? [
            this.ethtool.txChecksumOff(port),
            ...(ovsPort !== port ? [this.ethtool.txChecksumOff(ovsPort)] : []),
            new EthtoolClient(this.deps.runner, { path: container.netnsPath }).txChecksumOff(container.ifname),
          ]
        : []),
    ]);
    this.clean = false;
    await this.ovsdb.setAccessPort(this.bridge, ovsPort, tag, { wait: true });
  }

  /**
   * Takes a port off the bridge (a DEL; gone already is fine). Its link is deleted beside this, so
   * nothing waits for ovs-vswitchd to let go of it: the database row is what names it.
   */
  async unplug(port: string): Promise<void> {
    // Best effort: a DEL must not fail for a row the reconciler removes anyway once OVS answers.
    await this.ovsdb.change(this.bridge, { remove: [this.ovsPortOf(port)] }).catch((err: unknown) => {
      this.deps.logger.warn(
        { part: 'vlan', port, err: describeError(err) },
        'port not taken off the bridge; the reconciler will',
      );
    });
  }

  /**
   * Converges the bridge's netd ports to `desired` (container port → VLAN; OVS knows it by
   * ovsPortOf()): tags corrected, ports of records
   * whose link exists but is not on the bridge (a crash between the two) added, netd-named ports
   * nobody wants removed; `protect` (ADDs in flight, records just written) is never removed. One
   * database transaction; nothing sent when nothing differs.
   */
  async reconcile(
    desired: ReadonlyMap<string, number>,
    about: {
      protect: () => ReadonlySet<string>;
      inFlight: (port: string) => boolean;
      containerOf: (port: string) => { netnsPath: string; ifname: string } | undefined;
    },
  ): Promise<void> {
    if (!this.capability || (this.clean && desired.size === 0)) return;
    let actual: Map<string, number | undefined>;
    try {
      actual = await this.ovsdb.bridgePorts(this.bridge);
    } catch (err) {
      // Open vSwitch down, restarting, or its database (and our bridge) gone: vlan is unavailable
      // until setup() works again (the daemon retries it on each resync and updates the record).
      this.lose(err);
      throw err;
    }
    this.clean = desired.size === 0 && ![...actual.keys()].some((p) => OWNED_LINK_RE.test(p));
    const ip = new IpClient(this.deps.runner, this.deps.netns);
    const tags = new Map<string, number>();
    const remove: string[] = [];
    for (const [port, tag] of desired) {
      const ovsPort = this.ovsPortOf(port);
      if (!actual.has(ovsPort)) {
        // A port whose ADD died before `plug` (recovery kept it): its link is there, the bridge
        // never heard of it. Plugged as its ADD would have (offloads too); ADDs in flight plug their own.
        const container = about.containerOf(port);
        if (container && !about.inFlight(port) && (await ip.link(port))) await this.plug(port, tag, container);
      } else if (actual.get(ovsPort) !== tag) tags.set(ovsPort, tag);
    }
    // Read after the desired state was computed: a record or claim made since protects its port.
    const guarded = about.protect();
    for (const ovsPort of actual.keys()) {
      const port = this.containerPortOf(ovsPort);
      const wanted = desired.has(port) && this.ovsPortOf(port) === ovsPort;
      if (OWNED_LINK_RE.test(ovsPort) && !wanted && !guarded.has(port)) remove.push(ovsPort);
    }
    if (tags.size > 0 || remove.length > 0) await this.ovsdb.change(this.bridge, { tags, remove });
  }
}
