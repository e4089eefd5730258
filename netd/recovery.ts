import type { Logger } from '../sys/log.js';
import type { Ipam } from '../ipam/allocator.js';
import { modelKeys } from '../tenancy/keys.js';
import type { AttachmentRecord } from '../tenancy/records.js';
import type { Attacher } from './attach/template.js';
import type { HostView } from './host-view.js';

/**
 * What an interrupted run left behind, settled before the daemon serves CNI again: every local
 * attachment ends up fully wired or fully absent. An attachment whose wiring is incomplete (the
 * runtime never got an answer, so it will retry or DEL) or whose netns is gone is removed — its
 * veth pair, record and address; an address this host holds with no record at all (an ADD that
 * died before writing it) is released.
 */

export interface RecoveryReport {
  kept: number;
  removed: string[];
  releasedAddresses: string[];
}

export async function recoverLocalAttachments(opts: {
  view: HostView;
  attacher: Attacher;
  ipam: Ipam;
  /** The pool of eth0 addresses, if this host has an external network. */
  externalPool?: string;
  logger: Logger;
}): Promise<RecoveryReport> {
  const { view, attacher } = opts;
  const report: RecoveryReport = { kept: 0, removed: [], releasedAddresses: [] };
  const why: Record<string, string> = {};
  const internal = view.localEndpoints();
  const external = view.localExternals();
  const settle = async (r: AttachmentRecord, spec: { recordKey: string; pool: string }) => {
    const reason = await attacher.whyNotWired(r);
    if (reason === undefined) return report.kept++;
    why[r.id] = reason;
    await attacher.detach({ id: r.id, recordKey: spec.recordKey, hostIf: r.hostIf, pool: spec.pool });
    report.removed.push(r.id);
  };
  for (const r of internal) await settle(r, { recordKey: modelKeys.endpoint(r.vpc, r.id), pool: r.vpc });
  for (const r of external) await settle(r, { recordKey: modelKeys.external(r.host, r.id), pool: r.pool });

  // Addresses this host allocated whose ADD died before writing its record.
  const pools = new Set([
    ...[...view.pods.vpcs.values()].map((v) => v.name),
    ...(opts.externalPool ? [opts.externalPool] : []),
  ]);
  const recorded = new Set([...internal, ...external].map((r) => r.id));
  for (const { record } of await opts.ipam.handles({ host: view.self.name })) {
    if (record.containerId === undefined || recorded.has(record.handle) || !pools.has(record.pool)) continue;
    await opts.ipam.releaseHandle(record.handle, record.pool);
    report.releasedAddresses.push(`${record.pool}/${record.ip}`);
  }
  if (report.removed.length || report.releasedAddresses.length) {
    opts.logger.warn({ ...report, why }, 'settled attachments left by an interrupted run');
  }
  return report;
}
