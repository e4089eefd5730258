import { Type } from '@sinclair/typebox';
import { LATEST_CNI_VERSION } from '../core/cni.js';
import type { FastifyInstance } from 'fastify';
import type { Store } from '../store/types.js';
import { apiContext, buildApiServer, type RouteModule } from '../tenancy/api/server.js';
import { healthRoutes } from '../tenancy/api/routes/health.js';
import { tenantRoutes } from '../tenancy/api/routes/tenants.js';
import { vpcRoutes } from '../tenancy/api/routes/vpcs.js';
import { endpointRoutes } from '../tenancy/api/routes/endpoints.js';
import type { PoolAdmin } from '../tenancy/vpcs.js';
import { policyRoutes } from '../tenancy/api/routes/policy.js';
import type { ModeName } from '../tenancy/records.js';
import type { NetdMetrics } from './metrics.js';
import { ERRORS, VPC_PARAMS, tenantRoute } from '../tenancy/api/schemas.js';

/**
 * netd's part of the API: the CNI configurations runtimes install to use a VPC (eth1) or the
 * external network (eth0). Served at the newest CNI version (1.1.0), so runtimes can use GC and
 * STATUS; netd answers older versions too.
 */

const CONFLIST = Type.Object({
  cniVersion: Type.String(),
  name: Type.String(),
  plugins: Type.Array(Type.Object({}, { additionalProperties: true })),
});

export function vpcConflist(vpcId: string) {
  return {
    cniVersion: LATEST_CNI_VERSION,
    name: `vpc-${vpcId}`,
    plugins: [{ type: 'netd', vpc: vpcId, capabilities: { bandwidth: true, ips: true, mac: true } }],
  };
}

export function externalConflist() {
  return {
    cniVersion: LATEST_CNI_VERSION,
    name: 'external',
    plugins: [{ type: 'netd', external: true, capabilities: { bandwidth: true, ips: true } }],
  };
}

export const cniConfigRoutes: RouteModule = (app, { auth, vpcs }) => {
  app.get(
    '/v1/vpcs/:vpc/cni-config',
    tenantRoute('A CNI conflist for the VPC (eth1)', { params: VPC_PARAMS, response: { 200: CONFLIST, ...ERRORS } }),
    async (req) => vpcConflist((await vpcs.get(await auth.tenant(req), (req.params as { vpc: string }).vpc)).name),
  );
  app.get(
    '/v1/external/cni-config',
    tenantRoute('The CNI conflist of the external network (eth0)', { response: { 200: CONFLIST, ...ERRORS } }),
    async (req) => {
      await auth.tenant(req);
      return externalConflist();
    },
  );
};

/** The API a netd serves: tenancy's routes (tenants, VPCs, endpoints), health and metrics, CNI configs. */
export function buildNetdApi(opts: {
  store: Store;
  adminToken: string;
  /** Creates and deletes VPC pools (the host's Ipam). */
  pools: PoolAdmin;
  metrics?: NetdMetrics;
  /** What this host builds (shown by /readyz). */
  capabilities?: () => object;
}): FastifyInstance {
  const context = apiContext({
    store: opts.store,
    adminToken: opts.adminToken,
    pools: opts.pools,
    modes: AVAILABLE_MODES,
  });
  return buildApiServer({
    context,
    title: 'netd API',
    routes: [
      healthRoutes(opts.metrics, opts.capabilities),
      policyRoutes,
      tenantRoutes,
      vpcRoutes,
      endpointRoutes,
      cniConfigRoutes,
    ],
  });
}

/**
 * The network modes netd builds. A vlan VPC also needs a host with a trunk on its physical
 * network (checked at creation from the hosts' records).
 */
export const AVAILABLE_MODES: readonly ModeName[] = ['vxlan', 'routed', 'vlan'];
