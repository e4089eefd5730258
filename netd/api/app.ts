import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import { AppError, ErrorCodes, isAppError, type ErrorCode } from '../../core/errors.js';
import { parseCidr, formatCidr } from '../../core/cidr.js';
import type { Store } from '../../store/types.js';
import { Ipam } from '../../ipam/allocator.js';
import { checkQos } from '../qos.js';
import { netdKeys, externalKeys } from '../keys.js';
import type { ExternalEndpointRecord } from '../external.js';
import type { EndpointRecord, QosSpec, VpcRecord } from '../model.js';
import type { NetdMetrics } from '../metrics.js';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';

/**
 * netd's HTTP API (fastify, built separately from listen() so tests use inject()). An admin token
 * from configuration creates tenants; each tenant gets its own bearer token, stored only as a
 * SHA-256 hash. A tenant sees and changes only its own VPCs: another tenant's is a 404.
 * Desired state goes to etcd; every host's netd converges the kernel from there.
 */

export interface ApiDeps {
  store: Store;
  adminToken: string;
  logger?: boolean;
  /** Rendered at /metrics (Prometheus text); 404 without it. */
  metrics?: NetdMetrics;
}

interface TenantRecord {
  name: string;
  /** 16-bit tenant tag (tagqueue). */
  tag: number;
  tokenHash: string;
}

const tenantKey = (name: string) => `/netd/v1/tenants/${name}`;
const vniKey = (vni: number) => `/netd/v1/vnis/${vni}`;
const NAME = Type.String({ pattern: '^[a-z][a-z0-9-]{0,30}$' });
const QOS = Type.Object(
  { ingressBps: Type.Optional(Type.Integer()), egressBps: Type.Optional(Type.Integer()) },
  { additionalProperties: false },
);
const TenantBody = Type.Object({ name: NAME }, { additionalProperties: false });
const VpcBody = Type.Object(
  {
    name: NAME,
    cidr: Type.String({ maxLength: 49 }),
    mode: Type.Optional(Type.Union([Type.Literal('vxlan'), Type.Literal('vlan'), Type.Literal('routed')])),
    mtu: Type.Optional(Type.Integer({ minimum: 1280, maximum: 9000 })),
    qos: Type.Optional(QOS),
  },
  { additionalProperties: false },
);
const EndpointPatch = Type.Object({ qos: QOS }, { additionalProperties: false });
const VpcPatch = Type.Object({ qos: QOS }, { additionalProperties: false });
const ERROR = Type.Object({ code: Type.String(), message: Type.String() });
const TENANT = Type.Object({ name: Type.String(), tag: Type.Integer() });
const VPC = Type.Object({
  name: Type.String(),
  id: Type.String(),
  tenant: Type.String(),
  mode: Type.String(),
  cidr: Type.String(),
  vni: Type.Integer(),
  mtu: Type.Optional(Type.Integer()),
  qos: Type.Optional(QOS),
});
const ENDPOINT = Type.Object(
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
const CONFLIST = Type.Object({
  cniVersion: Type.String(),
  name: Type.String(),
  plugins: Type.Array(Type.Object({}, { additionalProperties: true })),
});
const errors = { 400: ERROR, 401: ERROR, 404: ERROR, 409: ERROR, 503: ERROR };
const tenantRoute = (summary: string, extra: Record<string, unknown> = {}) => ({
  schema: { tags: ['tenant'], summary, security: [{ bearer: [] }], ...extra },
});
const adminRoute = (summary: string, extra: Record<string, unknown> = {}) => ({
  schema: { tags: ['admin'], summary, security: [{ bearer: [] }], ...extra },
});
const VPC_PARAMS = Type.Object({ vpc: NAME });
const TENANT_PARAMS = Type.Object({ name: NAME });

const STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.INVALID_INPUT]: 400,
  [ErrorCodes.UNSUPPORTED]: 400,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.ALREADY_EXISTS]: 409,
  [ErrorCodes.CONFLICT]: 409,
  [ErrorCodes.POOL_OVERLAP]: 409,
  [ErrorCodes.STORE_UNAVAILABLE]: 503,
};

const hash = (token: string) => createHash('sha256').update(token).digest('hex');

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(hash(a));
  const y = Buffer.from(hash(b));
  return timingSafeEqual(x, y);
}

export function buildApi(deps: ApiDeps): FastifyInstance {
  // Unknown fields are an error, not silently dropped; types are not coerced.
  const app = Fastify({
    logger: deps.logger ?? false,
    bodyLimit: 64 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
  });
  const { store } = deps;
  // The OpenAPI document is generated from the route schemas below; the UI is served at /docs.
  void app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'netd API',
        version: '1',
        description: 'Tenants, VPCs, endpoints and CNI configs of the netd container network.',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'The admin token, or a tenant token ("<tenant>.<secret>")',
          },
        },
      },
    },
  });
  void app.register(swaggerUi, { routePrefix: '/docs' });

  app.setErrorHandler((err: unknown, _req, reply) => {
    if (isAppError(err)) return reply.status(STATUS[err.code] ?? 500).send({ code: err.code, message: err.message });
    const e = err as { validation?: unknown; statusCode?: number; message?: string };
    if (e.validation) return reply.status(400).send({ code: ErrorCodes.INVALID_INPUT, message: e.message });
    if (e.statusCode && e.statusCode < 500)
      return reply.status(e.statusCode).send({ code: ErrorCodes.INVALID_INPUT, message: e.message });
    return reply.status(500).send({ code: ErrorCodes.INTERNAL, message: 'internal error' });
  });

  app.setNotFoundHandler((req, reply) =>
    reply.status(404).send({ code: ErrorCodes.NOT_FOUND, message: `no route ${req.method} ${req.url}` }),
  );

  const bearer = (req: FastifyRequest): string => {
    const h = req.headers.authorization ?? '';
    if (!h.startsWith('Bearer ')) throw Object.assign(new Error('missing bearer token'), { statusCode: 401 });
    return h.slice(7);
  };
  const requireAdmin = (req: FastifyRequest): void => {
    if (!sameToken(bearer(req), deps.adminToken))
      throw Object.assign(new Error('admin token required'), { statusCode: 401 });
  };
  /** The tenant the token belongs to (the token names it: "<tenant>.<secret>"). */
  const requireTenant = async (req: FastifyRequest): Promise<TenantRecord> => {
    const token = bearer(req);
    const name = token.split('.')[0] ?? '';
    const kv = /^[a-z][a-z0-9-]{0,30}$/.test(name) ? await store.get(tenantKey(name)) : undefined;
    const tenant = kv ? (JSON.parse(kv.value) as TenantRecord) : undefined;
    if (!tenant || !timingSafeEqual(Buffer.from(tenant.tokenHash), Buffer.from(hash(token)))) {
      throw Object.assign(new Error('unknown or invalid tenant token'), { statusCode: 401 });
    }
    return tenant;
  };
  const vpcId = (tenant: string, name: string) => `${tenant}.${name}`;
  const ownVpc = async (tenant: TenantRecord, name: string): Promise<VpcRecord> => {
    const kv = await store.get(netdKeys.vpc(vpcId(tenant.name, name)));
    if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, `no VPC "${name}"`);
    return JSON.parse(kv.value) as VpcRecord;
  };

  /** Sets (or, with undefined, removes) a record's rate limits by compare-and-swap. */
  const withQos = async <R extends { qos?: QosSpec }>(
    key: string,
    missing: string,
    qos: QosSpec | undefined,
  ): Promise<R> => {
    for (let attempt = 0; attempt < 10; attempt++) {
      const kv = await store.get(key);
      if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, missing);
      const next = { ...(JSON.parse(kv.value) as R) };
      if (qos) next.qos = qos;
      else delete next.qos;
      const { succeeded } = await store.txn({
        compare: [{ key, target: 'modRevision', op: '=', value: kv.modRevision }],
        success: [{ type: 'put', key, value: JSON.stringify(next) }],
      });
      if (succeeded) return next;
    }
    throw new AppError(ErrorCodes.CONFLICT, `${key} kept changing; try again`);
  };

  // Routes go in a plugin registered after swagger, so its onRoute hook sees every one of them.
  void app.register(async (app) => {
    app.get('/healthz', { schema: { tags: ['health'], summary: 'Liveness' } }, async () => ({ ok: true }));
    app.get(
      '/metrics',
      { schema: { tags: ['health'], summary: 'Prometheus metrics (text format)' } },
      async (_req, reply) => {
        if (!deps.metrics) throw new AppError(ErrorCodes.NOT_FOUND, 'metrics are not enabled');
        const { contentType, body } = await deps.metrics.render();
        return reply.type(contentType).send(body);
      },
    );
    app.get(
      '/readyz',
      { schema: { tags: ['health'], summary: 'Readiness: etcd reachable' } },
      async (_req, reply: FastifyReply) => {
        try {
          await store.currentRevision();
          return { ready: true };
        } catch {
          return reply.status(503).send({ ready: false, code: ErrorCodes.STORE_UNAVAILABLE });
        }
      },
    );

    app.post(
      '/v1/tenants',
      adminRoute('Create a tenant; its token is in the answer, once', {
        body: TenantBody,
        response: { 201: Type.Object({ name: Type.String(), tag: Type.Integer(), token: Type.String() }), ...errors },
      }),
      async (req, reply) => {
        requireAdmin(req);
        const { name } = req.body as Static<typeof TenantBody>;
        const token = `${name}.${randomBytes(24).toString('base64url')}`;
        for (let attempt = 0; attempt < 50; attempt++) {
          const tag = 1 + Math.floor(Math.random() * 0xfffe);
          const record: TenantRecord = { name, tag, tokenHash: hash(token) };
          const { succeeded } = await store.txn({
            compare: [
              { key: tenantKey(name), target: 'modRevision', op: '=', value: 0n },
              { key: `/netd/v1/tags/${tag}`, target: 'modRevision', op: '=', value: 0n },
            ],
            success: [
              { type: 'put', key: tenantKey(name), value: JSON.stringify(record) },
              { type: 'put', key: `/netd/v1/tags/${tag}`, value: name },
            ],
          });
          if (succeeded) return reply.status(201).send({ name, tag, token });
          if (await store.get(tenantKey(name))) throw new AppError(ErrorCodes.ALREADY_EXISTS, `tenant ${name} exists`);
        }
        throw new AppError(ErrorCodes.CONFLICT, 'could not allocate a tenant tag; try again');
      },
    );

    app.get(
      '/v1/tenants',
      adminRoute('List tenants', { response: { 200: Type.Array(TENANT), ...errors } }),
      async (req) => {
        requireAdmin(req);
        const { kvs } = await store.list('/netd/v1/tenants/');
        return kvs.map((kv) => {
          const t = JSON.parse(kv.value) as TenantRecord;
          return { name: t.name, tag: t.tag };
        });
      },
    );

    const getTenant = async (name: string) => {
      const kv = await store.get(tenantKey(name));
      if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, `no tenant "${name}"`);
      return { record: JSON.parse(kv.value) as TenantRecord, modRevision: kv.modRevision };
    };

    app.get(
      '/v1/tenants/:name',
      adminRoute('Show a tenant', { params: TENANT_PARAMS, response: { 200: TENANT, ...errors } }),
      async (req) => {
        requireAdmin(req);
        const { record } = await getTenant((req.params as { name: string }).name);
        return { name: record.name, tag: record.tag };
      },
    );

    /** Refused while the tenant has VPCs; the tenant and its tag go in one transaction. */
    app.delete(
      '/v1/tenants/:name',
      adminRoute('Delete a tenant (refused while it has VPCs)', {
        params: TENANT_PARAMS,
        response: { 204: Type.Null(), ...errors },
      }),
      async (req, reply) => {
        requireAdmin(req);
        const { record, modRevision } = await getTenant((req.params as { name: string }).name);
        const { kvs } = await store.list(netdKeys.vpcs());
        const owned = kvs.filter((kv) => (JSON.parse(kv.value) as VpcRecord).tenant === record.name).length;
        if (owned > 0) throw new AppError(ErrorCodes.CONFLICT, `tenant has ${owned} VPCs; delete them first`);
        const { succeeded } = await store.txn({
          compare: [{ key: tenantKey(record.name), target: 'modRevision', op: '=', value: modRevision }],
          success: [
            { type: 'delete', key: tenantKey(record.name) },
            { type: 'delete', key: `/netd/v1/tags/${record.tag}` },
          ],
        });
        if (!succeeded) throw new AppError(ErrorCodes.CONFLICT, 'tenant changed meanwhile; try again');
        return reply.status(204).send();
      },
    );

    app.get(
      '/v1/tenant',
      tenantRoute('The tenant this token belongs to', { response: { 200: TENANT, ...errors } }),
      async (req) => {
        const t = await requireTenant(req);
        return { name: t.name, tag: t.tag };
      },
    );

    app.post(
      '/v1/vpcs',
      tenantRoute('Create a VPC (a VNI and an address pool come with it)', {
        body: VpcBody,
        response: { 201: VPC, ...errors },
      }),
      async (req, reply) => {
        const tenant = await requireTenant(req);
        const body = req.body as Static<typeof VpcBody>;
        // The mode abstraction takes vlan and routed (netd/modes); their data paths are not built yet.
        if (body.mode !== undefined && body.mode !== 'vxlan')
          throw new AppError(ErrorCodes.UNSUPPORTED, `mode ${body.mode} is not available yet (vxlan is)`);
        const cidr = formatCidr(parseCidr(body.cidr));
        const qos = checkQos(body.qos);
        const id = vpcId(tenant.name, body.name);
        if (await store.get(netdKeys.vpc(id))) throw new AppError(ErrorCodes.ALREADY_EXISTS, `VPC ${body.name} exists`);
        await new Ipam({ store, host: 'api' }).createPool({ name: id, cidr, kind: 'vpc' });
        for (let attempt = 0; attempt < 50; attempt++) {
          const vni = 1 + Math.floor(Math.random() * 0xfffffe);
          const vpc: VpcRecord = {
            name: id,
            tenant: tenant.name,
            mode: 'vxlan',
            cidr,
            vni,
            ...(body.mtu && { mtu: body.mtu }),
            ...(qos && { qos }),
          };
          const { succeeded } = await store.txn({
            compare: [
              { key: netdKeys.vpc(id), target: 'modRevision', op: '=', value: 0n },
              { key: vniKey(vni), target: 'modRevision', op: '=', value: 0n },
            ],
            success: [
              { type: 'put', key: netdKeys.vpc(id), value: JSON.stringify(vpc) },
              { type: 'put', key: vniKey(vni), value: id },
            ],
          });
          if (succeeded) return reply.status(201).send(publicVpc(vpc));
          if (await store.get(netdKeys.vpc(id)))
            throw new AppError(ErrorCodes.ALREADY_EXISTS, `VPC ${body.name} exists`);
        }
        throw new AppError(ErrorCodes.CONFLICT, 'could not allocate a VNI; try again');
      },
    );

    app.get(
      '/v1/vpcs',
      tenantRoute("List the tenant's VPCs", { response: { 200: Type.Array(VPC), ...errors } }),
      async (req) => {
        const tenant = await requireTenant(req);
        const { kvs } = await store.list(netdKeys.vpcs());
        return kvs
          .map((kv) => JSON.parse(kv.value) as VpcRecord)
          .filter((v) => v.tenant === tenant.name)
          .map(publicVpc);
      },
    );

    app.get(
      '/v1/vpcs/:vpc',
      tenantRoute('Show a VPC', { params: VPC_PARAMS, response: { 200: VPC, ...errors } }),
      async (req) => publicVpc(await ownVpc(await requireTenant(req), (req.params as { vpc: string }).vpc)),
    );

    /** Changes the VPC's default rate limits; every host re-shapes the interfaces that have none of their own. */
    app.patch(
      '/v1/vpcs/:vpc',
      tenantRoute("Change the VPC's default rate limits (applied to running interfaces)", {
        params: VPC_PARAMS,
        body: VpcPatch,
        response: { 200: VPC, ...errors },
      }),
      async (req) => {
        const tenant = await requireTenant(req);
        const name = (req.params as { vpc: string }).vpc;
        const qos = checkQos((req.body as Static<typeof VpcPatch>).qos);
        return publicVpc(await withQos<VpcRecord>(netdKeys.vpc(vpcId(tenant.name, name)), `no VPC "${name}"`, qos));
      },
    );

    app.delete(
      '/v1/vpcs/:vpc',
      tenantRoute('Delete a VPC (refused while endpoints exist)', {
        params: VPC_PARAMS,
        response: { 204: Type.Null(), ...errors },
      }),
      async (req, reply) => {
        const vpc = await ownVpc(await requireTenant(req), (req.params as { vpc: string }).vpc);
        const { kvs } = await store.list(`${netdKeys.endpoints()}${vpc.name}/`);
        if (kvs.length > 0)
          throw new AppError(ErrorCodes.CONFLICT, `VPC has ${kvs.length} endpoints; delete them first`);
        await new Ipam({ store, host: 'api' }).deletePool(vpc.name);
        await store.txn({
          compare: [],
          success: [
            { type: 'delete', key: netdKeys.vpc(vpc.name) },
            { type: 'delete', key: vniKey(vpc.vni) },
          ],
        });
        return reply.status(204).send();
      },
    );

    /** The eth0 (external) records of these containers, found on their hosts by container id. */
    const externalsOf = async (
      endpoints: readonly EndpointRecord[],
    ): Promise<Map<string, { key: string; record: ExternalEndpointRecord }>> => {
      const out = new Map<string, { key: string; record: ExternalEndpointRecord }>();
      const wanted = new Set(endpoints.map((e) => e.containerId).filter((c): c is string => c !== undefined));
      for (const host of new Set(endpoints.map((e) => e.host))) {
        for (const kv of (await store.list(externalKeys.host(host))).kvs) {
          const record = JSON.parse(kv.value) as ExternalEndpointRecord;
          if (wanted.has(record.containerId)) out.set(record.containerId, { key: kv.key, record });
        }
      }
      return out;
    };

    app.get(
      '/v1/vpcs/:vpc/endpoints',
      tenantRoute("Container interfaces attached to the VPC (with the container's eth0, if any)", {
        params: VPC_PARAMS,
        response: { 200: Type.Array(ENDPOINT), ...errors },
      }),
      async (req) => {
        const vpc = await ownVpc(await requireTenant(req), (req.params as { vpc: string }).vpc);
        const { kvs } = await store.list(`${netdKeys.endpoints()}${vpc.name}/`);
        const endpoints = kvs.map((kv) => JSON.parse(kv.value) as EndpointRecord);
        const externals = await externalsOf(endpoints);
        return endpoints.map((e) => {
          const x = e.containerId !== undefined ? externals.get(e.containerId)?.record : undefined;
          return x ? { ...e, external: { ifname: x.ifname, ip: x.ip, mac: x.mac, ...(x.qos && { qos: x.qos }) } } : e;
        });
      },
    );

    /**
     * Changes the rate limits of the container's eth0. A tenant owns the eth0 of the containers it
     * attached to its VPCs (external records carry no tenant of their own).
     */
    app.patch(
      '/v1/vpcs/:vpc/endpoints/:endpoint/external',
      tenantRoute("Change the rate limits of the container's external interface (eth0)", {
        params: Type.Object({ vpc: NAME, endpoint: Type.String({ maxLength: 200 }) }),
        body: EndpointPatch,
      }),
      async (req) => {
        const params = req.params as { vpc: string; endpoint: string };
        const vpc = await ownVpc(await requireTenant(req), params.vpc);
        const qos = checkQos((req.body as Static<typeof EndpointPatch>).qos);
        const kv = await store.get(netdKeys.endpoint(vpc.name, params.endpoint));
        if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, `no endpoint "${params.endpoint}"`);
        const found = (await externalsOf([JSON.parse(kv.value) as EndpointRecord])).values().next().value;
        if (!found)
          throw new AppError(ErrorCodes.NOT_FOUND, `the container of "${params.endpoint}" has no external interface`);
        return withQos<ExternalEndpointRecord>(found.key, 'the external interface is gone', qos);
      },
    );

    /** Changes an endpoint's rate limits; every host applies them to the running interface. */
    app.patch(
      '/v1/vpcs/:vpc/endpoints/:endpoint',
      tenantRoute("Change an endpoint's rate limits (applied to the running interface)", {
        params: Type.Object({ vpc: NAME, endpoint: Type.String({ maxLength: 200 }) }),
        body: EndpointPatch,
        response: { 200: ENDPOINT, ...errors },
      }),
      async (req) => {
        const params = req.params as { vpc: string; endpoint: string };
        const vpc = await ownVpc(await requireTenant(req), params.vpc);
        const qos = checkQos((req.body as Static<typeof EndpointPatch>).qos);
        return withQos<EndpointRecord>(
          netdKeys.endpoint(vpc.name, params.endpoint),
          `no endpoint "${params.endpoint}"`,
          qos,
        );
      },
    );

    app.get(
      '/v1/vpcs/:vpc/cni-config',
      tenantRoute('A CNI conflist for the VPC (eth1)', { params: VPC_PARAMS, response: { 200: CONFLIST, ...errors } }),
      async (req) => {
        const vpc = await ownVpc(await requireTenant(req), (req.params as { vpc: string }).vpc);
        return {
          cniVersion: '1.0.0',
          name: `vpc-${vpc.name}`,
          plugins: [{ type: 'netd', vpc: vpc.name, capabilities: { bandwidth: true, ips: true, mac: true } }],
        };
      },
    );

    app.get(
      '/v1/external/cni-config',
      tenantRoute('The CNI conflist of the external network (eth0)', { response: { 200: CONFLIST, ...errors } }),
      async (req) => {
        await requireTenant(req);
        return {
          cniVersion: '1.0.0',
          name: 'external',
          plugins: [{ type: 'netd', external: true, capabilities: { bandwidth: true, ips: true } }],
        };
      },
    );
  });

  return app;
}

function publicVpc(v: VpcRecord): Record<string, unknown> {
  const short = v.name.slice(v.tenant.length + 1);
  return {
    name: short,
    id: v.name,
    tenant: v.tenant,
    mode: v.mode,
    cidr: v.cidr,
    vni: v.vni,
    ...(v.mtu && { mtu: v.mtu }),
    ...(v.qos && { qos: v.qos }),
  };
}
