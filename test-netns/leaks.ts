import { readdirSync, readFileSync, readlinkSync, statSync, existsSync } from 'node:fs';
import { EtcdStore, type EtcdConnectionOptions } from '../store/etcd.js';
import type { CommandRunner } from '../sys/runner.js';
import { isRunning } from '../sys/process.js';
import { readState } from './cluster.js';
import { names, DATA_ROOT, NETNS_DIR, NETNS_PREFIX, STATE_ROOT } from './names.js';

/**
 * Finds what a cluster (or any test) left behind. Every integration test ends with this, and the
 * CLI's `leaks` exits non-zero when it finds anything. Each kind of object is looked up where only
 * this project could have made it (names starting with `tn-`/`tn_`, our state directory, processes
 * inside our namespaces), so the check never reports — or touches — the host's own things.
 */

export type LeakKind = 'netns' | 'state' | 'process' | 'mount' | 'link' | 'nft' | 'ovs' | 'etcd';

export interface Leak {
  kind: LeakKind;
  what: string;
  /** For processes: the pid and its parent's, so a caller can tell a daemon's own children. */
  pid?: number;
  ppid?: number;
}

/** etcd prefixes the project's components write under; anything there at the end of a test leaked. */
export const OWNED_ETCD_PREFIXES = ['/netd/', '/storaged/'];

export interface LeakCheckOptions {
  /** Only this cluster; without it, everything any test-netns cluster or scratch namespace made. */
  prefix?: string;
  runner: CommandRunner;
  /** Also list project keys in this running cluster's etcd (mid-test checks): e.g. `d.etcd.client`. */
  etcd?: EtcdConnectionOptions;
}

export async function findLeaks(opts: LeakCheckOptions): Promise<Leak[]> {
  const stem = opts.prefix ? names.clusterNetnsStem(opts.prefix) : NETNS_PREFIX;
  const leaks: Leak[] = [];
  const namespaces = listNetns().filter((n) => n.startsWith(stem));
  leaks.push(...namespaces.map((n) => ({ kind: 'netns' as const, what: n })));
  leaks.push(...stateLeaks(opts.prefix));
  leaks.push(...processLeaks(namespaces, opts.prefix));
  leaks.push(...mountLeaks(stem, opts.prefix));
  leaks.push(...(await rootLinkLeaks(opts.runner)));
  leaks.push(...(await nftLeaks(opts.runner)));
  leaks.push(...(await ovsLeaks(opts.runner)));
  if (opts.etcd) leaks.push(...(await etcdLeaks(opts.etcd)));
  return leaks;
}

export function formatLeaks(leaks: readonly Leak[]): string {
  return leaks.map((l) => `${l.kind}\t${l.what}`).join('\n');
}

function listNetns(): string[] {
  try {
    return readdirSync(NETNS_DIR);
  } catch {
    return [];
  }
}

/** A cluster's state dir (/run/test-netns/P) and its data dir on disk (/var/lib/test-netns/P: etcd's data). */
function stateLeaks(prefix: string | undefined): Leak[] {
  const dirs = prefix
    ? [names.stateDir(prefix), names.dataDir(prefix)]
    : [
        ...safeReaddir(STATE_ROOT).map((d) => `${STATE_ROOT}/${d}`),
        ...safeReaddir(DATA_ROOT).map((d) => `${DATA_ROOT}/${d}`),
      ];
  return dirs.filter((d) => existsSync(d)).map((d) => ({ kind: 'state' as const, what: d }));
}

/** Processes recorded by a cluster, and any process whose network namespace is one of ours. */
function processLeaks(namespaces: string[], prefix: string | undefined): Leak[] {
  const leaks: Leak[] = [];
  const inodes = new Map<number, string>();
  for (const n of namespaces) {
    try {
      inodes.set(statSync(`${NETNS_DIR}/${n}`).ino, n);
    } catch {
      // vanished meanwhile
    }
  }
  const prefixes = prefix ? [prefix] : safeReaddir(STATE_ROOT);
  for (const p of prefixes) {
    const state = readState(p);
    for (const etcd of state?.etcdMembers ?? []) {
      if (isRunning(etcd))
        leaks.push({
          kind: 'process',
          what: `etcd ${etcd.options.name ?? ''} pid ${etcd.pid} of cluster ${p}`,
          pid: etcd.pid,
        });
    }
    for (const d of state?.daemons ?? []) {
      if (isRunning(d))
        leaks.push({ kind: 'process', what: `${d.component} pid ${d.pid} on ${d.host} of cluster ${p}`, pid: d.pid });
    }
  }
  if (inodes.size === 0) return leaks;
  for (const entry of safeReaddir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const link = readlinkSync(`/proc/${entry}/ns/net`); // "net:[4026532281]"
      const ino = Number(link.slice(5, -1));
      const netns = inodes.get(ino);
      if (netns) {
        const cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ').trim();
        const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        leaks.push({ kind: 'process', what: `pid ${entry} in netns ${netns}: ${cmd}`, pid: Number(entry), ppid });
      }
    } catch {
      // exited meanwhile, or a kernel thread
    }
  }
  return leaks;
}

function mountLeaks(netnsStem: string, prefix: string | undefined): Leak[] {
  const stateStem = prefix ? names.stateDir(prefix) : STATE_ROOT;
  let mountinfo = '';
  try {
    mountinfo = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return [];
  }
  const leaks: Leak[] = [];
  for (const line of mountinfo.split('\n')) {
    const mountPoint = line.split(' ')[4];
    if (!mountPoint) continue;
    // A namespace's own bind mount under /run/netns is the namespace, reported as such; a mount
    // there without its file is a leak of its own.
    const isOurNetns = mountPoint.startsWith(`${NETNS_DIR}/${netnsStem}`) && !existsSync(mountPoint);
    const isOurState = mountPoint === stateStem || mountPoint.startsWith(`${stateStem}/`);
    if (isOurNetns || isOurState) leaks.push({ kind: 'mount', what: mountPoint });
  }
  return leaks;
}

/** The harness never creates links in the root namespace; one named tn* means something escaped. */
async function rootLinkLeaks(runner: CommandRunner): Promise<Leak[]> {
  const { stdout } = await runner.run({ argv: ['ip', '-j', 'link', 'show'] });
  const links = JSON.parse(stdout || '[]') as Array<{ ifname: string }>;
  return links
    .filter((l) => /^tn[-_]/.test(l.ifname))
    .map((l) => ({ kind: 'link' as const, what: `root netns link ${l.ifname}` }));
}

async function nftLeaks(runner: CommandRunner): Promise<Leak[]> {
  try {
    const { stdout } = await runner.run({ argv: ['nft', '-j', 'list', 'tables'] });
    const parsed = JSON.parse(stdout || '{"nftables":[]}') as {
      nftables: Array<{ table?: { family: string; name: string } }>;
    };
    return parsed.nftables
      .flatMap((e) => (e.table ? [e.table] : []))
      .filter((t) => /^tn[-_]/.test(t.name))
      .map((t) => ({ kind: 'nft' as const, what: `root netns table ${t.family} ${t.name}` }));
  } catch {
    return []; // nft not installed: nothing of ours can exist
  }
}

async function ovsLeaks(runner: CommandRunner): Promise<Leak[]> {
  try {
    const { stdout } = await runner.run({ argv: ['ovs-vsctl', '--timeout=2', 'list-br'], timeoutMs: 5000 });
    return stdout
      .split('\n')
      .filter((b) => /^tn[-_]/.test(b))
      .map((b) => ({ kind: 'ovs' as const, what: `bridge ${b}` }));
  } catch {
    return []; // no OVS on this machine, or no ovsdb running: no bridges of ours either
  }
}

async function etcdLeaks(etcd: EtcdConnectionOptions): Promise<Leak[]> {
  const store = new EtcdStore({ ...etcd, callTimeoutMs: 5000 });
  try {
    const leaks: Leak[] = [];
    for (const prefix of OWNED_ETCD_PREFIXES) {
      const { keys } = await store.listKeys(prefix);
      leaks.push(...keys.map((k) => ({ kind: 'etcd' as const, what: k })));
    }
    return leaks;
  } finally {
    await store.close();
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}
