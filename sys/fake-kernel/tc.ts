import { batchLines, runLines, toolOptions, Words, type ToolContext, type ToolResult } from './batch.js';
import { extack, ToolFailure } from './errors.js';
import { renderIngressFilters, renderQdiscs } from './render.js';
import type { FakeLink, Tbf } from './state.js';

/**
 * `tc` as the sys/ wrappers run it: a root tbf, the ingress qdisc, u32 match-all filters that
 * redirect to an ifb; reads with -j. htb is not modelled (netd does not use it).
 *
 * tbf numbers follow the real round trip, so `tc -j qdisc show` prints what the real one does:
 * the kernel turns the burst into a time with its rate's reciprocal (mult/shift, psched_l2t_ns),
 * keeps it in 64 ns ticks, and tc converts it back through whole microseconds.
 */

const TICKS_PER_US = 1000 / 64; // /proc/net/psched: 1 tick = 64 ns, 1 µs clock
const U32 = 2 ** 32;

function rateReciprocal(rate: bigint): { mult: bigint; shift: bigint } {
  let factor = 1_000_000_000n;
  let shift = 0n;
  for (;;) {
    const mult = factor / rate;
    if (mult & (1n << 31n) || factor & (1n << 63n)) return { mult, shift };
    factor <<= 1n;
    shift += 1n;
  }
}

function makeTbf(rateBytes: bigint, burst: number, latencyUs: number | undefined, limit: number | undefined) {
  const { mult, shift } = rateReciprocal(rateBytes);
  const bufferNs = (BigInt(burst) * mult) >> shift;
  const limitBytes = limit ?? Math.trunc((Number(rateBytes) * latencyUs!) / 1e6 + burst) % U32;
  return { rateBytes, bufferTicks: Number(bufferNs >> 6n), limitBytes };
}

/** The options `tc -j` prints for a tbf: rate in bytes/s, burst and latency recomputed from ticks. */
export function tbfOptions(t: Tbf): { rate: number; burst: number; lat: number } {
  const rate = Number(t.rateBytes);
  const bufferUs = Math.trunc(t.bufferTicks / TICKS_PER_US);
  return {
    rate,
    burst: Math.trunc((rate * bufferUs) / 1e6),
    lat: Math.trunc(1e6 * (t.limitBytes / rate) - bufferUs),
  };
}

const RATE_UNITS: Record<string, number> = { bit: 1, kbit: 1e3, mbit: 1e6, gbit: 1e9, tbit: 1e12 };

export function runTc(ctx0: ToolContext, args: string[], stdin: string): ToolResult {
  const { options, rest, ctx, stdin: batch } = toolOptions('tc', args, ctx0, ['-j', '-force']);
  const json = options.has('-j');
  return runLines({
    tool: 'tc',
    batch,
    force: options.has('-force'),
    lines: batch ? batchLines(stdin) : [rest],
    ctx,
    exec: (words) => tcLine(ctx, new Words('tc', words), json),
  });
}

function tcLine(ctx: ToolContext, w: Words, json: boolean): string | void {
  const object = w.next('object');
  const verb = w.next('command');
  if (object === 'qdisc' && verb === 'show' && w.peek() === undefined) {
    // Every device's qdiscs, each naming its device (in the order the devices were made).
    if (!json) throw w.unmodelled('text output (use -j)');
    const all = [...ctx.ns.links.values()].flatMap((l) =>
      renderQdiscs(l, ctx.kernel.cpus).map(({ kind, handle, ...rest }) => ({ kind, handle, dev: l.name, ...rest })),
    );
    return JSON.stringify(all) + '\n';
  }
  w.expect('dev');
  const link = ctx.ns.requireLink(w.next('device'));
  switch (`${object} ${verb}`) {
    case 'qdisc show':
      w.end();
      if (!json) throw w.unmodelled('text output (use -j)');
      return JSON.stringify(renderQdiscs(link, ctx.kernel.cpus)) + '\n';
    case 'filter show':
      w.expect('parent');
      w.expect('ffff:');
      w.end();
      if (!json) throw w.unmodelled('text output (use -j)');
      return JSON.stringify(renderIngressFilters(link)) + '\n';
    case 'class show':
      // Classes exist only under htb, which the fake does not model: there are none.
      w.end();
      return '';
    case 'qdisc replace':
      return qdiscReplace(ctx, link, w);
    case 'qdisc del':
      return qdiscDel(ctx, link, w);
    case 'filter replace':
      return filterReplace(ctx, link, w);
    default:
      throw w.unmodelled(`"${object} ${verb}"`);
  }
}

function qdiscReplace(ctx: ToolContext, link: FakeLink, w: Words): void {
  if (w.take('handle')) {
    w.expect('ffff:');
    w.expect('ingress');
    w.end();
    link.ingress ??= { filters: [] };
    return;
  }
  w.expect('root');
  const words: string[] = [];
  let overhead: number | undefined;
  if (w.take('stab')) {
    w.expect('overhead');
    overhead = w.int('overhead');
    words.push(`stab overhead ${overhead}`);
  }
  if (w.peek() !== 'tbf') throw w.unmodelled(`root qdisc "${w.peek()}" (only tbf)`);
  w.next();
  w.expect('rate');
  const rateText = w.next('rate');
  const r = /^(\d+(?:\.\d+)?)([kmgt]?bit)$/i.exec(rateText);
  if (!r) throw w.unmodelled(`rate "${rateText}"`);
  const rateBytes = BigInt(Math.floor((Number(r[1]) * RATE_UNITS[r[2]!.toLowerCase()]!) / 8));
  w.expect('burst');
  const burst = w.int('burst');
  let latencyUs: number | undefined;
  let limit: number | undefined;
  if (w.take('latency')) {
    const l = /^(\d+)(ms|us)$/.exec(w.next('latency'));
    if (!l) throw w.unmodelled('latency other than Nms or Nus');
    latencyUs = Number(l[1]) * (l[2] === 'ms' ? 1000 : 1);
  } else {
    w.expect('limit');
    limit = w.int('limit');
  }
  w.end();
  words.push(
    `tbf rate ${rateText} burst ${burst} ${latencyUs !== undefined ? `latency ${latencyUs}us` : `limit ${limit}`}`,
  );
  // Replacing a tbf changes it in place (same handle); anything else grafts a new one.
  const handle = link.root?.handle ?? ctx.kernel.nextQdiscHandle();
  link.root = { kind: 'tbf', handle, ...makeTbf(rateBytes, burst, latencyUs, limit), spec: words.join(' ') };
}

function qdiscDel(ctx: ToolContext, link: FakeLink, w: Words): void {
  const which = w.next('root or ingress');
  w.end();
  if (which === 'root') {
    if (!link.root) throw extack('Cannot delete qdisc with handle of zero.');
    link.root = undefined;
  } else if (which === 'ingress') {
    if (!link.ingress) throw extack('Cannot find specified qdisc on specified device.');
    for (const f of link.ingress.filters) ctx.ns.actionIndexes.delete(f.action);
    link.ingress = undefined;
  } else throw w.unmodelled(`qdisc del ${which}`);
}

function filterReplace(ctx: ToolContext, link: FakeLink, w: Words): void {
  for (const word of ['parent', 'ffff:', 'protocol', 'all', 'prio']) w.expect(word);
  const prio = w.int('prio');
  if (prio !== 1) throw w.unmodelled('a prio other than 1');
  // An explicit handle: only the first key of hash table 800 (what sys/tc.ts gives) is modelled.
  let handle: number | undefined;
  if (w.peek() === 'handle') {
    w.expect('handle');
    const h = w.next('handle');
    if (h !== '800::800') throw w.unmodelled(`filter handle ${h}`);
    handle = 0x800;
  }
  for (const word of ['u32', 'match', 'u32', '0', '0', 'action', 'mirred', 'egress', 'redirect', 'dev']) w.expect(word);
  const target = w.next('device');
  w.end();
  // tc resolves the target while parsing the action, before it asks the kernel anything.
  if (!ctx.ns.link(target))
    throw new ToolFailure(
      `Cannot find device "${target}"\nbad action parsing\nparse_action: bad value (5:mirred)!\nIllegal "action"`,
      1,
    );
  if (!link.ingress)
    throw new ToolFailure("Error: Parent Qdisc doesn't exists.\nWe have an error talking to the kernel", 2);
  // With a handle, `replace` replaces that filter (its action is made anew); without one it adds
  // another key (the kernel numbers them 800::800, 800::801, ...).
  if (handle !== undefined) {
    const at = link.ingress.filters.findIndex((f) => f.key === handle);
    if (at >= 0) {
      ctx.ns.actionIndexes.delete(link.ingress.filters[at]!.action);
      link.ingress.filters[at] = { prio, key: handle, action: ctx.ns.allocateActionIndex(), target };
      return;
    }
    link.ingress.filters.push({ prio, key: handle, action: ctx.ns.allocateActionIndex(), target });
    return;
  }
  const keys = new Set(link.ingress.filters.map((f) => f.key));
  let key = 0x800;
  while (keys.has(key)) key++;
  link.ingress.filters.push({ prio, key, action: ctx.ns.allocateActionIndex(), target });
}
