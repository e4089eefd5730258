import { performance } from 'node:perf_hooks';
import { SpawnerRunner, type CommandRunner } from '../../sys/runner.js';
import { NftClient, NftTransaction } from '../../sys/nft.js';
import { silentLogger } from '../../sys/log.js';
import { PortGuard } from '../../tagqueue/port-guard.js';
import { FAMILY, TAGQUEUE_TABLE, elementsOf, type PortEntry } from '../../tagqueue/ruleset.js';
import type { Benchmark } from '../benchmark.js';

export const TAGQUEUE_SIZES = [100, 1_000, 10_000, 100_000] as const;

/** Endpoint i: a port name, an address in 100.64.0.0/10 and a MAC, all distinct. */
function endpoint(i: number): PortEntry {
  const hex = i.toString(16).padStart(6, '0');
  return {
    port: `ne${hex}`,
    kind: 'external',
    ip: `100.${64 + ((i >> 16) & 0x3f)}.${(i >> 8) & 0xff}.${i & 0xff}`,
    mac: `02:00:00:${hex.slice(0, 2)}:${hex.slice(2, 4)}:${hex.slice(4, 6)}`,
  };
}

/** The per-endpoint iptables rules of the peer's design (kube-proxy's: one chain, rules per endpoint). */
function iptablesRules(e: PortEntry): string[] {
  return [
    `-A TQ-GUARD -i ${e.port} -m mac ! --mac-source ${e.mac} -j DROP`,
    `-A TQ-GUARD -i ${e.port} ! -s ${e.ip}/32 -j DROP`,
  ];
}

/**
 * tagqueue's per-endpoint cost as the table grows: admitting one new port (its ADD) and releasing it
 * (its DEL) with N ports present, against the design that made kube-proxy slow at scale: the whole
 * ruleset of N+1 endpoints rendered and loaded with `iptables-restore --noflush` for every change.
 * Each side and size has its own scratch namespace, filled once at setup (untimed).
 */
export function tagqueueApplyBenchmark(runner: CommandRunner, sizes: readonly number[] = TAGQUEUE_SIZES): Benchmark {
  const ns = (side: string, n: number) => `tn-btq${process.pid}-${side}${n}`;
  const guards = new Map<number, PortGuard>();
  // The subject spawns nft as netd does: through the posix_spawn helper when it is built.
  const netdRunner = SpawnerRunner.available() ? new SpawnerRunner() : runner;
  const fresh = (n: number) => endpoint(n);
  const restore = (n: number, endpoints: number) => {
    const lines = ['*filter', ':TQ-GUARD - [0:0]'];
    for (let i = 0; i < endpoints; i++) lines.push(...iptablesRules(endpoint(i)));
    lines.push('COMMIT', '');
    return runner.run({
      argv: ['iptables-restore', '--noflush'],
      stdin: lines.join('\n'),
      netns: { name: ns('p', n) },
      timeoutMs: 600_000,
    });
  };
  return {
    name: 'tagqueue-apply',
    title: `tagqueue: one endpoint added and removed with ${sizes.map((n) => n.toLocaleString('en')).join(' / ')} present, vs a regenerated iptables-restore ruleset`,
    description:
      'With N endpoints already guarded, the time from "a port is to be guarded" to the kernel holding it, and the same ' +
      "for its removal. The subject is tagqueue's PortGuard (admit/release: one `nft -f -` transaction with the port's " +
      'elements in the sets of `inet tagqueue`). The peer keeps the same two checks per endpoint (source MAC and source ' +
      'address) as iptables rules in one chain and, for every change, renders the whole ruleset and loads it with ' +
      '`iptables-restore --noflush` (iptables 1.8.9, nf_tables backend), as kube-proxy did. Lower is better.',
    subjectLabel: 'tagqueue (nft element deltas)',
    peerLabel: 'iptables-restore of the whole ruleset',
    subjectOnly: [
      'also guards IPv6, router advertisements and DHCP answers, the host and the infrastructure (fixed rules, not per endpoint)',
      'counts every drop by kind',
    ],
    peerOnly: ['nothing beyond the two per-endpoint checks'],
    store: 'none: kernel state only, in scratch namespaces',
    metrics: sizes.flatMap((n) => [
      { name: `add@${n}`, unit: 'ms', better: 'lower' as const },
      { name: `remove@${n}`, unit: 'ms', better: 'lower' as const },
    ]),
    runs: 5,
    needsRoot: true,
    async setup() {
      for (const n of sizes) {
        for (const side of ['s', 'p']) await runner.run({ argv: ['ip', 'netns', 'add', ns(side, n)] });
        const nft = new NftClient(netdRunner, { name: ns('s', n) });
        const guard = new PortGuard(nft, silentLogger(), () => ({ infra: ['10.77.0.0/24'], allow: [] }));
        await guard.admit(endpoint(0));
        // The other N-1 in transactions of 10,000 ports (untimed).
        for (let from = 1; from < n; from += 10_000) {
          const tx = new NftTransaction();
          const sets = new Map<string, string[]>();
          for (let i = from; i < Math.min(n, from + 10_000); i++)
            for (const [set, els] of elementsOf(endpoint(i)))
              (sets.get(set) ?? sets.set(set, []).get(set)!).push(...els);
          for (const [set, els] of sets) tx.addElements(FAMILY, TAGQUEUE_TABLE, set, els);
          await nft.apply(tx);
        }
        guards.set(n, guard);
        await restore(n, n);
      }
    },
    async trial(side) {
      const out: Record<string, number> = {};
      for (const n of sizes) {
        const e = fresh(n);
        if (side === 'subject') {
          const guard = guards.get(n)!;
          let t = performance.now();
          await guard.admit(e);
          out[`add@${n}`] = performance.now() - t;
          t = performance.now();
          await guard.release(e);
          out[`remove@${n}`] = performance.now() - t;
        } else {
          let t = performance.now();
          await restore(n, n + 1);
          out[`add@${n}`] = performance.now() - t;
          t = performance.now();
          await restore(n, n);
          out[`remove@${n}`] = performance.now() - t;
        }
      }
      return out;
    },
    notes() {
      return [
        `The subject's nft runs through ${netdRunner === runner ? "Node's spawn (the posix_spawn helper is not built)" : "netd's posix_spawn helper, as in netd"}. ` +
          'Most of its time is the nft process itself (start, netlink socket, cache of the table without its elements); ' +
          'a delete also waits for the kernel to commit the removal. Flat from 100 to 100,000 endpoints; ' +
          'below 3 ms needs a resident nft (libnftables) instead of a process per change.',
      ];
    },
    async teardown() {
      for (const n of sizes)
        for (const side of ['s', 'p'])
          await runner.run({ argv: ['ip', 'netns', 'del', ns(side, n)] }).catch(() => undefined);
      if (netdRunner instanceof SpawnerRunner) netdRunner.close();
    },
  };
}
