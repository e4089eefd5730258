import { extack, FakeKernelUnmodelled, rtnl } from './errors.js';
import { addPrefixRoute } from './entries.js';
import {
  removeWhere,
  sysctlDevice,
  ZERO_MAC,
  type FakeLink,
  type FakeNetns,
  type KernelState,
  type VxlanConf,
} from './state.js';

/**
 * Link changes with the side effects the real kernel has (verified by the conformance test):
 * deleting one end of a veth deletes both, deleting a VXLAN's lower device deletes the VXLAN, a
 * deleted namespace takes its links (and their peers elsewhere), a link going down loses its
 * routes, neighbour and proxy entries, a bridge follows its ports' MACs and MTUs.
 * Failures are ToolFailures with the message the tool prints.
 */

export interface VethSpec {
  name: string;
  mtu?: number;
  group?: number;
  master?: FakeLink;
  up?: boolean;
  peer: { name: string; mac?: string; mtu?: number; ns: FakeNetns };
}

export function addVeth(ns: FakeNetns, s: VethSpec): FakeLink {
  const peerNs = s.peer.ns;
  if (ns.links.has(s.name) || peerNs.links.has(s.peer.name) || (peerNs === ns && s.name === s.peer.name))
    throw rtnl('File exists');
  // The kernel registers the peer first: it gets the lower ifindex.
  const peer = peerNs.createLink(s.peer.name, 'veth', s.peer.mtu ?? 1500, s.peer.mac);
  if (s.peer.mac !== undefined) peer.macSetByUser = true;
  const link = ns.createLink(s.name, 'veth', s.mtu ?? 1500);
  link.peer = peer;
  peer.peer = link;
  if (peerNs !== ns) {
    ns.idOf(peerNs);
    peerNs.idOf(ns);
  }
  if (s.group !== undefined) link.group = s.group;
  if (s.master) enslave(link, s.master);
  if (s.up) setUp(link, true);
  return link;
}

export function addVxlan(ns: FakeNetns, name: string, conf: VxlanConf, mtu: number | undefined): FakeLink {
  if (ns.links.has(name)) throw rtnl('File exists');
  const clash = ns
    .linkList()
    .some((l) => l.vxlan && l.vxlan.id === conf.id && l.vxlan.port === conf.port && l.vxlan.gbp === conf.gbp);
  if (clash) throw extack('A VXLAN device with the specified VNI already exists.');
  const link = ns.createLink(name, 'vxlan', mtu ?? (conf.lower ? conf.lower.mtu - 50 : 1500));
  link.vxlan = conf;
  return link;
}

/** Deletes a link and everything that goes with it in the kernel. */
export function removeLink(link: FakeLink): void {
  if (!link.alive) return;
  const ns = link.ns;
  link.alive = false;
  ns.links.delete(link.name);
  for (const p of ns.linkList()) if (p.master === link) release(p);
  if (link.master) release(link);
  for (const l of ns.linkList()) if (l.vxlan?.lower === link) removeLink(l);
  if (link.peer) removeLink(link.peer);
  flushL3(link);
  for (const f of link.ingress?.filters ?? []) ns.actionIndexes.delete(f.action);
  for (const key of ns.sysctls.keys()) if (sysctlDevice(key) === link.name) ns.sysctls.delete(key);
}

/** Routes, neighbour and proxy entries through a link (on delete and on down). */
function flushL3(link: FakeLink): void {
  const ns = link.ns;
  removeWhere(ns.routes, (r) => r.dev === link);
  removeWhere(ns.neighbours, (n) => n.dev === link);
  removeWhere(ns.proxies, (p) => p.dev === link);
}

export function setUp(link: FakeLink, up: boolean): void {
  if (link.up === up) return;
  link.up = up;
  if (!up) {
    flushL3(link);
    return;
  }
  if (link.kind === 'loopback') {
    for (const a of [
      { family: 4 as const, local: '127.0.0.1', prefixlen: 8 },
      { family: 6 as const, local: '::1', prefixlen: 128 },
    ]) {
      if (!link.addresses.some((x) => x.local === a.local)) link.addresses.push({ ...a, scope: 'host' });
    }
  }
  for (const a of link.addresses) addPrefixRoute(link, a);
}

export function enslave(port: FakeLink, bridge: FakeLink): void {
  if (bridge.kind !== 'bridge') throw new FakeKernelUnmodelled(`a master of kind ${bridge.kind} (only bridges)`);
  if (port === bridge) throw rtnl('Invalid argument');
  if (port.master === bridge) return;
  if (port.master) release(port);
  port.master = bridge;
  bridge.hadPorts = true;
  bridgePortsChanged(bridge);
}

export function release(port: FakeLink): void {
  const bridge = port.master;
  if (!bridge) return;
  port.master = undefined;
  bridgePortsChanged(bridge);
}

/** A bridge follows its ports: the smallest MAC (unless set), the smallest MTU (unless set). */
export function bridgePortsChanged(bridge: FakeLink): void {
  if (!bridge.alive) return;
  const ports = bridge.ports;
  // With no port left, the kernel gives the bridge the all-zero MAC.
  if (!bridge.macSetByUser) bridge.mac = ports.length > 0 ? ports.map((p) => p.mac).sort()[0]! : ZERO_MAC;
  if (!bridge.mtuSetByUser) bridge.mtu = ports.length > 0 ? Math.min(...ports.map((p) => p.mtu)) : 1500;
}

export function mtuLimits(link: FakeLink): { min: number; max: number } {
  return link.kind === 'loopback' || link.kind === 'ifb' ? { min: 0, max: 0 } : { min: 68, max: 65535 };
}

export function setMtu(link: FakeLink, mtu: number): void {
  const { min, max } = mtuLimits(link);
  if (max > 0 && mtu > max) throw extack('mtu greater than device maximum.');
  if (mtu < min) throw extack('mtu less than device minimum.');
  link.mtu = mtu;
  if (link.kind === 'bridge') link.mtuSetByUser = true;
  if (link.master) bridgePortsChanged(link.master);
}

export function setMac(link: FakeLink, mac: string): void {
  link.mac = mac;
  link.macSetByUser = true;
  if (link.master) bridgePortsChanged(link.master);
}

export function rename(link: FakeLink, name: string): void {
  if (link.name === name) return;
  if (link.ns.links.has(name)) throw rtnl('File exists');
  link.ns.links.delete(link.name);
  link.name = name;
  link.ns.links.set(name, link);
}

/** `ip link set X netns Y`: the link arrives down, without addresses, off any bridge. */
export function moveToNetns(link: FakeLink, target: FakeNetns): void {
  if (link.ns === target) return;
  if (target.links.has(link.name)) throw rtnl('File exists');
  if (link.kind !== 'veth') throw new FakeKernelUnmodelled(`moving a ${link.kind} link between namespaces`);
  setUp(link, false);
  for (const p of link.ns.linkList()) if (p.master === link) release(p);
  release(link);
  flushL3(link);
  link.addresses.length = 0;
  link.ns.links.delete(link.name);
  target.adopt(link);
  if (link.peer && link.peer.ns !== target) {
    target.idOf(link.peer.ns);
    link.peer.ns.idOf(target);
  }
}

/** The namespace goes with everything in it; veth peers elsewhere go too. */
export function destroyNetns(kernel: KernelState, ns: FakeNetns): void {
  if (ns === kernel.root) throw new Error('FakeKernel: the root namespace cannot be deleted');
  for (const l of ns.linkList()) removeLink(l);
  kernel.forget(ns);
}
