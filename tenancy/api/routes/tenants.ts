import { Type, type Static } from '@sinclair/typebox';
import type { TenantRecord } from '../../records.js';
import type { RouteModule } from '../server.js';
import { CAPS, ERRORS, NAME, TENANT, adminRoute, tenantRoute } from '../schemas.js';

const TenantBody = Type.Object({ name: NAME }, { additionalProperties: false });
const TENANT_PARAMS = Type.Object({ name: NAME });
const publicTenant = (t: TenantRecord) => ({ name: t.name, tag: t.tag, ...(t.caps && { caps: t.caps }) });

/** Tenants (admin token) and who-am-I (tenant token). */
export const tenantRoutes: RouteModule = (app, { auth, tenants, holdings }) => {
  app.post(
    '/v1/tenants',
    adminRoute('Create a tenant; its token is in the answer, once', {
      body: TenantBody,
      response: { 201: Type.Object({ name: Type.String(), tag: Type.Integer(), token: Type.String() }), ...ERRORS },
    }),
    async (req, reply) => {
      auth.admin(req);
      const { tenant, token } = await tenants.create((req.body as Static<typeof TenantBody>).name);
      return reply.status(201).send({ ...publicTenant(tenant), token });
    },
  );

  app.get(
    '/v1/tenants',
    adminRoute('List tenants', { response: { 200: Type.Array(TENANT), ...ERRORS } }),
    async (req) => {
      auth.admin(req);
      return (await tenants.list()).map(publicTenant);
    },
  );

  app.get(
    '/v1/tenants/:name',
    adminRoute('Show a tenant', { params: TENANT_PARAMS, response: { 200: TENANT, ...ERRORS } }),
    async (req) => {
      auth.admin(req);
      return publicTenant(await tenants.get((req.params as { name: string }).name));
    },
  );

  app.put(
    '/v1/tenants/:name/caps',
    adminRoute(
      "Set the tenant's caps (its plan): the most its eth0 and eth1 may carry per direction; {} removes them",
      {
        params: TENANT_PARAMS,
        body: CAPS,
        response: { 200: TENANT, ...ERRORS },
      },
    ),
    async (req) => {
      auth.admin(req);
      return publicTenant(
        await tenants.setCaps((req.params as { name: string }).name, req.body as Static<typeof CAPS>),
      );
    },
  );

  app.delete(
    '/v1/tenants/:name',
    adminRoute('Delete a tenant (refused while it owns anything)', {
      params: TENANT_PARAMS,
      response: { 204: Type.Null(), ...ERRORS },
    }),
    async (req, reply) => {
      auth.admin(req);
      await tenants.delete((req.params as { name: string }).name, async (t) => {
        const held = (await Promise.all(holdings.map((h) => h(t)))).filter((x) => x !== undefined);
        return held.length > 0 ? held.join(', ') : undefined;
      });
      return reply.status(204).send();
    },
  );

  app.get(
    '/v1/tenant',
    tenantRoute('The tenant this token belongs to', { response: { 200: TENANT, ...ERRORS } }),
    async (req) => publicTenant(await auth.tenant(req)),
  );
};
