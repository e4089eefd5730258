import { performance } from 'node:perf_hooks';
import type { CommandRunner } from '../../sys/runner.js';
import type { Benchmark } from '../benchmark.js';

/**
 * Why sys/ writes in batches: wiring N interfaces with one `ip -batch -` against N separate `ip`
 * processes (what a naive plugin does). Both create and then delete N veth pairs inside a scratch
 * namespace of their own.
 */
export function linkBatchBenchmark(runner: CommandRunner, pairs = 200): Benchmark {
  const netns = `tn-bench${process.pid}`;
  const group = 77;
  const createGrouped = Array.from(
    { length: pairs },
    (_, i) => `link add bv${i} group ${group} type veth peer name bp${i}`,
  );
  const create = Array.from({ length: pairs }, (_, i) => `link add bv${i} type veth peer name bp${i}`);
  const remove = Array.from({ length: pairs }, (_, i) => `link del bv${i}`);
  let batchedSingleDeletes: number[] = [];
  const ns = { name: netns };
  const batch = (lines: string[]) =>
    runner.run({ argv: ['ip', '-batch', '-'], stdin: lines.join('\n') + '\n', netns: ns });
  const oneByOne = async (lines: string[]) => {
    for (const line of lines) await runner.run({ argv: ['ip', ...line.split(' ')], netns: ns });
  };
  return {
    name: 'link-batch',
    title: `sys: ${pairs} veth pairs, batched and grouped vs one ip process each`,
    description:
      `Creates and deletes ${pairs} veth pairs in a scratch namespace. The subject creates them in one ` +
      '`ip -batch -` (as every sys/ wrapper writes) with a link group, and deletes the group with one request; ' +
      'the peer spawns one `ip` per link, as a naive plugin would. Lower is better.',
    subjectLabel: 'ip -batch (sys/ wrappers)',
    peerLabel: 'one ip process per command',
    subjectOnly: [
      'puts the links in a link group as it creates them, and deletes them with one request for the group',
      'after each trial, creates the links again and deletes them as separate lines of one batch (untimed, for the note)',
    ],
    peerOnly: [`${pairs} \`ip\` processes to create and ${pairs} to delete, one request each`],
    store: 'none: kernel objects only, in a scratch namespace',
    metrics: [
      { name: 'create', unit: 'ms', better: 'lower' },
      { name: 'delete', unit: 'ms', better: 'lower' },
    ],
    runs: 5,
    needsRoot: true,
    async setup() {
      await runner.run({ argv: ['ip', 'netns', 'add', netns] });
    },
    async trial(side, ctx) {
      if (side === 'peer') {
        let t = performance.now();
        await oneByOne(create);
        const created = performance.now() - t;
        t = performance.now();
        await oneByOne(remove);
        return { create: created, delete: performance.now() - t };
      }
      let t = performance.now();
      await batch(createGrouped);
      const created = performance.now() - t;
      t = performance.now();
      // One netlink request unregisters the whole group: one RCU grace period instead of one per link.
      await batch([`link del group ${group}`]);
      const deleted = performance.now() - t;
      // Also measured, for the notes: the same deletes as separate lines of one batch.
      await batch(create);
      t = performance.now();
      await batch(remove);
      if (!ctx.warmup) batchedSingleDeletes.push(performance.now() - t);
      return { create: created, delete: deleted };
    },
    notes() {
      const sorted = [...batchedSingleDeletes].sort((a, b) => a - b);
      const median = sorted[Math.floor(sorted.length / 2)] ?? NaN;
      batchedSingleDeletes = [];
      return [
        `Deleting the ${pairs} links as ${pairs} separate lines of one \`ip -batch\` took ${median.toFixed(0)} ms (median): ` +
          'the kernel waits for an RCU grace period per unregistered link (~16 ms here), so batching lines alone ' +
          "barely helps deletes; deleting a link group (or a namespace's links together) does.",
      ];
    },
    async teardown() {
      await runner.run({ argv: ['ip', 'netns', 'del', netns] }).catch(() => undefined);
    },
  };
}
