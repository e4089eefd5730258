import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { killDaemon } from '../../../sys/process.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../allocator.js';
import { ipamKeys, type HandleRecord } from '../../keys.js';
import { startWorker, acknowledged, type WorkerRun } from '../workers.js';

const ROUNDS = 3;
const PER_ROUND = 300;
const RELEASED = 150;

/** Runs a worker and SIGKILLs it after a random delay (if it is still running). */
async function runAndMaybeKill(run: WorkerRun, maxDelayMs: number): Promise<'killed' | 'finished'> {
  const delay = 100 + Math.floor(Math.random() * maxDelayMs);
  const outcome = await Promise.race([
    run.handle.exited.then(() => 'finished' as const),
    sleep(delay).then(() => 'kill' as const),
  ]);
  if (outcome === 'finished') return 'finished';
  killDaemon(run.handle, 'SIGKILL');
  await run.handle.exited;
  return 'killed';
}

t.test(
  'allocators SIGKILLed at random during allocation and release: after restart and GC, no duplicates and every address has a live owner',
  async (t) => {
    if (!requireRoot(t)) return;
    const dir = mkdtempSync(join(tmpdir(), 'ipam-chaos-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    await withCluster({ hosts: 4 }, async ({ cluster, residue }) => {
      const d = cluster.description;
      const store = new EtcdStore(d.etcd.client);
      t.teardown(() => store.close());
      await new Ipam({ store, host: 'admin' }).createPool({ name: 'chaos', cidr: '10.120.0.0/18', kind: 'vpc' });
      const common = { etcd: d.etcd.hostClient, pool: 'chaos', dir };
      let kills = 0;

      // Allocation rounds: each round asks for new handles; a kill between commit and acknowledgement
      // leaves an allocation nobody knows about — exactly what GC must find.
      const acked = new Map<string, string>(); // handle -> ip
      await Promise.all(
        d.hosts.map(async (host, h) => {
          for (let r = 0; r < ROUNDS; r++) {
            const run = startWorker({
              ...common,
              host,
              mode: 'allocate',
              prefix: `h${h}-r${r}`,
              count: PER_ROUND,
              concurrency: 16,
              tag: `a-${h}-${r}`,
            });
            if ((await runAndMaybeKill(run, 1500)) === 'killed') kills++;
            for (const [handle, ip] of acknowledged(run.out)) acked.set(handle, ip);
          }
        }),
      );

      // Release phase: release the first RELEASED handles of round 0, killed at random, then finish.
      const released = new Set<string>();
      await Promise.all(
        d.hosts.map(async (host, h) => {
          const first = startWorker({
            ...common,
            host,
            mode: 'release',
            prefix: `h${h}-r0`,
            count: RELEASED,
            concurrency: 8,
            tag: `r-${h}-a`,
          });
          if ((await runAndMaybeKill(first, 400)) === 'killed') kills++;
          const again = startWorker({
            ...common,
            host,
            mode: 'release',
            prefix: `h${h}-r0`,
            count: RELEASED,
            concurrency: 8,
            tag: `r-${h}-b`,
          });
          await again.handle.exited;
          for (let i = 0; i < RELEASED; i++) released.add(`h${h}-r0-${i}:eth0`);
        }),
      );
      t.ok(kills >= 4, `workers were killed mid-flight (${kills} kills)`);

      // "Restart" each host's allocator and GC with the runtime's view: the acknowledged attachments.
      const live = new Map([...acked].filter(([handle]) => !released.has(handle)));
      let collected = 0;
      for (const [h, host] of d.hosts.entries()) {
        const valid = [...live.keys()]
          .filter((k) => k.startsWith(`h${h}-`))
          .map((k) => ({ containerId: k.split(':')[0]!, ifname: 'eth0' }));
        collected += (await new Ipam({ store, host: host.name }).gcAttachments('chaos', valid)).length;
      }
      t.comment(`kills ${kills}, acknowledged ${acked.size}, live ${live.size}, collected by GC ${collected}`);

      const admin = new Ipam({ store, host: 'admin' });
      const blocks = await admin.blocks('chaos');
      const allocations = blocks.flatMap((b) =>
        Object.entries(b.allocations).map(([off, a]) => ({ block: b.cidr, off: Number(off), ...a })),
      );
      const handles = (await store.list(ipamKeys.allHandles())).kvs.map((kv) => JSON.parse(kv.value) as HandleRecord);
      const ips = handles.map((h) => h.ip);
      t.equal(new Set(ips).size, ips.length, 'no address is held twice');
      t.equal(allocations.length, handles.length, 'blocks and handle records agree in number');
      t.same(new Set(allocations.map((a) => a.h)), new Set(handles.map((h) => h.handle)), 'and in owners');
      const notLive = handles.filter((h) => !live.has(h.handle));
      t.same(
        notLive.map((h) => h.handle),
        [],
        'every allocated address has a live owner',
      );
      const lost = [...live].filter(([handle, ip]) => !handles.some((h) => h.handle === handle && h.ip === ip));
      t.same(lost, [], 'no acknowledged allocation was lost or moved');

      await store.deletePrefix('/netd/v1/ipam/');
      t.same(await residue(), []);
    });
  },
);
