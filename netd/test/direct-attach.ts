import type { CommandRunner, NetnsTarget } from '../../sys/runner.js';
import { silentLogger } from '../../sys/log.js';
import type { Store } from '../../store/types.js';
import type { Ipam } from '../../ipam/allocator.js';
import { getJson } from '../../store/json.js';
import { modelKeys } from '../../tenancy/keys.js';
import { endpointId, type HostRecord, type VpcRecord } from '../../tenancy/records.js';
import { Attacher } from '../attach/template.js';
import { internalPlan } from '../attach/internal.js';
import { DeferredStoreWork } from '../deferred.js';
import { linkNames } from '../names.js';
import { PortClaims } from '../port-claims.js';

/**
 * The CNI side of an eth1 ADD/DEL without a daemon (the attacher alone), for tests that wire
 * containers before the daemons start: the daemons then find records and ports and converge the
 * rest from etcd.
 */

export interface DirectDeps {
  store: Store;
  ipam: Ipam;
  runner: CommandRunner;
  host: HostRecord;
  hostNetns?: NetnsTarget;
}

function attacher(deps: DirectDeps): Attacher {
  const logger = silentLogger();
  return new Attacher({
    store: deps.store,
    ipam: deps.ipam,
    runner: deps.runner,
    self: deps.host,
    ...(deps.hostNetns && { hostNetns: deps.hostNetns }),
    claims: new PortClaims(),
    deferred: new DeferredStoreWork(logger),
    logger,
  });
}

export async function attachInternal(
  req: { containerId: string; ifname: string; netnsPath: string; vpc: string },
  deps: DirectDeps,
) {
  const vpc = (await getJson<VpcRecord>(deps.store, modelKeys.vpc(req.vpc)))!.value;
  const done = await attacher(deps).attach(internalPlan({ ...req, vpc }, deps.host, undefined));
  return { endpoint: done.record, allocation: done.allocation };
}

export async function detachInternal(req: { containerId: string; ifname: string; vpc: string }, deps: DirectDeps) {
  const id = endpointId({ host: deps.host.name, containerId: req.containerId, ifname: req.ifname });
  await attacher(deps).detach({
    id,
    recordKey: modelKeys.endpoint(req.vpc, id),
    hostIf: linkNames.internalPort(id),
    pool: req.vpc,
  });
}
