import type { FastifyReply } from 'fastify';
import { AppError, ErrorCodes } from '../../../core/errors.js';
import type { RouteModule } from '../server.js';

/** Liveness, readiness (etcd reachable) and, when a component has them, Prometheus metrics. */
export function healthRoutes(
  metrics?: { render(): Promise<{ contentType: string; body: string }> },
  /** What the component can do here (netd: the modes this host builds), shown by /readyz. */
  capabilities?: () => object,
): RouteModule {
  return (app, { store }) => {
    app.get('/healthz', { schema: { tags: ['health'], summary: 'Liveness' } }, async () => ({ ok: true }));
    app.get(
      '/metrics',
      { schema: { tags: ['health'], summary: 'Prometheus metrics (text format)' } },
      async (_req, reply) => {
        if (!metrics) throw new AppError(ErrorCodes.NOT_FOUND, 'metrics are not enabled');
        const { contentType, body } = await metrics.render();
        return reply.type(contentType).send(body);
      },
    );
    app.get(
      '/readyz',
      { schema: { tags: ['health'], summary: 'Readiness: etcd reachable (and what this host can build)' } },
      async (_req, reply: FastifyReply) => {
        try {
          await store.currentRevision();
          return { ready: true, ...capabilities?.() };
        } catch {
          return reply.status(503).send({ ready: false, code: ErrorCodes.STORE_UNAVAILABLE });
        }
      },
    );
  };
}
