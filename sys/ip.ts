import type { CommandRunner, NetnsTarget } from './runner.js';
import { classifyFailure, CommandError, isCommandError } from './runner.js';
import { ifname, token, LineBatch } from './tokens.js';
import { formatIp, parseIp } from '../core/cidr.js';

/**
 * `ip` from iproute2: reads with `-j` (JSON), writes as one `ip -batch -` per change set. Batches
 * stop at the first failing line (not atomic): callers order lines so that a partial batch is
 * still a state the reconciler can finish or undo.
 */

export interface Link {
  ifindex: number;
  ifname: string;
  flags: string[];
  mtu: number;
  operstate: string;
  address?: string;
  master?: string;
  link_netnsid?: number;
  group?: string;
  linkinfo?: { info_kind?: string; info_data?: Record<string, unknown> };
}

export interface AddrInfo {
  family: 'inet' | 'inet6';
  local: string;
  prefixlen: number;
  scope?: string;
}

export interface LinkAddrs {
  ifname: string;
  addr_info: AddrInfo[];
}

export interface Route {
  /** unicast (absent without -d), prohibit, unreachable, ... */
  type?: string;
  dst: string;
  gateway?: string;
  dev?: string;
  protocol?: string;
  scope?: string;
  table?: string;
  flags?: string[];
}

/** A policy rule as netd writes it. */
export interface PolicyRule {
  from: string;
  to?: string;
  table: number;
  priority: number;
}

function ruleWords(r: PolicyRule): Array<string | number> {
  return ['from', r.from, ...(r.to !== undefined ? ['to', r.to] : []), 'lookup', r.table, 'priority', r.priority];
}

/** A policy routing rule as `ip -j rule show` prints it. */
export interface Rule {
  priority: number;
  src?: string;
  srclen?: number;
  dst?: string;
  dstlen?: number;
  table?: string;
  protocol?: string;
}

export interface Neighbour {
  dst: string;
  dev: string;
  lladdr?: string;
  state?: string[];
}

export interface VxlanSpec {
  name: string;
  vni: number;
  local: string;
  dev: string;
  dstport?: number;
  gbp?: boolean;
  learning?: boolean;
  /** The device answers ARP/ND itself from its neighbour table (ARP suppression). */
  proxy?: boolean;
  mtu?: number;
}

/** Lines for one `ip -batch -`; every token is checked as it is added. */
export class IpBatch extends LineBatch {
  /**
   * @param family run with `ip -6` (`ip rule` in a batch does not tell IPv6 from its addresses: it
   * takes every line for IPv4 unless told).
   */
  constructor(readonly family?: 4 | 6) {
    super();
  }

  /**
   * A veth pair. `peerNetns` creates the peer directly in that namespace (a name or a path): moving
   * a link between namespaces afterwards costs ~20 ms of RCU waits, creating it there costs nothing.
   * `master` and `up` apply to `name`; `peerAddress` sets the peer's MAC.
   */
  linkAddVeth(
    name: string,
    peer: string,
    opts: {
      peerNetns?: string;
      mtu?: number;
      group?: number;
      master?: string;
      up?: boolean;
      peerAddress?: string;
    } = {},
  ): this {
    return this.add(
      'link',
      'add',
      ifname(name),
      ...(opts.mtu ? ['mtu', opts.mtu] : []),
      ...(opts.group !== undefined ? ['group', opts.group] : []),
      ...(opts.master !== undefined ? ['master', ifname(opts.master)] : []),
      ...(opts.up ? ['up'] : []),
      'type',
      'veth',
      'peer',
      'name',
      ifname(peer),
      ...(opts.peerAddress !== undefined ? ['address', opts.peerAddress] : []),
      ...(opts.mtu ? ['mtu', opts.mtu] : []),
      ...(opts.peerNetns ? ['netns', opts.peerNetns] : []),
    );
  }

  /**
   * `mcastSnooping: false` floods multicast like a plain switch. With snooping on, each port
   * added costs the kernel time in proportion to the ports already there (measured: the 1,000th
   * port of a bridge takes 11.5 ms instead of 8.6 ms, under the RTNL lock every ADD needs).
   */
  linkAddBridge(name: string, opts: { mtu?: number; mcastSnooping?: boolean } = {}): this {
    return this.add(
      'link',
      'add',
      ifname(name),
      ...(opts.mtu ? ['mtu', opts.mtu] : []),
      'type',
      'bridge',
      ...(opts.mcastSnooping === false ? ['mcast_snooping', 0] : []),
    );
  }

  linkAddVxlan(s: VxlanSpec): this {
    return this.add(
      'link',
      'add',
      ifname(s.name),
      ...(s.mtu ? ['mtu', s.mtu] : []),
      'type',
      'vxlan',
      'id',
      s.vni,
      'local',
      s.local,
      'dev',
      ifname(s.dev),
      'dstport',
      s.dstport ?? 4789,
      ...(s.gbp ? ['gbp'] : []),
      s.learning === false ? 'nolearning' : 'learning',
      ...(s.proxy ? ['proxy'] : []),
    );
  }

  linkAddIfb(name: string): this {
    return this.add('link', 'add', ifname(name), 'type', 'ifb');
  }

  linkDel(name: string): this {
    return this.add('link', 'del', ifname(name));
  }

  /** One request for every link of the group: one RCU grace period instead of one per link. */
  linkDelGroup(group: number): this {
    return this.add('link', 'del', 'group', group);
  }

  /**
   * `addrGenMode: 'none'`: no IPv6 link-local address (and so no DAD, router solicitations or MLD
   * reports) when the link comes up. Set it on its own line before `up`: the kernel applies flags
   * before address-family settings within one request.
   */
  linkSet(
    name: string,
    opts: {
      up?: boolean;
      master?: string | null;
      mtu?: number;
      address?: string;
      netns?: string;
      name?: string;
      addrGenMode?: 'none' | 'eui64';
    },
  ): this {
    const words: Array<string | number> = ['link', 'set', 'dev', ifname(name)];
    if (opts.addrGenMode !== undefined) words.push('addrgenmode', opts.addrGenMode);
    if (opts.netns !== undefined) words.push('netns', opts.netns);
    if (opts.name !== undefined) words.push('name', ifname(opts.name));
    if (opts.mtu !== undefined) words.push('mtu', opts.mtu);
    if (opts.address !== undefined) words.push('address', opts.address);
    if (opts.master === null) words.push('nomaster');
    else if (opts.master !== undefined) words.push('master', ifname(opts.master));
    if (opts.up !== undefined) words.push(opts.up ? 'up' : 'down');
    return this.add(...words);
  }

  /** `nodad`: an IPv6 address usable at once, without duplicate address detection (~1 s). */
  addrAdd(cidr: string, dev: string, opts: { nodad?: boolean } = {}): this {
    return this.add('addr', 'add', cidr, 'dev', ifname(dev), ...(opts.nodad ? ['nodad'] : []));
  }

  addrReplace(cidr: string, dev: string): this {
    return this.add('addr', 'replace', cidr, 'dev', ifname(dev));
  }

  addrDel(cidr: string, dev: string): this {
    return this.add('addr', 'del', cidr, 'dev', ifname(dev));
  }

  routeReplace(
    dst: string,
    opts: {
      via?: string;
      dev?: string;
      onlink?: boolean;
      table?: number;
      scope?: string;
      src?: string;
      /** A route type other than unicast (`prohibit`: refused with an ICMP error; `local`: this host). */
      type?: 'prohibit' | 'unreachable' | 'local';
      /** The routing protocol number that marks the route as its owner's. */
      proto?: number;
    } = {},
  ): this {
    return this.add(
      'route',
      'replace',
      ...(opts.type ? [opts.type] : []),
      dst,
      ...(opts.via ? ['via', opts.via] : []),
      ...(opts.dev ? ['dev', ifname(opts.dev)] : []),
      ...(opts.src ? ['src', opts.src] : []),
      ...(opts.scope ? ['scope', opts.scope] : []),
      ...(opts.table !== undefined ? ['table', opts.table] : []),
      ...(opts.proto !== undefined ? ['proto', opts.proto] : []),
      ...(opts.onlink ? ['onlink'] : []),
    );
  }

  routeDel(
    dst: string,
    opts: { dev?: string; table?: number; type?: 'prohibit' | 'unreachable' | 'local' } = {},
  ): this {
    return this.add(
      'route',
      'del',
      ...(opts.type ? [opts.type] : []),
      dst,
      ...(opts.dev ? ['dev', ifname(opts.dev)] : []),
      ...(opts.table !== undefined ? ['table', opts.table] : []),
    );
  }

  /** A source-based policy rule: packets from `from` (to `to`) are routed by `table`. */
  ruleAdd(r: PolicyRule & { proto?: number }): this {
    return this.add('rule', 'add', ...ruleWords(r), ...(r.proto !== undefined ? ['protocol', r.proto] : []));
  }

  ruleDel(r: PolicyRule): this {
    return this.add('rule', 'del', ...ruleWords(r));
  }

  neighReplace(ip: string, lladdr: string, dev: string, opts: { permanent?: boolean } = {}): this {
    return this.add(
      'neigh',
      'replace',
      ip,
      'lladdr',
      lladdr,
      'dev',
      ifname(dev),
      'nud',
      opts.permanent === false ? 'reachable' : 'permanent',
    );
  }

  /**
   * Removes a neighbour entry whether or not it is there. `ip neigh` ends the whole batch at its
   * first kernel error, even under -force (the lines after it never run), so the entry is put in
   * place first — replace never fails — and then deleted. `lladdr`: its MAC, when known.
   */
  neighDel(ip: string, dev: string, lladdr = '00:00:00:00:00:00'): this {
    return this.neighReplace(ip, lladdr, dev).add('neigh', 'del', ip, 'dev', ifname(dev));
  }

  /** The host answers ARP (or NDP) for `ip` on `dev`: a proxy entry, no sysctl needed. */
  proxyNeighReplace(ip: string, dev: string): this {
    return this.add('neigh', 'replace', 'proxy', formatIp(parseIp(ip)), 'dev', ifname(dev));
  }

  /** Removes a proxy entry whether or not it is there (see neighDel: replace, then delete). */
  proxyNeighDel(ip: string, dev: string): this {
    return this.proxyNeighReplace(ip, dev).add('neigh', 'del', 'proxy', formatIp(parseIp(ip)), 'dev', ifname(dev));
  }
}

export class IpClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  /** A client for another namespace, sharing the runner. */
  in(netns: NetnsTarget): IpClient {
    return new IpClient(this.runner, netns);
  }

  private async json<T>(args: string[]): Promise<T> {
    const { stdout } = await this.runner.run({ argv: ['ip', '-j', '-d', ...args], netns: this.netns });
    return (stdout.trim() === '' ? [] : JSON.parse(stdout)) as T;
  }

  links(opts: { type?: string } = {}): Promise<Link[]> {
    return this.json<Link[]>(['link', 'show', ...(opts.type ? ['type', token(opts.type)] : [])]);
  }

  /** The link, or undefined when it does not exist. */
  async link(name: string): Promise<Link | undefined> {
    try {
      const [l] = await this.json<Link[]>(['link', 'show', 'dev', ifname(name)]);
      return l;
    } catch (err) {
      if (isCommandError(err, 'not-found')) return undefined;
      throw err;
    }
  }

  addresses(dev?: string): Promise<LinkAddrs[]> {
    return this.json<LinkAddrs[]>(['addr', 'show', ...(dev ? ['dev', ifname(dev)] : [])]);
  }

  routes(opts: { family?: 4 | 6; table?: string | number } = {}): Promise<Route[]> {
    return this.json<Route[]>([
      ...(opts.family ? [`-${opts.family}`] : []),
      'route',
      'show',
      ...(opts.table !== undefined ? ['table', token(opts.table)] : []),
    ]);
  }

  /** Routes of every table carrying routing protocol `proto` (with -d: types included). */
  routesByProto(proto: number, family: 4 | 6 = 4): Promise<Route[]> {
    return this.json<Route[]>([`-${family}`, 'route', 'show', 'table', 'all', 'proto', String(proto)]);
  }

  rules(family: 4 | 6 = 4): Promise<Rule[]> {
    return this.json<Rule[]>([`-${family}`, 'rule', 'show']);
  }

  neighbours(dev?: string): Promise<Neighbour[]> {
    return this.json<Neighbour[]>(['neigh', 'show', ...(dev ? ['dev', ifname(dev)] : [])]);
  }

  /** Addresses this namespace answers ARP/NDP for on `dev` (proxy entries). */
  async proxyNeighbours(dev: string): Promise<string[]> {
    return (await this.json<Neighbour[]>(['neigh', 'show', 'proxy', 'dev', ifname(dev)])).map((n) => n.dst);
  }

  async apply(batch: IpBatch, opts: { force?: boolean } = {}): Promise<void> {
    if (batch.empty) return;
    await this.runner.run({
      argv: ['ip', ...(batch.family ? [`-${batch.family}`] : []), ...(opts.force ? ['-force'] : []), '-batch', '-'],
      stdin: batch.render(),
      netns: this.netns,
    });
  }

  /**
   * Deletes whichever of `names` exist, in one process (`-force` goes on past missing links);
   * any failure other than a missing link is an error.
   */
  async deleteLinksIfExist(names: readonly string[]): Promise<void> {
    const batch = new IpBatch();
    for (const n of names) batch.linkDel(n);
    await this.applyForgivingMissing(batch);
  }

  /**
   * Applies a batch of removals in one process, going on past lines whose object is already gone;
   * any other failure is an error.
   */
  async applyForgivingMissing(batch: IpBatch): Promise<void> {
    try {
      await this.apply(batch, { force: true });
    } catch (err) {
      if (!isCommandError(err)) throw err;
      const problems = err.stderr
        .split('\n')
        .filter((l) => l.trim() && !/^Command failed/.test(l) && classifyFailure(l) !== 'not-found');
      if (problems.length > 0) throw err;
    }
  }

  /** Deleting what is already gone is success. */
  async deleteLinkIfExists(name: string): Promise<boolean> {
    try {
      await this.runner.run({ argv: ['ip', 'link', 'del', 'dev', ifname(name)], netns: this.netns });
      return true;
    } catch (err) {
      if (isCommandError(err, 'not-found')) return false;
      throw err;
    }
  }

  /** Namespaces are created and deleted in the root namespace's view (/run/netns). */
  async addNetns(names: readonly string[]): Promise<void> {
    const b = new IpBatch();
    for (const n of names) b.add('netns', 'add', n);
    await this.apply(b);
  }

  /** Deletes namespaces, continuing past ones already gone. */
  async deleteNetns(names: readonly string[]): Promise<void> {
    const b = new IpBatch();
    for (const n of names) b.add('netns', 'del', n);
    await this.apply(b, { force: true }).catch(() => undefined);
  }
}

/**
 * Coalesces batches for one namespace that arrive while an `ip` process is running into the next
 * process (`ip -force -batch -`), so 16 concurrent ADDs cost a few spawns instead of 16. Idle, a
 * batch goes out at once: no added latency. Failures are attributed by line number ("Command
 * failed -:N"): a batch with a failed line is rejected with the stderr of its own lines only.
 */
export class IpBatchLane {
  private queue: Array<{ batch: IpBatch; resolve: () => void; reject: (e: unknown) => void }> = [];
  private running = false;

  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  submit(batch: IpBatch): Promise<void> {
    if (batch.empty) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.queue.push({ batch, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        const group = this.queue.splice(0, 64);
        await this.flush(group);
      }
    } finally {
      this.running = false;
    }
  }

  private async flush(
    group: Array<{ batch: IpBatch; resolve: () => void; reject: (e: unknown) => void }>,
  ): Promise<void> {
    const argv = ['ip', '-force', '-batch', '-'];
    const owner: number[] = []; // line number (1-based) → index in group
    group.forEach((g, i) => g.batch.lines.forEach(() => owner.push(i)));
    try {
      await this.runner.run({ argv, stdin: group.map((g) => g.batch.render()).join(''), netns: this.netns });
      for (const g of group) g.resolve();
    } catch (err) {
      if (!isCommandError(err)) {
        for (const g of group) g.reject(err);
        return;
      }
      const stderrOf = new Map<number, string[]>();
      let pending: string[] = [];
      for (const l of err.stderr.split('\n')) {
        const m = /^Command failed -:(\d+)$/.exec(l.trim());
        if (!m) {
          if (l.trim()) pending.push(l);
          continue;
        }
        const i = owner[Number(m[1]) - 1];
        if (i !== undefined) stderrOf.set(i, [...(stderrOf.get(i) ?? []), ...pending, l]);
        pending = [];
      }
      // An error without a line number means ip stopped there (a line it could not even parse,
      // e.g. a bridge that vanished since: names are resolved while parsing). Lines after it never
      // ran and nothing says which batch it was: each batch runs again on its own, in order, and
      // gets its own answer (a line that did run before the stop answers "exists" now).
      if (pending.length > 0 || stderrOf.size === 0) {
        if (group.length === 1) return group[0]!.reject(err);
        for (const g of group) {
          await this.runner.run({ argv, stdin: g.batch.render(), netns: this.netns }).then(g.resolve, g.reject);
        }
        return;
      }
      group.forEach((g, i) => {
        const own = stderrOf.get(i);
        if (!own) return g.resolve();
        g.reject(
          new CommandError({
            argv,
            exitCode: err.exitCode,
            stderr: own.join('\n') + '\n',
            ...(this.netns && { netns: this.netns }),
          }),
        );
      });
    }
  }
}
