import { invalidInput } from '../core/errors.js';
import type { CommandRunner, NetnsTarget } from './runner.js';

/**
 * nftables: every change set is one script fed to `nft -f -`, which the kernel applies as one
 * transaction (all or nothing). Components own whole tables and change set/map elements one by one
 * instead of reloading rules. Reads use `nft -j`.
 */

export type NftFamily = 'ip' | 'ip6' | 'inet' | 'bridge' | 'netdev' | 'arp';
const FAMILIES: readonly NftFamily[] = ['ip', 'ip6', 'inet', 'bridge', 'netdev', 'arp'];
const NAME_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
/** Words nft reads as keywords where a name is expected (found the hard way: `fwd`). */
const RESERVED = new Set([
  'fwd',
  'snat',
  'dnat',
  'masquerade',
  'redirect',
  'nat',
  'filter',
  'route',
  'notrack',
  'tproxy',
  'table',
  'chain',
  'set',
  'map',
  'rule',
  'element',
  'flush',
  'add',
  'delete',
  'insert',
  'replace',
  'counter',
  'quota',
  'limit',
  'meta',
  'ip',
  'ip6',
  'inet',
  'bridge',
  'netdev',
  'arp',
  'accept',
  'drop',
  'jump',
  'goto',
  'return',
  'queue',
  'continue',
  'reject',
  'log',
  'dup',
  'ct',
  'mark',
  'type',
  'hook',
  'priority',
  'policy',
  'device',
  'flags',
  'elements',
  'timeout',
]);

function name(kind: string, value: string): string {
  if (!NAME_RE.test(value) || RESERVED.has(value))
    throw invalidInput(`nft ${kind} name "${value}" must match ${NAME_RE} and not be an nft keyword`);
  return value;
}

function family(value: NftFamily): NftFamily {
  if (!FAMILIES.includes(value)) throw invalidInput(`unknown nft family "${String(value)}"`);
  return value;
}

/** Rule text and element values are checked for what would end or comment out a statement. */
function statement(text: string): string {
  if (text.length === 0 || /[\n\r;#{}]/.test(text)) throw invalidInput(`unsafe nft statement ${JSON.stringify(text)}`);
  return text;
}

function element(text: string): string {
  if (text.length === 0 || /[\n\r;#{}]/.test(text)) throw invalidInput(`unsafe nft element ${JSON.stringify(text)}`);
  return text;
}

export interface ChainSpec {
  type: 'filter' | 'nat' | 'route';
  hook: 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting' | 'ingress' | 'egress';
  priority: number | string;
  policy?: 'accept' | 'drop';
  device?: string;
}

export class NftTransaction {
  readonly commands: string[] = [];

  get empty(): boolean {
    return this.commands.length === 0;
  }

  addTable(f: NftFamily, table: string): this {
    this.commands.push(`add table ${family(f)} ${name('table', table)}`);
    return this;
  }

  /** Idempotent delete: `add` first makes sure there is something to delete (no `destroy` in 1.0.6). */
  deleteTable(f: NftFamily, table: string): this {
    this.addTable(f, table);
    this.commands.push(`delete table ${f} ${table}`);
    return this;
  }

  flushTable(f: NftFamily, table: string): this {
    this.commands.push(`flush table ${family(f)} ${name('table', table)}`);
    return this;
  }

  addChain(f: NftFamily, table: string, chain: string, spec?: ChainSpec): this {
    const base = `add chain ${family(f)} ${name('table', table)} ${name('chain', chain)}`;
    if (!spec) {
      this.commands.push(base);
      return this;
    }
    const device = spec.device ? ` device ${statement(spec.device)};` : '';
    this.commands.push(
      `${base} { type ${spec.type} hook ${spec.hook}${device} priority ${statement(String(spec.priority))}; policy ${spec.policy ?? 'accept'}; }`,
    );
    return this;
  }

  flushChain(f: NftFamily, table: string, chain: string): this {
    this.commands.push(`flush chain ${family(f)} ${name('table', table)} ${name('chain', chain)}`);
    return this;
  }

  addRule(f: NftFamily, table: string, chain: string, rule: string): this {
    this.commands.push(`add rule ${family(f)} ${name('table', table)} ${name('chain', chain)} ${statement(rule)}`);
    return this;
  }

  addSet(f: NftFamily, table: string, set: string, spec: { type: string; flags?: string[] }): this {
    const flags = spec.flags?.length ? ` flags ${spec.flags.map(statement).join(', ')};` : '';
    this.commands.push(
      `add set ${family(f)} ${name('table', table)} ${name('set', set)} { type ${statement(spec.type)};${flags} }`,
    );
    return this;
  }

  flushSet(f: NftFamily, table: string, set: string): this {
    this.commands.push(`flush set ${family(f)} ${name('table', table)} ${name('set', set)}`);
    return this;
  }

  addMap(f: NftFamily, table: string, map: string, spec: { type: string; flags?: string[] }): this {
    const flags = spec.flags?.length ? ` flags ${spec.flags.map(statement).join(', ')};` : '';
    this.commands.push(
      `add map ${family(f)} ${name('table', table)} ${name('map', map)} { type ${statement(spec.type)};${flags} }`,
    );
    return this;
  }

  addElements(f: NftFamily, table: string, setOrMap: string, elements: readonly string[]): this {
    if (elements.length === 0) return this;
    this.commands.push(
      `add element ${family(f)} ${name('table', table)} ${name('set', setOrMap)} { ${elements.map(element).join(', ')} }`,
    );
    return this;
  }

  deleteElements(f: NftFamily, table: string, setOrMap: string, elements: readonly string[]): this {
    if (elements.length === 0) return this;
    this.commands.push(
      `delete element ${family(f)} ${name('table', table)} ${name('set', setOrMap)} { ${elements.map(element).join(', ')} }`,
    );
    return this;
  }

  render(): string {
    return this.commands.join('\n') + '\n';
  }
}

export interface NftTable {
  family: NftFamily;
  name: string;
  handle: number;
}

export interface NftChain {
  family: NftFamily;
  table: string;
  name: string;
  handle: number;
  type?: string;
  hook?: string;
  prio?: number;
  policy?: string;
}

export interface NftSet {
  family: NftFamily;
  table: string;
  name: string;
  type: string | string[];
  /** Present for maps. */
  map?: string;
  elem?: unknown[];
}

export interface NftRule {
  family: NftFamily;
  table: string;
  chain: string;
  handle: number;
  expr: unknown[];
  comment?: string;
}

export interface NftTableContents {
  table?: NftTable;
  chains: NftChain[];
  sets: NftSet[];
  maps: NftSet[];
  rules: NftRule[];
}

type NftJsonEntry = { table?: NftTable; chain?: NftChain; set?: NftSet; map?: NftSet; rule?: NftRule };

export function parseNftJson(stdout: string): NftTableContents {
  const parsed = JSON.parse(stdout || '{"nftables":[]}') as { nftables: NftJsonEntry[] };
  const out: NftTableContents = { chains: [], sets: [], maps: [], rules: [] };
  for (const e of parsed.nftables) {
    if (e.table) out.table = e.table;
    if (e.chain) out.chains.push(e.chain);
    if (e.set) out.sets.push(e.set);
    if (e.map) out.maps.push(e.map);
    if (e.rule) out.rules.push(e.rule);
  }
  return out;
}

export class NftClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  /** Applies the whole transaction atomically. */
  async apply(tx: NftTransaction): Promise<void> {
    if (tx.empty) return;
    await this.runner.run({ argv: ['nft', '-f', '-'], stdin: tx.render(), netns: this.netns });
  }

  async tables(): Promise<NftTable[]> {
    const { stdout } = await this.runner.run({ argv: ['nft', '-j', 'list', 'tables'], netns: this.netns });
    return (JSON.parse(stdout || '{"nftables":[]}') as { nftables: NftJsonEntry[] }).nftables.flatMap((e) =>
      e.table ? [e.table] : [],
    );
  }

  /** The table's chains, sets, maps (with elements) and rules; undefined when there is no such table. */
  async table(f: NftFamily, table: string): Promise<NftTableContents | undefined> {
    try {
      const { stdout } = await this.runner.run({
        argv: ['nft', '-j', 'list', 'table', family(f), name('table', table)],
        netns: this.netns,
      });
      return parseNftJson(stdout);
    } catch (err) {
      if (/No such file or directory/.test(String((err as Error).message))) return undefined;
      throw err;
    }
  }
}
