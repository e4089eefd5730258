import { contains, parseCidr, parseIp, type Cidr } from '../core/cidr.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../sys/runner.js';
import type { Link, LinkAddrs, Route } from '../sys/ip.js';
import type { ClusterDescription } from './cluster.js';
import { names } from './names.js';

/**
 * Ways into a cluster's underlay from one namespace (the root one by default), read from that
 * namespace's own tables, so no packet is sent (a packet from the root namespace to the underlay's
 * addresses would leave the machine by its default route):
 *
 *  - a link whose other end lives in one of the cluster's namespaces;
 *  - an address inside the underlay;
 *  - a route inside the underlay, or through such a link;
 *  - for each of the cluster's underlay addresses, where the kernel would send a packet
 *    (`ip route get` is a lookup): locally, or through such a link.
 *
 * Returns one line per finding; empty means the namespace has no way in. A route the host had
 * anyway (its default route, a wider private range on its own interface) is not the cluster's.
 */
export async function pathsIntoCluster(
  runner: CommandRunner,
  cluster: ClusterDescription,
  netns?: string,
): Promise<string[]> {
  const target: NetnsTarget | undefined = netns === undefined ? undefined : { name: netns };
  const json = async <T>(args: string[]): Promise<T> => {
    const { stdout } = await runner.run({ argv: ['ip', '-j', ...args], netns: target });
    return (stdout.trim() === '' ? [] : JSON.parse(stdout)) as T;
  };
  const underlay = parseCidr(cluster.underlay.cidr);
  const stem = names.clusterNetnsStem(cluster.prefix);
  const findings: string[] = [];

  // Which namespace a link's other end is in: its link-netnsid, named by this namespace's id table.
  const ids = await json<Array<{ nsid: number; name?: string }>>(['netns', 'list-id']);
  const clusterIds = new Map(ids.filter((i) => i.name?.startsWith(stem)).map((i) => [i.nsid, i.name!]));
  const intoCluster = new Set<string>();
  for (const l of await json<Link[]>(['link', 'show'])) {
    const peerNetns = l.link_netnsid === undefined ? undefined : clusterIds.get(l.link_netnsid);
    if (peerNetns === undefined) continue;
    intoCluster.add(l.ifname);
    findings.push(`link ${l.ifname} has its other end in ${peerNetns}`);
  }

  for (const l of await json<LinkAddrs[]>(['-4', 'addr', 'show'])) {
    for (const a of l.addr_info) {
      if (contains(underlay, parseIp(a.local)))
        findings.push(`address ${a.local}/${a.prefixlen} on ${l.ifname} is in the underlay ${cluster.underlay.cidr}`);
    }
  }

  for (const r of await json<Route[]>(['-4', 'route', 'show', 'table', 'all'])) {
    const where = `route ${r.dst}${r.dev ? ` dev ${r.dev}` : ''}${r.table ? ` table ${r.table}` : ''}`;
    if (r.dev && intoCluster.has(r.dev)) findings.push(`${where} goes through a link into the cluster`);
    const dst = routeDestination(r.dst);
    if (dst && dst.prefixLength >= underlay.prefixLength && contains(underlay, { family: 4, value: dst.network }))
      findings.push(`${where} is inside the underlay ${cluster.underlay.cidr}`);
  }

  const addresses = [cluster.fabric.controlIp, ...cluster.hosts.map((h) => h.underlayIp), cluster.outside.address];
  for (const address of addresses) {
    let hop: Array<{ dev?: string; type?: string }>;
    try {
      hop = await json(['route', 'get', address]);
    } catch (err) {
      if (isCommandError(err)) continue; // no route at all ("Network is unreachable"): no way in
      throw err;
    }
    const dev = hop[0]?.dev;
    if (dev && intoCluster.has(dev))
      findings.push(`a packet for ${address} would leave through ${dev}, into the cluster`);
    if (hop[0]?.type === 'local') findings.push(`a packet for ${address} would be delivered locally`);
  }
  return findings;
}

/** A route's destination as a CIDR; undefined for `default` and for what is not an IPv4 prefix. */
function routeDestination(dst: string): Cidr | undefined {
  if (dst === 'default') return undefined;
  try {
    return parseCidr(dst.includes('/') ? dst : `${dst}/32`, { strict: false });
  } catch {
    return undefined;
  }
}
