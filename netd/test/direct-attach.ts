import type { CommandRunner, NetnsTarget } from '../../sys/runner.js';
import { silentLogger } from '../../sys/log.js';
import type { Store } from '../../store/types.js';
import type { Ipam } from '../../ipam/allocator.js';
import { getJson } from '../../store/json.js';
import { modelKeys } from '../../tenancy/keys.js';
import { endpointId, type HostRecord, type VpcRecord } from '../../tenancy/records.js';
import { Attacher } from '../attach/template.js';
import { internalPlan, routedInternalPlan, vlanInternalPlan } from '../attach/internal.js';
import { VlanHost } from '../vlan-host.js';
import { SourceGuard } from '../source-guard.js';
import { NftClient } from '../../sys/nft.js';
import { SysctlClient } from '../../sys/sysctl.js';
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
  /** The host's trunk and Open vSwitch (a cluster made with `vlan`). */
  vlan?: { trunk: string; ovsDb: string };
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
  const plan =
    vpc.mode === 'routed'
      ? routedInternalPlan({ ...req, vpc }, deps.host, {
          hostSysctl: new SysctlClient(deps.runner, deps.hostNetns),
          guard: new SourceGuard(new NftClient(deps.runner, deps.hostNetns), silentLogger()),
        })
      : vpc.mode === 'vlan'
        ? vlanInternalPlan({ ...req, vpc }, deps.host, await vlanHost(deps), vpc.vlan!)
        : internalPlan({ ...req, vpc }, deps.host, undefined);
  const done = await attacher(deps).attach(plan);
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

/** The host's VLAN side as its daemon would set it up (bridge and trunk in place). */
async function vlanHost(deps: DirectDeps): Promise<VlanHost> {
  if (!deps.vlan) throw new Error(`host ${deps.host.name} has no trunk: make the cluster with vlan: true`);
  const host = new VlanHost(
    { trunk: deps.vlan.trunk, physnet: 'physnet0', dbSocket: deps.vlan.ovsDb },
    { runner: deps.runner, ...(deps.hostNetns && { netns: deps.hostNetns }), logger: silentLogger() },
  );
  if (!(await host.setup())) throw new Error(`vlan setup on ${deps.host.name}: ${host.refusal}`);
  return host;
}
