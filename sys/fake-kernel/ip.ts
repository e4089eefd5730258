import { formatIp, parseIp } from '../../core/cidr.js';
import { badArgument, cannotFindDevice, FakeKernelUnmodelled, rtnl, ToolFailure } from './errors.js';
import { batchLines, runLines, toolOptions, Words, type ToolContext, type ToolResult } from './batch.js';
import { renderAddrs, renderLink, renderNeighbours, renderProxies, renderRoute, sortRoutes } from './render.js';
import {
  addAddress,
  deleteAddress,
  deleteNeighbour,
  deleteProxy,
  deleteRoute,
  replaceNeighbour,
  replaceProxy,
  replaceRoute,
  type RouteSpec,
} from './entries.js';
import {
  addVeth,
  addVxlan,
  destroyNetns,
  enslave,
  moveToNetns,
  release,
  removeLink,
  rename,
  setMac,
  setMtu,
  setUp,
} from './links.js';
import { MAIN_TABLE, type FakeLink, type FakeNetns, type Scope } from './state.js';

/** `ip` as the sys/ wrappers run it: link, addr, route, neigh, netns; reads with -j. */

interface IpOptions {
  json: boolean;
  details: boolean;
  family: 4 | 6 | undefined;
}

export function runIp(ctx0: ToolContext, args: string[], stdin: string): ToolResult {
  const { options, rest, ctx, stdin: batch } = toolOptions('ip', args, ctx0, ['-j', '-d', '-4', '-6', '-force']);
  const opts: IpOptions = {
    json: options.has('-j'),
    details: options.has('-d'),
    family: options.has('-4') ? 4 : options.has('-6') ? 6 : undefined,
  };
  if (batch && rest.length > 0) throw new FakeKernelUnmodelled(`ip -batch with arguments ${rest.join(' ')}`);
  return runLines({
    tool: 'ip',
    batch,
    force: options.has('-force'),
    lines: batch ? batchLines(stdin) : [rest],
    ctx,
    exec: (words) => ipLine(ctx, new Words('ip', words), opts),
  });
}

function ipLine(ctx: ToolContext, w: Words, opts: IpOptions): string | void {
  const object = w.next('object');
  const verb = w.next('command');
  const ns = ctx.ns;
  if (verb === 'show' || verb === 'list') {
    if (!opts.json) throw w.unmodelled('text output (use -j)');
    return JSON.stringify(show(ctx, object, w, opts)) + '\n';
  }
  switch (`${object} ${verb}`) {
    case 'link add':
      return linkAdd(ctx, w);
    case 'link del':
    case 'link delete':
      return linkDel(ns, w);
    case 'link set':
      return linkSet(ctx, w);
    case 'addr add':
    case 'addr replace':
    case 'addr del': {
      const cidr = w.next('address');
      w.expect('dev');
      const dev = ns.requireLink(w.next('device'));
      w.take('nodad'); // no duplicate address detection is modelled: every address is usable at once
      w.end();
      if (verb === 'del') deleteAddress(dev, cidr);
      else addAddress(dev, cidr, verb === 'add' ? 'add' : 'replace');
      return;
    }
    case 'route replace':
    case 'route del':
      return route(ns, verb, w);
    case 'neigh replace':
    case 'neigh del':
      return neigh(ns, verb, w);
    case 'netns add':
    case 'netns del': {
      const name = w.next('name');
      w.end();
      if (ns !== ctx.kernel.root) throw w.unmodelled('netns commands inside a namespace');
      if (verb === 'add') ctx.kernel.addNamed(name);
      else {
        const target = ctx.kernel.byName(name);
        if (!target)
          throw new ToolFailure(`Cannot remove namespace file "/run/netns/${name}": No such file or directory`, 1);
        destroyNetns(ctx.kernel, target);
      }
      return;
    }
    default:
      throw w.unmodelled(`"${object} ${verb}"`);
  }
}

/** `netns NAME|PATH` as iproute2 opens it. */
function netnsArg(ctx: ToolContext, value: string): FakeNetns {
  const ns = value.includes('/') ? ctx.kernel.atPath(value) : ctx.kernel.byName(value);
  if (!ns) throw badArgument(value, 'Invalid "netns" value');
  return ns;
}

/** `master NAME`: resolved while ip parses the line, so a missing one ends the tool. */
function masterArg(ns: FakeNetns, name: string): FakeLink {
  const l = ns.link(name);
  if (!l) throw badArgument(name, 'Device does not exist');
  return l;
}

function macArg(value: string): string {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(value)) throw new ToolFailure(`"${value}" is invalid lladdr.`, 1);
  return value.toLowerCase();
}

function linkAdd(ctx: ToolContext, w: Words): void {
  const ns = ctx.ns;
  const name = w.next('name');
  let mtu: number | undefined;
  let group: number | undefined;
  let master: FakeLink | undefined;
  let up = false;
  for (;;) {
    const word = w.next('"type"');
    if (word === 'type') break;
    if (word === 'mtu') mtu = w.int('mtu');
    else if (word === 'group') group = w.int('group');
    else if (word === 'master') master = masterArg(ns, w.next('master'));
    else if (word === 'up') up = true;
    else throw w.unmodelled(`link option "${word}"`);
  }
  const kind = w.next('type');
  if (kind === 'veth') {
    w.expect('peer');
    w.expect('name');
    const peer: { name: string; mac?: string; mtu?: number; ns: FakeNetns } = { name: w.next('peer name'), ns };
    while (!w.done) {
      const word = w.next();
      if (word === 'address') peer.mac = macArg(w.next('address'));
      else if (word === 'mtu') peer.mtu = w.int('mtu');
      else if (word === 'netns') peer.ns = netnsArg(ctx, w.next('netns'));
      else throw w.unmodelled(`veth peer option "${word}"`);
    }
    addVeth(ns, {
      name,
      ...(mtu !== undefined && { mtu }),
      ...(group !== undefined && { group }),
      ...(master && { master }),
      up,
      peer,
    });
    return;
  }
  let link: FakeLink;
  if (kind === 'bridge') {
    let snooping = true;
    if (w.take('mcast_snooping')) snooping = w.int('mcast_snooping') !== 0;
    w.end();
    link = ns.createLink(name, 'bridge', mtu ?? 1500);
    link.mcastSnooping = snooping;
  } else if (kind === 'vxlan') {
    link = vxlanAdd(ns, name, mtu, w);
  } else if (kind === 'ifb') {
    w.end();
    link = ns.createLink(name, 'ifb', mtu ?? 1500);
  } else {
    throw w.unmodelled(`link type "${kind}"`);
  }
  if (group !== undefined) link.group = group;
  if (master) enslave(link, master);
  if (up) setUp(link, true);
}

function vxlanAdd(ns: FakeNetns, name: string, mtu: number | undefined, w: Words): FakeLink {
  let id: number | undefined;
  let local: string | undefined;
  let lower: FakeLink | undefined;
  const conf = { port: 4789, learning: true, proxy: false, gbp: false };
  while (!w.done) {
    const word = w.next();
    if (word === 'id') id = w.int('id');
    else if (word === 'local') local = formatIp(parseIp(w.next('local')));
    else if (word === 'dev') {
      const dev = w.next('dev');
      lower = ns.link(dev);
      // vxlan's option parser exits on a device it cannot find.
      if (!lower) throw new ToolFailure(`Cannot find device "${dev}"`, 255, true);
    } else if (word === 'dstport') conf.port = w.int('dstport');
    else if (word === 'learning') conf.learning = true;
    else if (word === 'nolearning') conf.learning = false;
    else if (word === 'proxy') conf.proxy = true;
    else if (word === 'gbp') conf.gbp = true;
    else throw w.unmodelled(`vxlan option "${word}"`);
  }
  if (id === undefined || local === undefined) throw w.unmodelled('a vxlan without id or local');
  return addVxlan(ns, name, { id, local, lower, ...conf }, mtu);
}

function linkDel(ns: FakeNetns, w: Words): void {
  if (w.take('group')) {
    const group = w.int('group');
    w.end();
    const members = ns.linkList().filter((l) => l.group === group);
    if (members.length === 0) throw rtnl('No such device');
    for (const l of members) removeLink(l);
    return;
  }
  w.take('dev');
  const link = ns.requireLink(w.next('device'));
  w.end();
  if (link.kind === 'loopback') throw rtnl('Operation not supported');
  removeLink(link);
}

function linkSet(ctx: ToolContext, w: Words): void {
  w.take('dev');
  const link = ctx.ns.requireLink(w.next('device'));
  const change: {
    addrGenMode?: 'none' | 'eui64';
    netns?: FakeNetns;
    name?: string;
    mtu?: number;
    mac?: string;
    master?: FakeLink | null;
    up?: boolean;
  } = {};
  while (!w.done) {
    const word = w.next();
    if (word === 'addrgenmode') {
      const mode = w.next('addrgenmode');
      if (mode !== 'none' && mode !== 'eui64') throw w.unmodelled(`addrgenmode ${mode}`);
      change.addrGenMode = mode;
    } else if (word === 'netns') change.netns = netnsArg(ctx, w.next('netns'));
    else if (word === 'name') change.name = w.next('name');
    else if (word === 'mtu') change.mtu = w.int('mtu');
    else if (word === 'address') change.mac = macArg(w.next('address'));
    else if (word === 'master') change.master = masterArg(ctx.ns, w.next('master'));
    else if (word === 'nomaster') change.master = null;
    else if (word === 'up' || word === 'down') change.up = word === 'up';
    else throw w.unmodelled(`link set option "${word}"`);
  }
  // In the order the kernel's do_setlink applies them.
  if (change.netns) moveToNetns(link, change.netns);
  if (change.mac !== undefined) setMac(link, change.mac);
  if (change.mtu !== undefined) setMtu(link, change.mtu);
  if (change.name !== undefined) rename(link, change.name);
  if (change.up !== undefined) setUp(link, change.up);
  if (change.master === null) release(link);
  else if (change.master) enslave(link, change.master);
  if (change.addrGenMode) link.addrGenMode = change.addrGenMode;
}

function route(ns: FakeNetns, verb: string, w: Words): void {
  const spec: RouteSpec = { dst: w.next('destination') };
  while (!w.done) {
    const word = w.next();
    if (word === 'via') spec.via = w.next('gateway');
    else if (word === 'dev') spec.dev = ns.requireLink(w.next('device'));
    else if (word === 'src') spec.src = w.next('source');
    else if (word === 'scope') {
      const scope = w.next('scope');
      if (scope !== 'link' && scope !== 'global' && scope !== 'host') throw w.unmodelled(`scope ${scope}`);
      spec.scope = scope as Scope;
    } else if (word === 'table') spec.table = tableArg(w);
    else if (word === 'onlink') spec.onlink = true;
    else throw w.unmodelled(`route option "${word}"`);
  }
  if (verb === 'del') {
    if (spec.via !== undefined || spec.src !== undefined || spec.scope || spec.onlink)
      throw w.unmodelled('route del with more than dev and table');
    deleteRoute(ns, { dst: spec.dst, ...(spec.dev && { dev: spec.dev }), ...(spec.table && { table: spec.table }) });
  } else replaceRoute(ns, spec);
}

function tableArg(w: Words): number {
  const t = w.next('table');
  if (t === 'main') return MAIN_TABLE;
  if (!/^\d+$/.test(t) || t === '255' || t === '0') throw w.unmodelled(`routing table ${t}`);
  return Number(t);
}

function neigh(ns: FakeNetns, verb: string, w: Words): void {
  if (w.take('proxy')) {
    const ip = w.next('address');
    w.expect('dev');
    const dev = ns.requireLink(w.next('device'));
    w.end();
    if (verb === 'del') deleteProxy(dev, ip);
    else replaceProxy(dev, ip);
    return;
  }
  const ip = w.next('address');
  let lladdr: string | undefined;
  let nud: 'permanent' | 'reachable' | undefined;
  let dev: FakeLink | undefined;
  while (!w.done) {
    const word = w.next();
    if (word === 'lladdr') lladdr = macArg(w.next('lladdr'));
    else if (word === 'dev') dev = ns.requireLink(w.next('device'));
    else if (word === 'nud') {
      const state = w.next('nud');
      if (state !== 'permanent' && state !== 'reachable') throw w.unmodelled(`nud ${state}`);
      nud = state;
    } else throw w.unmodelled(`neigh option "${word}"`);
  }
  if (!dev) throw w.unmodelled('a neighbour without dev');
  if (verb === 'del') {
    if (lladdr !== undefined || nud !== undefined) throw w.unmodelled('neigh del with lladdr or nud');
    deleteNeighbour(dev, ip);
    return;
  }
  if (lladdr === undefined) throw w.unmodelled('neigh replace without lladdr');
  replaceNeighbour(dev, ip, lladdr, nud ?? 'permanent');
}

// ---- reads ----------------------------------------------------------------------------------

function show(ctx: ToolContext, object: string, w: Words, opts: IpOptions): unknown[] {
  const ns = ctx.ns;
  const cpus = ctx.kernel.cpus;
  const devArg = (missing: (name: string) => ToolFailure): FakeLink | undefined => {
    if (!w.take('dev')) return undefined;
    const name = w.next('device');
    const l = ns.link(name);
    if (!l) throw missing(name);
    return l;
  };
  const doesNotExist = (name: string) => new ToolFailure(`Device "${name}" does not exist.`, 1);
  switch (object) {
    case 'link': {
      const dev = devArg(doesNotExist);
      const type = w.take('type') ? w.next('type') : undefined;
      w.end();
      const kindOf = (l: FakeLink) => (l.kind === 'loopback' ? undefined : l.kind);
      return (dev ? [dev] : ns.linkList())
        .filter((l) => type === undefined || kindOf(l) === type)
        .map((l) => renderLink(l, opts.details, cpus));
    }
    case 'addr':
    case 'address': {
      const dev = devArg(doesNotExist);
      w.end();
      return (dev ? [dev] : ns.linkList()).map((l) => renderAddrs(l, opts.details, cpus));
    }
    case 'route': {
      if (opts.family === 6) throw w.unmodelled('IPv6 routes');
      const table = w.take('table') ? tableArg(w) : MAIN_TABLE;
      w.end();
      if (!ns.tables.has(table)) throw new ToolFailure('Error: ipv4: FIB table does not exist.\nDump terminated', 2);
      return sortRoutes(ns.routes.filter((r) => r.table === table)).map((r) => renderRoute(r, opts.details));
    }
    case 'neigh': {
      const proxy = w.take('proxy');
      const dev = devArg(cannotFindDevice);
      w.end();
      return proxy ? renderProxies(ns, dev) : renderNeighbours(ns, dev);
    }
    default:
      throw w.unmodelled(`ip ${object} show`);
  }
}
