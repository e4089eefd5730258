import { Type, type Static } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { RouteModule } from '../server.js';
import { ENDPOINT, ENDPOINT_PARAMS, ERRORS, QOS_PATCH, VPC_PARAMS, tenantRoute } from '../schemas.js';

/** The endpoints attached to a tenant's VPC, and their rate limits. */
export const endpointRoutes: RouteModule = (app, { auth, vpcs, endpoints }) => {
  const ownVpc = async (req: FastifyRequest) => vpcs.get(await auth.tenant(req), (req.params as { vpc: string }).vpc);

  app.get(
    '/v1/vpcs/:vpc/endpoints',
    tenantRoute("Container interfaces attached to the VPC (with the container's eth0, if any)", {
      params: VPC_PARAMS,
      response: { 200: Type.Array(ENDPOINT), ...ERRORS },
    }),
    async (req) => endpoints.list(await ownVpc(req)),
  );

  app.patch(
    '/v1/vpcs/:vpc/endpoints/:endpoint',
    tenantRoute("Change an endpoint's rate limits (applied to the running interface)", {
      params: ENDPOINT_PARAMS,
      body: QOS_PATCH,
      response: { 200: ENDPOINT, ...ERRORS },
    }),
    async (req) =>
      endpoints.setQos(
        await ownVpc(req),
        (req.params as { endpoint: string }).endpoint,
        (req.body as Static<typeof QOS_PATCH>).qos,
      ),
  );

  app.patch(
    '/v1/vpcs/:vpc/endpoints/:endpoint/external',
    tenantRoute("Change the rate limits of the container's external interface (eth0)", {
      params: ENDPOINT_PARAMS,
      body: QOS_PATCH,
    }),
    async (req) =>
      endpoints.setExternalQos(
        await ownVpc(req),
        (req.params as { endpoint: string }).endpoint,
        (req.body as Static<typeof QOS_PATCH>).qos,
      ),
  );
};
