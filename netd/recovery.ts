import { existsSync } from 'node:fs';
import { IpClient } from '../sys/ip.js';
import type { Logger } from '../sys/log.js';
import type { Ipam } from '../ipam/allocator.js';
import type { AttachDeps } from './attach.js';
import { detachInternal } from './attach.js';
import { detachExternal, type ExternalEndpointRecord } from './external.js';
import type { EndpointRecord } from './model.js';

/**
 * What a daemon that died mid-ADD left behind, settled before it serves CNI again: every local
 * attachment ends up fully wired or fully absent. An attachment whose netns is gone, or whose
 * wiring is incomplete (the runtime never got an answer, so it will retry or DEL), is removed — its
 * veth pair, record and address; an address this host holds with no record at all is released.
 */

type LocalRecord =
  (EndpointRecord & { containerId?: string; ifname?: string; netns?: string }) | ExternalEndpointRecord;

export interface RecoveryReport {
  kept: number;
  removed: string[];
  releasedAddresses: string[];
}

export async function recoverLocalAttachments(opts: {
  internal: EndpointRecord[];
  external: ExternalEndpointRecord[];
  deps: AttachDeps;
  ipam: Ipam;
  /** The pools netd allocates from (VPC pools and the external pool); others belong to someone else. */
  pools: ReadonlySet<string>;
  logger: Logger;
}): Promise<RecoveryReport> {
  const { deps } = opts;
  const hostIp = new IpClient(deps.runner, deps.hostNetns);
  const report: RecoveryReport = { kept: 0, removed: [], releasedAddresses: [] };
  const why = new Map<string, string>();
  const complete = async (r: LocalRecord): Promise<boolean> => {
    if (!r.netns || !existsSync(r.netns) || !r.ifname) return (why.set(r.id, 'netns gone'), false);
    if (!(await hostIp.link(r.hostIf))) return (why.set(r.id, 'no host port'), false);
    const addrs = await new IpClient(deps.runner, { path: r.netns }).addresses(r.ifname).catch(() => []);
    const ok = addrs.some((a) => a.addr_info.some((x) => x.local === r.ip));
    if (!ok) why.set(r.id, 'container interface incomplete');
    return ok;
  };
  for (const r of opts.internal) {
    if (await complete(r)) {
      report.kept++;
      continue;
    }
    const [containerId, ifname] = r.id.split(':') as [string, string];
    await detachInternal({ containerId, ifname, vpc: r.vpc }, deps);
    report.removed.push(r.id);
  }
  for (const r of opts.external) {
    if (await complete(r)) {
      report.kept++;
      continue;
    }
    await detachExternal({ containerId: r.containerId, ifname: r.ifname }, { ...deps, externalPool: r.pool });
    report.removed.push(r.id);
  }
  // Addresses allocated by this host whose ADD died before writing its record.
  const recorded = new Set([...opts.internal, ...opts.external].map((r) => r.id));
  for (const { record } of await opts.ipam.handles({ host: deps.host.name })) {
    if (record.containerId === undefined || recorded.has(record.handle) || !opts.pools.has(record.pool)) continue;
    await opts.ipam.releaseHandle(record.handle, record.pool);
    report.releasedAddresses.push(`${record.pool}/${record.ip}`);
  }
  if (report.removed.length || report.releasedAddresses.length) {
    opts.logger.warn({ ...report, why: Object.fromEntries(why) }, 'settled attachments left by an interrupted run');
  }
  return report;
}
