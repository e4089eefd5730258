import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * netd's Prometheus metrics, in a registry of its own (never prom-client's global one, so two
 * daemons in one test process do not mix). The daemon reports into it; the API renders it at
 * /metrics.
 */
export class NetdMetrics {
  readonly registry = new Registry();
  private readonly cniDuration = new Histogram({
    name: 'netd_cni_request_duration_seconds',
    help: 'CNI requests served by the daemon, by verb and result',
    labelNames: ['verb', 'result'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  private readonly cniErrors = new Counter({
    name: 'netd_cni_errors_total',
    help: 'CNI requests answered with an error, by verb and CNI error code',
    labelNames: ['verb', 'code'],
    registers: [this.registry],
  });
  private endpointSource: (() => { vpc: number; external: number }) | undefined;
  private readonly endpoints = new Gauge({
    name: 'netd_endpoints',
    help: 'Container interfaces wired on this host (vpc: eth1-style, external: eth0)',
    labelNames: ['kind'],
    registers: [this.registry],
    // Counted when scraped, from the daemon's view: never stale.
    collect: () => {
      const n = this.endpointSource?.();
      if (n) for (const kind of ['vpc', 'external'] as const) this.endpoints.set({ kind }, n[kind]);
    },
  });
  private dropSource: (() => Promise<Record<string, { packets: number; bytes: number }>>) | undefined;
  private readonly drops = new Gauge({
    name: 'netd_tagqueue_dropped',
    help: "Packets and bytes tagqueue's table dropped on this host, by kind (spoofed, host, infra) and unit; kernel counters since the table was made",
    labelNames: ['kind', 'unit'],
    registers: [this.registry],
    // Read from the kernel when scraped.
    collect: async () => {
      const counts = await this.dropSource?.().catch(() => undefined);
      for (const [kind, c] of Object.entries(counts ?? {})) {
        this.drops.set({ kind, unit: 'packets' }, c.packets);
        this.drops.set({ kind, unit: 'bytes' }, c.bytes);
      }
    },
  });
  private readonly reconciles = new Counter({
    name: 'netd_reconciles_total',
    help: 'Full reconciles of the host data path, by result',
    labelNames: ['result'],
    registers: [this.registry],
  });
  private readonly reconcileDuration = new Histogram({
    name: 'netd_reconcile_duration_seconds',
    help: 'Duration of full reconciles',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });

  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics !== false) collectDefaultMetrics({ register: this.registry, prefix: 'netd_' });
  }

  observeCni(verb: string, result: 'ok' | 'error', seconds: number, cniCode?: number): void {
    this.cniDuration.observe({ verb, result }, seconds);
    if (result === 'error') this.cniErrors.inc({ verb, code: String(cniCode ?? 'unknown') });
  }

  observeReconcile(result: 'ok' | 'error', seconds: number): void {
    this.reconciles.inc({ result });
    this.reconcileDuration.observe(seconds);
  }

  /** Where the endpoint gauge is read from at each scrape. */
  countEndpointsWith(source: () => { vpc: number; external: number }): void {
    this.endpointSource = source;
  }

  countDropsWith(source: () => Promise<Record<string, { packets: number; bytes: number }>>): void {
    this.dropSource = source;
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
