import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { AppError, ErrorCodes, isAppError, type ErrorCode } from '../../core/errors.js';
import type { Store } from '../../store/types.js';
import type { TenantRecord } from '../records.js';
import { TenantDirectory } from '../tenants.js';
import { VpcDirectory, type PoolAdmin } from '../vpcs.js';
import { EndpointDirectory } from '../endpoints.js';
import { sameToken } from '../tokens.js';
import type { ModeName } from '../records.js';

/**
 * The one API server every component serves through: one auth (an admin token from configuration;
 * per-tenant bearer tokens), one error catalogue (core/errors.ts codes → HTTP statuses), one
 * OpenAPI document. Components contribute route modules (tenants, VPCs and endpoints from here;
 * netd's CNI configs; later volumes, usage, dns and lb). Built apart from listen(), so tests use
 * inject().
 */

export interface Auth {
  /** Passes only with the admin token. */
  admin(req: FastifyRequest): void;
  /** The tenant the bearer token belongs to. */
  tenant(req: FastifyRequest): Promise<TenantRecord>;
}

export interface ApiContext {
  store: Store;
  auth: Auth;
  tenants: TenantDirectory;
  vpcs: VpcDirectory;
  endpoints: EndpointDirectory;
  /**
   * What a tenant may still own, each answering e.g. "2 VPCs" or undefined: a tenant is deleted
   * only when none does. Components with tenant-owned things add theirs.
   */
  holdings: Array<(tenant: TenantRecord) => Promise<string | undefined>>;
}

export type RouteModule = (app: FastifyInstance, ctx: ApiContext) => void;

export function apiContext(opts: {
  store: Store;
  adminToken: string;
  pools: PoolAdmin;
  modes?: readonly ModeName[];
}): ApiContext {
  const { store } = opts;
  const tenants = new TenantDirectory(store);
  const vpcs = new VpcDirectory({
    store,
    pools: opts.pools,
    ...(opts.modes && { modes: opts.modes }),
  });
  const auth: Auth = {
    admin: (req) => {
      if (!sameToken(bearer(req), opts.adminToken)) throw new AppError(ErrorCodes.UNAUTHORIZED, 'admin token required');
    },
    tenant: (req) => tenants.authenticate(bearer(req)),
  };
  return {
    store,
    auth,
    tenants,
    vpcs,
    endpoints: new EndpointDirectory(store),
    holdings: [
      async (t) => {
        const n = (await vpcs.list(t)).length;
        return n > 0 ? `${n} VPCs` : undefined;
      },
    ],
  };
}

function bearer(req: FastifyRequest): string {
  const h = req.headers.authorization ?? '';
  if (!h.startsWith('Bearer ')) throw new AppError(ErrorCodes.UNAUTHORIZED, 'missing bearer token');
  return h.slice(7);
}

export const HTTP_STATUS: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.INVALID_INPUT]: 400,
  [ErrorCodes.UNSUPPORTED]: 400,
  [ErrorCodes.UNAUTHORIZED]: 401,
  [ErrorCodes.FORBIDDEN]: 403,
  [ErrorCodes.OVER_CAP]: 403,
  [ErrorCodes.NOT_FOUND]: 404,
  [ErrorCodes.ALREADY_EXISTS]: 409,
  [ErrorCodes.CONFLICT]: 409,
  [ErrorCodes.POOL_OVERLAP]: 409,
  [ErrorCodes.RANGE_EXHAUSTED]: 409,
  [ErrorCodes.STORE_UNAVAILABLE]: 503,
};

export function buildApiServer(opts: {
  context: ApiContext;
  routes: readonly RouteModule[];
  title?: string;
  logger?: boolean;
}): FastifyInstance {
  // Unknown fields are an error, not silently dropped; types are not coerced.
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: 64 * 1024,
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
  });
  // The OpenAPI document is generated from the route schemas; the UI is served at /docs.
  void app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: opts.title ?? 'tenant data plane API',
        version: '1',
        description: 'Tenants, VPCs, endpoints and CNI configs of the container network.',
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
    if (isAppError(err))
      return reply.status(HTTP_STATUS[err.code] ?? 500).send({ code: err.code, message: err.message });
    const e = err as { validation?: unknown; statusCode?: number; message?: string };
    if (e.validation) return reply.status(400).send({ code: ErrorCodes.INVALID_INPUT, message: e.message });
    if (e.statusCode && e.statusCode < 500) {
      return reply.status(e.statusCode).send({ code: ErrorCodes.INVALID_INPUT, message: e.message });
    }
    return reply.status(500).send({ code: ErrorCodes.INTERNAL, message: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) =>
    reply.status(404).send({ code: ErrorCodes.NOT_FOUND, message: `no route ${req.method} ${req.url}` }),
  );
  // Routes go in a plugin registered after swagger, so its onRoute hook sees every one of them.
  void app.register(async (scope) => {
    for (const routes of opts.routes) routes(scope, opts.context);
  });
  return app;
}
