import { ExecRunner, type CommandRunner } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import { VirtualCluster, teardownCluster, readState, type ClusterOptions } from './cluster.js';
import { Containers } from './containers.js';
import { Prober } from './probe.js';
import { findLeaks, type Leak } from './leaks.js';
import { uniqueSuffix } from './testing.js';
import { names } from './names.js';

/**
 * The way tests, the demo and benchmarks use a cluster: bring it up, hand it to `fn`, and tear it
 * down whatever happens — a throw, a failed assertion, SIGINT or SIGTERM — then report leaks.
 */

export interface ClusterSession {
  cluster: VirtualCluster;
  containers: Containers;
  probe: Prober;
  runner: CommandRunner;
  /** Anything project components left in this cluster's etcd or namespaces, while it still runs. */
  residue(): Promise<Leak[]>;
}

export interface WithClusterOptions extends Omit<ClusterOptions, 'prefix'> {
  /** Default: a random `t<hex>` prefix, unique per call. */
  prefix?: string;
  runner?: CommandRunner;
  logger?: Logger;
}

export async function withCluster<T>(opts: WithClusterOptions, fn: (s: ClusterSession) => Promise<T>): Promise<T> {
  const runner = opts.runner ?? new ExecRunner({ logger: opts.logger });
  const prefix = opts.prefix ?? `t${uniqueSuffix()}`;
  const deps = { runner, logger: opts.logger };
  const release = onTerminationSignal(() => teardownCluster(prefix, deps));
  try {
    const cluster = await VirtualCluster.up({ ...opts, prefix }, deps);
    const session: ClusterSession = {
      cluster,
      containers: new Containers(cluster, runner),
      probe: new Prober(runner),
      runner,
      residue: async () => {
        const leaks = await findLeaks({ prefix, runner, etcd: cluster.description.etcd.client });
        // The cluster's own namespaces, state, etcd and component daemons are expected while it runs.
        const d = cluster.description;
        const own = new Set([d.fabric.netns, d.outside.netns, ...d.hosts.map((h) => h.netns)]);
        const state = readState(prefix);
        // ...and so are the short-lived children of those daemons (a reconcile's `ip -batch`).
        const ownPids = new Set([...(state?.etcdMembers ?? []), ...(state?.daemons ?? [])].map((x) => x.pid));
        return leaks.filter(
          (l) =>
            !(l.kind === 'netns' && own.has(l.what)) &&
            !(l.kind === 'state' && (l.what === d.stateDir || l.what === names.dataDir(prefix))) &&
            !(l.kind === 'process' && (ownPids.has(l.pid ?? -1) || ownPids.has(l.ppid ?? -1))),
        );
      },
    };
    return await fn(session);
  } finally {
    await teardownCluster(prefix, deps);
    release();
  }
}

/**
 * Runs `cleanup` on SIGINT/SIGTERM, then exits with the conventional status. Returns a function
 * that removes the handlers. Several clusters in one process each register their own.
 */
export function onTerminationSignal(cleanup: () => Promise<void>): () => void {
  const handler = (sig: NodeJS.Signals): void => {
    cleanup()
      .catch((err: unknown) => process.stderr.write(`cleanup after ${sig} failed: ${String(err)}\n`))
      .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}
