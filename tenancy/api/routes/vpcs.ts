import { Type, type Static } from '@sinclair/typebox';
import { vpcShortName, type VpcRecord } from '../../records.js';
import type { RouteModule } from '../server.js';
import { ERRORS, NAME, QOS, QOS_PATCH, VPC, VPC_PARAMS, tenantRoute } from '../schemas.js';

const VpcBody = Type.Object(
  {
    name: NAME,
    cidr: Type.String({ maxLength: 49 }),
    mode: Type.Optional(Type.Union([Type.Literal('vxlan'), Type.Literal('vlan'), Type.Literal('routed')])),
    physnet: Type.Optional(Type.String({ maxLength: 31 })),
    mtu: Type.Optional(Type.Integer({ minimum: 1280, maximum: 9000 })),
    qos: Type.Optional(QOS),
  },
  { additionalProperties: false },
);

/** A VPC as the API shows it: its short name and its id (either addresses it in every route). */
export function publicVpc(v: VpcRecord): Record<string, unknown> {
  return {
    name: vpcShortName(v),
    id: v.name,
    tenant: v.tenant,
    mode: v.mode,
    cidr: v.cidr,
    vni: v.vni,
    ...(v.vlan !== undefined && { vlan: v.vlan, physnet: v.physnet }),
    ...(v.mtu && { mtu: v.mtu }),
    ...(v.qos && { qos: v.qos }),
  };
}

const vpcParam = (req: { params: unknown }) => (req.params as { vpc: string }).vpc;

/** A tenant's VPCs. */
export const vpcRoutes: RouteModule = (app, { auth, vpcs }) => {
  app.post(
    '/v1/vpcs',
    tenantRoute('Create a VPC (a VNI, in vlan mode a VLAN id, and an address pool come with it)', {
      body: VpcBody,
      response: { 201: VPC, ...ERRORS },
    }),
    async (req, reply) => {
      const tenant = await auth.tenant(req);
      return reply.status(201).send(publicVpc(await vpcs.create(tenant, req.body as Static<typeof VpcBody>)));
    },
  );

  app.get(
    '/v1/vpcs',
    tenantRoute("List the tenant's VPCs", { response: { 200: Type.Array(VPC), ...ERRORS } }),
    async (req) => (await vpcs.list(await auth.tenant(req))).map(publicVpc),
  );

  app.get(
    '/v1/vpcs/:vpc',
    tenantRoute('Show a VPC (by name or id)', { params: VPC_PARAMS, response: { 200: VPC, ...ERRORS } }),
    async (req) => publicVpc(await vpcs.get(await auth.tenant(req), vpcParam(req))),
  );

  app.patch(
    '/v1/vpcs/:vpc',
    tenantRoute("Change the VPC's default rate limits (applied to its running interfaces)", {
      params: VPC_PARAMS,
      body: QOS_PATCH,
      response: { 200: VPC, ...ERRORS },
    }),
    async (req) =>
      publicVpc(await vpcs.setQos(await auth.tenant(req), vpcParam(req), (req.body as Static<typeof QOS_PATCH>).qos)),
  );

  app.delete(
    '/v1/vpcs/:vpc',
    tenantRoute('Delete a VPC (refused while endpoints exist)', {
      params: VPC_PARAMS,
      response: { 204: Type.Null(), ...ERRORS },
    }),
    async (req, reply) => {
      await vpcs.delete(await auth.tenant(req), vpcParam(req));
      return reply.status(204).send();
    },
  );
};
