import type { CommandRunner, NetnsTarget } from './runner.js';
import { isCommandError } from './runner.js';
import { ifname, token, LineBatch } from './tokens.js';

/**
 * `tc`: reads with `-j`, writes as one `tc -batch -`. Rates are bits per second. Shaping both
 * directions of a container port: a root qdisc (tbf/htb) on the host-side veth shapes traffic into
 * the container; an ingress qdisc with a u32 match-all filter and `mirred egress redirect` to an
 * ifb shapes traffic out of it (the kernel has no act_police here).
 */

export interface Qdisc {
  kind: string;
  handle: string;
  parent?: string;
  root?: boolean;
  options?: Record<string, unknown>;
}

export interface TcClass {
  class: string;
  handle: string;
  parent?: string;
  rate?: number;
  ceil?: number;
}

export interface TcFilter {
  protocol?: string;
  pref?: number;
  kind?: string;
  options?: Record<string, unknown>;
}

export interface TbfSpec {
  rateBps: number;
  burstBytes: number;
  latencyMs?: number;
  limitBytes?: number;
  /** Added to each packet's size when metering (a size table); -14 meters IP packets, not frames. */
  overheadBytes?: number;
}

function rate(bps: number): string {
  if (!Number.isSafeInteger(bps) || bps <= 0)
    throw new RangeError(`rate must be a positive integer (bits/s), got ${bps}`);
  return `${bps}bit`;
}

export class TcBatch extends LineBatch {
  /** Root token bucket: `replace` makes it an idempotent "ensure". */
  rootTbf(dev: string, s: TbfSpec): this {
    return this.add(
      'qdisc',
      'replace',
      'dev',
      ifname(dev),
      'root',
      ...(s.overheadBytes !== undefined ? ['stab', 'overhead', s.overheadBytes] : []),
      'tbf',
      'rate',
      rate(s.rateBps),
      'burst',
      s.burstBytes,
      ...(s.limitBytes !== undefined ? ['limit', s.limitBytes] : ['latency', `${s.latencyMs ?? 50}ms`]),
    );
  }

  rootHtb(dev: string, opts: { handle?: string; defaultClass?: number } = {}): this {
    return this.add(
      'qdisc',
      'replace',
      'dev',
      ifname(dev),
      'root',
      'handle',
      opts.handle ?? '1:',
      'htb',
      'default',
      opts.defaultClass ?? 10,
    );
  }

  htbClass(dev: string, parent: string, classid: string, rateBps: number, ceilBps?: number): this {
    return this.add(
      'class',
      'replace',
      'dev',
      ifname(dev),
      'parent',
      parent,
      'classid',
      classid,
      'htb',
      'rate',
      rate(rateBps),
      'ceil',
      rate(ceilBps ?? rateBps),
    );
  }

  ingress(dev: string): this {
    return this.add('qdisc', 'replace', 'dev', ifname(dev), 'handle', 'ffff:', 'ingress');
  }

  /** Everything arriving on `dev` leaves through `ifb` instead, where a root qdisc shapes it. */
  redirectIngressTo(dev: string, ifb: string): this {
    return this.add(
      'filter',
      'replace',
      'dev',
      ifname(dev),
      'parent',
      'ffff:',
      'protocol',
      'all',
      'prio',
      1,
      // A fixed handle makes `replace` replace: without one, every call (each daemon restart,
      // which forgets what it applied) added another identical filter.
      'handle',
      '800::800',
      'u32',
      'match',
      'u32',
      0,
      0,
      'action',
      'mirred',
      'egress',
      'redirect',
      'dev',
      ifname(ifb),
    );
  }

  deleteRoot(dev: string): this {
    return this.add('qdisc', 'del', 'dev', ifname(dev), 'root');
  }

  deleteIngress(dev: string): this {
    return this.add('qdisc', 'del', 'dev', ifname(dev), 'ingress');
  }
}

const UNITS: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12 };

/** "5Mbit" → 5000000 (bits/s). */
export function parseRate(text: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?bit)$/i.exec(text);
  return m ? Math.round(Number(m[1]) * UNITS[m[2]!.toLowerCase()]!) : undefined;
}

/** Parses `tc class show` lines such as "class htb 1:10 root prio 0 rate 5Mbit ceil 5Mbit burst 1600b cburst 1600b". */
export function parseClasses(text: string): TcClass[] {
  const out: TcClass[] = [];
  for (const l of text.split('\n')) {
    const m = /^class (\S+) (\S+) (?:root|parent (\S+))/.exec(l.trim());
    if (!m) continue;
    const rate = /\brate (\S+)/.exec(l)?.[1];
    const ceil = /\bceil (\S+)/.exec(l)?.[1];
    out.push({
      class: m[1]!,
      handle: m[2]!,
      ...(m[3] && { parent: m[3] }),
      ...(rate && { rate: parseRate(rate) }),
      ...(ceil && { ceil: parseRate(ceil) }),
    });
  }
  return out;
}

export class TcClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  private async json<T>(args: string[]): Promise<T> {
    const { stdout } = await this.runner.run({ argv: ['tc', '-j', ...args], netns: this.netns });
    return (stdout.trim() === '' ? [] : JSON.parse(stdout)) as T;
  }

  qdiscs(dev: string): Promise<Qdisc[]> {
    return this.json<Qdisc[]>(['qdisc', 'show', 'dev', ifname(dev)]);
  }

  /** Every device's qdiscs in one read (each names its device). */
  allQdiscs(): Promise<Array<Qdisc & { dev: string }>> {
    return this.json<Array<Qdisc & { dev: string }>>(['qdisc', 'show']);
  }

  /** iproute2 6.1 prints htb classes as text even with -j, so they are parsed from text. */
  async classes(dev: string): Promise<TcClass[]> {
    const { stdout } = await this.runner.run({ argv: ['tc', 'class', 'show', 'dev', ifname(dev)], netns: this.netns });
    return parseClasses(stdout);
  }

  filters(dev: string, parent: string): Promise<TcFilter[]> {
    return this.json<TcFilter[]>(['filter', 'show', 'dev', ifname(dev), 'parent', token(parent)]);
  }

  async apply(batch: TcBatch): Promise<void> {
    if (batch.empty) return;
    await this.runner.run({ argv: ['tc', '-batch', '-'], stdin: batch.render(), netns: this.netns });
  }

  /** Removing a root qdisc that is not there (or the default one) is success. */
  async deleteRootIfExists(dev: string): Promise<void> {
    try {
      await this.runner.run({ argv: ['tc', 'qdisc', 'del', 'dev', ifname(dev), 'root'], netns: this.netns });
    } catch (err) {
      if (!isCommandError(err, 'not-found') && !/handle of zero|No such file/i.test(String((err as Error).message)))
        throw err;
    }
  }
}
