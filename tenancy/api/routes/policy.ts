import { Type, type Static } from '@sinclair/typebox';
import { PolicyDirectory } from '../../policy.js';
import type { RouteModule } from '../server.js';
import { ERRORS, adminRoute } from '../schemas.js';

const POLICY = Type.Object(
  {
    routedRanges: Type.Optional(Type.Array(Type.String({ maxLength: 49 }), { maxItems: 256 })),
    vlanRanges: Type.Optional(
      Type.Array(
        Type.Object(
          { physnet: Type.String({ maxLength: 31 }), min: Type.Integer(), max: Type.Integer() },
          { additionalProperties: false },
        ),
        { maxItems: 64 },
      ),
    ),
    infraRanges: Type.Optional(Type.Array(Type.String({ maxLength: 49 }), { maxItems: 256 })),
    infraAllow: Type.Optional(
      Type.Array(
        Type.Object(
          {
            cidr: Type.String({ maxLength: 18 }),
            proto: Type.Union([Type.Literal('tcp'), Type.Literal('udp')]),
            port: Type.Integer({ minimum: 1, maximum: 65535 }),
          },
          { additionalProperties: false },
        ),
        { maxItems: 256 },
      ),
    ),
  },
  { additionalProperties: false },
);

/** The operator's network policy (admin token): one record for the cluster, read by every API. */
export const policyRoutes: RouteModule = (app, { auth, store }) => {
  const policy = new PolicyDirectory(store);
  app.get(
    '/v1/policy',
    adminRoute("The cluster's network policy: routed ranges, VLAN ranges, infrastructure ranges and allow-list", {
      response: { 200: POLICY, ...ERRORS },
    }),
    async (req) => {
      auth.admin(req);
      return policy.get();
    },
  );
  app.put(
    '/v1/policy',
    adminRoute('Replace the network policy (applies to VPCs created afterwards)', {
      body: POLICY,
      response: { 200: POLICY, ...ERRORS },
    }),
    async (req) => {
      auth.admin(req);
      return policy.set(req.body as Static<typeof POLICY>);
    },
  );
};
