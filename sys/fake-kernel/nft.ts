import { FakeKernelUnmodelled, ToolFailure } from './errors.js';

/**
 * nftables in the fake: tables, chains (base chains with type/hook/priority/policy), rules kept as
 * their text, sets and maps with elements. A script (`nft -f -`) is one transaction: it applies to
 * a copy that replaces the state only when every command succeeded. Reads render `nft -j` JSON;
 * of a rule's expressions only its counter is modelled (read the rules' text from the dump).
 */

export interface NftChainState {
  name: string;
  handle: number;
  base?: { type: string; hook: string; device?: string; prio: number; policy: string };
  rules: Array<{ handle: number; text: string }>;
}

export interface NftSetState {
  name: string;
  handle: number;
  map: boolean;
  keyType: string;
  valueType?: string;
  flags: string[];
  elems: string[];
}

export interface NftTableState {
  family: string;
  name: string;
  handle: number;
  /** Chains, sets and rules share one handle counter per table. */
  nextHandle: number;
  chains: NftChainState[];
  sets: NftSetState[];
}

export class NftState {
  tables: NftTableState[] = [];
  nextTableHandle = 1;

  table(family: string, name: string): NftTableState | undefined {
    return this.tables.find((t) => t.family === family && t.name === name);
  }
}

const FAMILY = '(ip|ip6|inet|bridge|netdev|arp)';
const NAME = '([A-Za-z][A-Za-z0-9_-]*)';
const PRIORITIES: Record<string, Record<string, number>> = {
  bridge: { dstnat: -300, filter: -200, out: 100, srcnat: 300 },
  default: { raw: -300, mangle: -150, dstnat: -100, filter: 0, security: 50, srcnat: 100 },
};

/** One failed script line, printed as nft does (location, the line, carets under the culprit). */
function failure(lineNo: number, line: string, culprit: string, message: string, fromKernel: boolean): ToolFailure {
  const at = Math.max(0, line.indexOf(culprit));
  const from = at + 1;
  const to = at + Math.max(1, culprit.length);
  const text = fromKernel ? `Could not process rule: ${message}` : message;
  return new ToolFailure(
    `/dev/stdin:${lineNo}:${from}-${to}: Error: ${text}\n${line}\n${' '.repeat(at)}${'^'.repeat(to - from + 1)}\n`,
    1,
  );
}

/** Applies an `nft -f -` script atomically. */
export function applyNftScript(state: NftState, script: string): void {
  const work = structuredClone({ tables: state.tables, nextTableHandle: state.nextTableHandle });
  const draft = Object.assign(new NftState(), work);
  script.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line !== '') applyLine(draft, line, i + 1);
  });
  state.tables = draft.tables;
  state.nextTableHandle = draft.nextTableHandle;
}

function applyLine(s: NftState, line: string, n: number): void {
  let m: RegExpExecArray | null;
  const tableOf = (family: string, name: string, fromKernel: boolean): NftTableState => {
    const t = s.table(family, name);
    if (!t) throw failure(n, line, name, 'No such file or directory', fromKernel);
    return t;
  };
  if ((m = new RegExp(`^add table ${FAMILY} ${NAME}$`).exec(line))) {
    if (!s.table(m[1]!, m[2]!))
      s.tables.push({ family: m[1]!, name: m[2]!, handle: s.nextTableHandle++, nextHandle: 1, chains: [], sets: [] });
  } else if ((m = new RegExp(`^delete table ${FAMILY} ${NAME}$`).exec(line))) {
    const t = tableOf(m[1]!, m[2]!, true);
    s.tables.splice(s.tables.indexOf(t), 1);
  } else if ((m = new RegExp(`^flush table ${FAMILY} ${NAME}$`).exec(line))) {
    // Rules go; set elements stay (as nft 1.0.6 does).
    for (const c of tableOf(m[1]!, m[2]!, true).chains) c.rules = [];
  } else if ((m = new RegExp(`^add chain ${FAMILY} ${NAME} ${NAME}(?: \\{ (.*) \\})?$`).exec(line))) {
    addChain(tableOf(m[1]!, m[2]!, false), m[3]!, m[4], (culprit, msg) => failure(n, line, culprit, msg, true));
  } else if ((m = new RegExp(`^flush chain ${FAMILY} ${NAME} ${NAME}$`).exec(line))) {
    const c = tableOf(m[1]!, m[2]!, false).chains.find((x) => x.name === m![3]);
    if (!c) throw failure(n, line, m[3]!, 'No such file or directory', true);
    c.rules = [];
  } else if ((m = new RegExp(`^flush set ${FAMILY} ${NAME} ${NAME}$`).exec(line))) {
    const set = tableOf(m[1]!, m[2]!, false).sets.find((x) => x.name === m![3]);
    if (!set) throw failure(n, line, m[3]!, 'No such file or directory', true);
    set.elems = [];
  } else if ((m = new RegExp(`^add rule ${FAMILY} ${NAME} ${NAME} (.+)$`).exec(line))) {
    const t = tableOf(m[1]!, m[2]!, false);
    const c = t.chains.find((x) => x.name === m![3]);
    if (!c) throw failure(n, line, m[3]!, 'No such file or directory', false);
    c.rules.push({ handle: t.nextHandle++, text: m[4]! });
  } else if (
    (m = new RegExp(`^add (set|map) ${FAMILY} ${NAME} ${NAME} \\{ type ([^;]+);(?: flags ([^;]+);)? \\}$`).exec(line))
  ) {
    const t = tableOf(m[2]!, m[3]!, false);
    if (t.sets.some((x) => x.name === m![4])) return;
    const [key, value] = m[5]!.split(' : ');
    if ((m[1] === 'map') !== (value !== undefined)) throw new FakeKernelUnmodelled(`nft statement "${line}"`);
    t.sets.push({
      name: m[4]!,
      handle: t.nextHandle++,
      map: m[1] === 'map',
      keyType: key!.trim(),
      ...(value !== undefined && { valueType: value.trim() }),
      flags: m[6] ? m[6].split(',').map((f) => f.trim()) : [],
      elems: [],
    });
  } else if ((m = new RegExp(`^(add|delete) element ${FAMILY} ${NAME} ${NAME} \\{ (.*) \\}$`).exec(line))) {
    const set = tableOf(m[2]!, m[3]!, false).sets.find((x) => x.name === m![4]);
    if (!set) throw failure(n, line, m[4]!, 'No such file or directory', false);
    for (const e of m[5]!.split(', ').map((x) => x.trim())) {
      const key = set.map ? e.split(' : ')[0]!.trim() : e;
      const at = set.elems.findIndex((x) => (set.map ? x.split(' : ')[0]!.trim() : x) === key);
      if (m[1] === 'add') {
        if (at < 0) set.elems.push(e);
        else if (set.elems[at] !== e) throw failure(n, line, e, 'File exists', true);
      } else {
        if (at < 0) throw failure(n, line, e, 'No such file or directory', true);
        set.elems.splice(at, 1);
      }
    }
  } else {
    throw new FakeKernelUnmodelled(`nft statement "${line}"`);
  }
}

function addChain(
  t: NftTableState,
  name: string,
  body: string | undefined,
  fail: (culprit: string, message: string) => ToolFailure,
): void {
  let base: NftChainState['base'];
  if (body !== undefined) {
    const b = /^type (\w+) hook (\w+)(?: device (\S+);)? priority (\S+); policy (accept|drop);$/.exec(body);
    if (!b) throw new FakeKernelUnmodelled(`nft chain body "{ ${body} }"`);
    const prioText = b[4]!;
    const named = (PRIORITIES[t.family] ?? PRIORITIES.default!)[prioText];
    if (named === undefined && !/^-?\d+$/.test(prioText)) throw new FakeKernelUnmodelled(`nft priority "${prioText}"`);
    base = {
      type: b[1]!,
      hook: b[2]!,
      ...(b[3] !== undefined && { device: b[3] }),
      prio: named ?? Number(prioText),
      policy: b[5]!,
    };
  }
  const existing = t.chains.find((c) => c.name === name);
  if (!existing) {
    t.chains.push({ name, handle: t.nextHandle++, ...(base && { base }), rules: [] });
    return;
  }
  if (!base) return;
  // A chain cannot become a base chain; a base chain may change its policy.
  if (!existing.base || existing.base.hook !== base.hook || existing.base.type !== base.type)
    throw fail(`{ ${body} }`, 'Operation not supported');
  existing.base.policy = base.policy;
}

// ---- reads ----------------------------------------------------------------------------------

const METAINFO = { metainfo: { version: '1.0.6', release_name: 'Lester Gooch #5', json_schema_version: 1 } };

export function renderNftTables(s: NftState): string {
  return nftJson([METAINFO, ...s.tables.map((t) => ({ table: tableHead(t) }))]);
}

/** `nft -j list table F T`, or undefined when there is no such table. */
export function renderNftTable(s: NftState, family: string, name: string): string | undefined {
  const t = s.table(family, name);
  if (!t) return undefined;
  const out: unknown[] = [METAINFO, { table: tableHead(t) }];
  for (const set of t.sets) {
    const body = {
      family: t.family,
      name: set.name,
      table: t.name,
      type: nftType(set.keyType),
      handle: set.handle,
      ...(set.map && { map: nftType(set.valueType!) }),
      ...(set.flags.length > 0 && { flags: set.flags }),
      ...(set.elems.length > 0 && { elem: set.elems.map((e) => nftElement(e, set.map)) }),
    };
    out.push(set.map ? { map: body } : { set: body });
  }
  for (const c of t.chains) {
    out.push({
      chain: {
        family: t.family,
        table: t.name,
        name: c.name,
        handle: c.handle,
        ...(c.base && { type: c.base.type, hook: c.base.hook, prio: c.base.prio, policy: c.base.policy }),
      },
    });
  }
  // Rules: their comment, and a counter that has seen nothing (no packet passes the fake); other
  // expressions are not modelled (read the rules' text from the dump).
  for (const c of t.chains) {
    for (const r of c.rules) {
      const comment = /comment "([^"]*)"/.exec(r.text)?.[1];
      out.push({
        rule: {
          family: t.family,
          table: t.name,
          chain: c.name,
          handle: r.handle,
          ...(comment !== undefined && { comment }),
          expr: /\bcounter\b/.test(r.text) ? [{ counter: { packets: 0, bytes: 0 } }] : [],
        },
      });
    }
  }
  return nftJson(out);
}

function tableHead(t: NftTableState): { family: string; name: string; handle: number } {
  return { family: t.family, name: t.name, handle: t.handle };
}

function nftType(text: string): string | string[] {
  const parts = text.split(' . ').map((x) => x.trim());
  return parts.length > 1 ? parts : parts[0]!;
}

function nftValue(text: string): string | number {
  const t = text.trim();
  const quoted = /^"(.*)"$/.exec(t);
  if (quoted) return quoted[1]!;
  if (/^0x[0-9a-f]+$/i.test(t) || /^\d+$/.test(t)) return Number(t);
  return t;
}

function nftElement(text: string, map: boolean): unknown {
  const key = (k: string) => {
    const parts = k.split(' . ');
    return parts.length > 1 ? { concat: parts.map(nftValue) } : nftValue(k);
  };
  if (!map) return key(text);
  const [k, v] = text.split(' : ');
  return [key(k!), nftValue(v!)];
}

/** JSON with nft's (jansson's) spacing: `{"a": 1, "b": [1, 2]}`. */
function nftJson(entries: unknown[]): string {
  const enc = (v: unknown): string => {
    if (Array.isArray(v)) return `[${v.map(enc).join(', ')}]`;
    if (v !== null && typeof v === 'object')
      return `{${Object.entries(v)
        .map(([k, x]) => `${JSON.stringify(k)}: ${enc(x)}`)
        .join(', ')}}`;
    return JSON.stringify(v);
  };
  return `${enc({ nftables: entries })}\n`;
}

/** The table as diff-friendly lines, rules included. */
export function dumpNft(s: NftState): string[] {
  const out: string[] = [];
  for (const t of s.tables) {
    const where = `${t.family} ${t.name}`;
    out.push(`table ${where}`);
    for (const set of t.sets) {
      const type = set.map ? `${set.keyType} : ${set.valueType}` : set.keyType;
      const flags = set.flags.length ? ` flags ${set.flags.join(',')}` : '';
      out.push(`${set.map ? 'map' : 'set'} ${where} ${set.name} type ${type}${flags} { ${set.elems.join(', ')} }`);
    }
    for (const c of t.chains) {
      const b = c.base;
      out.push(
        `chain ${where} ${c.name}${b ? ` type ${b.type} hook ${b.hook}${b.device ? ` device ${b.device}` : ''} priority ${b.prio} policy ${b.policy}` : ''}`,
      );
      for (const r of c.rules) out.push(`rule ${where} ${c.name} ${r.text}`);
    }
  }
  return out;
}
