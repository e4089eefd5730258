import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { EtcdServer } from '../../test-netns/etcd.js';
import { startEtcdCluster, type EtcdCluster } from '../../test-netns/etcd-cluster.js';
import { ExecRunner } from '../../sys/runner.js';
import { eventually } from '../../test-netns/testing.js';
import type { KV, WatchEvent } from '../types.js';

/** The part of a tap Test the helpers need (kept structural so helpers do not depend on tap). */
export interface TeardownHost {
  teardown(fn: () => unknown): unknown;
}

/** Retries `fn` while it fails with an error `retryable` accepts (e.g. while a client reconnects); bounded. */
export async function retry<T>(
  fn: () => Promise<T>,
  timeoutMs = 10_000,
  retryable: (err: unknown) => boolean = () => true,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (!retryable(err) || Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

/** A real etcd in a fresh temporary directory; stopped and removed at teardown, even on failure. */
export async function startEtcd(t: TeardownHost): Promise<EtcdServer> {
  const dir = mkdtempSync(join(tmpdir(), 'store-etcd-'));
  const held: { server?: EtcdServer } = {};
  t.teardown(async () => {
    await held.server?.stop().catch(() => held.server?.kill());
    rmSync(dir, { recursive: true, force: true });
  });
  held.server = await EtcdServer.start({ dir, startTimeoutMs: 20_000 });
  return held.server;
}

/**
 * etcd as production runs it, in the root namespace on 127.0.0.1: `members` members, TLS with client
 * certificates required, RBAC on (users root and netd; `extraUsers` get certificates and no rights).
 * Killed and removed at teardown, even on failure.
 */
export async function startSecureEtcd(
  t: TeardownHost,
  opts: { members?: number; extraUsers?: string[] } = {},
): Promise<EtcdCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'store-etcd-tls-'));
  const held: { cluster?: EtcdCluster } = {};
  t.teardown(async () => {
    for (const s of held.cluster?.servers ?? []) s.kill();
    await Promise.all((held.cluster?.servers ?? []).map((s) => retryUntilStopped(s)));
    rmSync(dir, { recursive: true, force: true });
  });
  held.cluster = await startEtcdCluster(new ExecRunner(), {
    members: opts.members ?? 1,
    dir,
    dataRoot: join(dir, 'data'),
    name: 'store-test',
    extraUsers: opts.extraUsers,
    startTimeoutMs: 20_000,
  });
  return held.cluster;
}

async function retryUntilStopped(server: EtcdServer): Promise<void> {
  if (!(await eventually(() => !server.running(), 10_000))) throw new Error(`etcd ${server.name} did not exit`);
}

/** Applies events to a key → KV map, as a handler would. */
export function applyEvents(view: Map<string, KV>, events: readonly WatchEvent[]): void {
  for (const e of events) {
    if (e.type === 'delete') view.delete(e.kv.key);
    else view.set(e.kv.key, e.kv);
  }
}

/** A map's entries sorted by key, for exact comparisons with a list(). */
export function sortedKvs(view: ReadonlyMap<string, KV>): KV[] {
  return [...view.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}
