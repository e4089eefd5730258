import { Type } from '@sinclair/typebox';
import { VPC_REF_PATTERN } from '../records.js';

/** Request and response schemas shared by the route modules (they also make the OpenAPI document). */

export const NAME = Type.String({ pattern: '^[a-z][a-z0-9-]{0,30}$' });
/** A VPC as a tenant addresses it: its name ("web") or the id the API returned ("acme.web"). */
export const VPC_REF = Type.String({ pattern: VPC_REF_PATTERN });
export const ENDPOINT_ID = Type.String({ minLength: 1, maxLength: 400 });
export const QOS = Type.Object(
  { ingressBps: Type.Optional(Type.Integer()), egressBps: Type.Optional(Type.Integer()) },
  { additionalProperties: false },
);
export const ERROR = Type.Object({ code: Type.String(), message: Type.String() });
export const ERRORS = { 400: ERROR, 401: ERROR, 403: ERROR, 404: ERROR, 409: ERROR, 503: ERROR };
export const CAPS = Type.Object(
  { eth0: Type.Optional(QOS), eth1: Type.Optional(QOS) },
  { additionalProperties: false },
);
export const TENANT = Type.Object({ name: Type.String(), tag: Type.Integer(), caps: Type.Optional(CAPS) });
export const VPC = Type.Object({
  name: Type.String(),
  id: Type.String(),
  tenant: Type.String(),
  mode: Type.String(),
  cidr: Type.String(),
  vni: Type.Integer(),
  vlan: Type.Optional(Type.Integer()),
  physnet: Type.Optional(Type.String()),
  mtu: Type.Optional(Type.Integer()),
  qos: Type.Optional(QOS),
});
export const ENDPOINT = Type.Object(
  {
    vpc: Type.String(),
    id: Type.String(),
    host: Type.String(),
    ip: Type.String(),
    mac: Type.String(),
    hostIf: Type.String(),
    qos: Type.Optional(QOS),
  },
  { additionalProperties: true },
);
export const VPC_PARAMS = Type.Object({ vpc: VPC_REF });
export const ENDPOINT_PARAMS = Type.Object({ vpc: VPC_REF, endpoint: ENDPOINT_ID });
export const QOS_PATCH = Type.Object({ qos: QOS }, { additionalProperties: false });

/** Route options for admin-token routes and tenant-token routes (tags and security for OpenAPI). */
export const adminRoute = (summary: string, extra: Record<string, unknown> = {}) => ({
  schema: { tags: ['admin'], summary, security: [{ bearer: [] }], ...extra },
});
export const tenantRoute = (summary: string, extra: Record<string, unknown> = {}) => ({
  schema: { tags: ['tenant'], summary, security: [{ bearer: [] }], ...extra },
});
