import { Type, type Static } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { RouteModule } from '../server.js';
import { ENDPOINT, ENDPOINT_PARAMS, ERRORS, QOS_PATCH, VPC_PARAMS, tenantRoute } from '../schemas.js';

/** The endpoints attached to a tenant's VPC, and their rate limits. */
export const endpointRoutes: RouteModule = (app, { auth, vpcs, endpoints }) => {
  const ownVpc = async (req: FastifyRequest) => {
    const tenant = await auth.tenant(req);
    return { tenant, vpc: await vpcs.get(tenant, (req.params as { vpc: string }).vpc) };
  };

  app.get(
    '/v1/vpcs/:vpc/endpoints',
    tenantRoute("Container interfaces attached to the VPC (with the container's eth0, if any)", {
      params: VPC_PARAMS,
      response: { 200: Type.Array(ENDPOINT), ...ERRORS },
    }),
    async (req) => endpoints.list((await ownVpc(req)).vpc),
  );

  app.patch(
    '/v1/vpcs/:vpc/endpoints/:endpoint',
    tenantRoute("Change an endpoint's rate limits (applied to the running interface)", {
      params: ENDPOINT_PARAMS,
      body: QOS_PATCH,
      response: { 200: ENDPOINT, ...ERRORS },
    }),
    async (req) => {
      const { tenant, vpc } = await ownVpc(req);
      const { endpoint } = req.params as { endpoint: string };
      return endpoints.setQos(vpc, endpoint, (req.body as Static<typeof QOS_PATCH>).qos, tenant.caps?.eth1);
    },
  );

  app.patch(
    '/v1/vpcs/:vpc/endpoints/:endpoint/external',
    tenantRoute("Change the rate limits of the container's external interface (eth0)", {
      params: ENDPOINT_PARAMS,
      body: QOS_PATCH,
    }),
    async (req) => {
      const { tenant, vpc } = await ownVpc(req);
      const { endpoint } = req.params as { endpoint: string };
      return endpoints.setExternalQos(vpc, endpoint, (req.body as Static<typeof QOS_PATCH>).qos, tenant.caps?.eth0);
    },
  );
};
