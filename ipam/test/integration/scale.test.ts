import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../allocator.js';
import { ipamKeys } from '../../keys.js';
import { startWorker, finished, acknowledged } from '../workers.js';

t.test(
  '4 allocator processes on 4 hosts allocate 2,500 addresses each: 10,000 distinct; releasing all empties the pool',
  async (t) => {
    if (!requireRoot(t)) return;
    const dir = mkdtempSync(join(tmpdir(), 'ipam-scale-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    await withCluster({ hosts: 4 }, async ({ cluster, residue }) => {
      const d = cluster.description;
      const store = new EtcdStore(d.etcd.client);
      t.teardown(() => store.close());
      const admin = new Ipam({ store, host: 'admin' });
      await admin.createPool({ name: 'big', cidr: '10.100.0.0/16', kind: 'vpc' });

      const allocs = d.hosts.map((host, i) =>
        startWorker({
          host,
          mode: 'allocate',
          etcd: d.etcd.hostClient,
          pool: 'big',
          prefix: `h${i}`,
          count: 2500,
          concurrency: 32,
          dir,
          tag: `a${i}`,
        }),
      );
      const summaries = await Promise.all(allocs.map(finished));
      t.same(
        summaries.map((s) => s.count),
        [2500, 2500, 2500, 2500],
      );
      const ips = allocs.flatMap((a) => [...acknowledged(a.out).values()]);
      t.equal(ips.length, 10_000, 'every allocation acknowledged');
      t.equal(new Set(ips).size, 10_000, 'zero duplicates');

      const blocks = await admin.blocks('big');
      const inBlocks = blocks.flatMap((b) => Object.values(b.allocations));
      t.equal(inBlocks.length, 10_000, 'blocks hold exactly the acknowledged allocations');
      const hosts = new Set(blocks.map((b) => b.affinity));
      t.same([...hosts].sort(), ['h1', 'h2', 'h3', 'h4'], 'each host allocated from its own blocks');
      t.comment(
        `allocation: ${summaries.map((s) => `${Math.round((s.count / s.elapsedMs) * 1000)}/s p50 ${s.p50.toFixed(1)}ms p99 ${s.p99.toFixed(1)}ms`).join('; ')}`,
      );

      const releases = d.hosts.map((host, i) =>
        startWorker({
          host,
          mode: 'release',
          etcd: d.etcd.hostClient,
          pool: 'big',
          prefix: `h${i}`,
          count: 2500,
          concurrency: 32,
          dir,
          tag: `r${i}`,
        }),
      );
      await Promise.all(releases.map(finished));
      t.same((await store.list(ipamKeys.allBlocks())).kvs, [], 'no block left');
      t.same((await store.list(ipamKeys.allHandles())).kvs, [], 'no handle left');
      t.same((await store.list('/netd/v1/ipam/affinity/')).kvs, [], 'no affinity left');
      await admin.deletePool('big');
      t.same(await residue(), [], 'nothing left in etcd or the namespaces');
    });
  },
);
