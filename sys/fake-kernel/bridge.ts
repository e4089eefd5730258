import { formatIp, parseIp } from '../../core/cidr.js';
import { batchLines, runLines, toolOptions, Words, type ToolContext, type ToolResult } from './batch.js';
import { ToolFailure } from './errors.js';
import { renderFdb } from './render.js';
import { fdbAdd, fdbDelete } from './entries.js';
import type { FakeLink } from './state.js';

/** `bridge fdb` as the sys/ wrappers run it: static entries on VXLAN devices; reads with -j. */

export function runBridge(ctx0: ToolContext, args: string[], stdin: string): ToolResult {
  const { options, rest, ctx, stdin: batch } = toolOptions('bridge', args, ctx0, ['-j', '-force']);
  const json = options.has('-j');
  return runLines({
    tool: 'bridge',
    batch,
    force: options.has('-force'),
    lines: batch ? batchLines(stdin) : [rest],
    ctx,
    exec: (words) => bridgeLine(ctx, new Words('bridge', words), json),
  });
}

function bridgeLine(ctx: ToolContext, w: Words, json: boolean): string | void {
  w.expect('fdb');
  const verb = w.next('command');
  if (verb === 'show') {
    if (!json) throw w.unmodelled('text output (use -j)');
    return JSON.stringify(show(ctx, w)) + '\n';
  }
  if (verb !== 'append' && verb !== 'replace' && verb !== 'del') throw w.unmodelled(`fdb ${verb}`);
  const mac = w.next('MAC').toLowerCase();
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(mac)) throw w.unmodelled(`MAC "${mac}"`);
  w.expect('dev');
  const dev = ctx.ns.requireLink(w.next('device'));
  const dst = w.take('dst') ? formatIp(parseIp(w.next('dst'))) : undefined;
  w.expect('self');
  const permanent = w.take('permanent');
  w.end();
  if (!dev.vxlan) throw w.unmodelled(`fdb entries on a ${dev.kind} (only vxlan devices)`);
  if (verb === 'del') {
    if (permanent) throw w.unmodelled('fdb del with a state');
    fdbDelete(dev, mac, dst);
    return;
  }
  if (!permanent || dst === undefined) throw w.unmodelled('fdb entries other than static ones with a dst');
  fdbAdd(dev, mac, dst, verb);
}

function show(ctx: ToolContext, w: Words): unknown[] {
  const ns = ctx.ns;
  let dev: FakeLink | undefined;
  let br: FakeLink | undefined;
  while (!w.done) {
    const word = w.next();
    const name = w.next('device');
    if (word === 'dev') {
      dev = ns.link(name);
      if (!dev) throw new ToolFailure(`Cannot find device "${name}"`, 255, true);
    } else if (word === 'br') {
      br = ns.link(name);
      if (!br) throw new ToolFailure(`Cannot find bridge device "${name}"`, 255, true);
    } else throw w.unmodelled(`fdb show ${word}`);
  }
  let links = ns.linkList();
  if (br) links = links.filter((l) => l === br || l.master === br);
  if (dev) links = links.filter((l) => l === dev);
  return renderFdb(links, dev === undefined);
}
