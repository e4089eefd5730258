import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { CommandRunner } from '../../sys/runner.js';
import { IpBatch, IpClient } from '../../sys/ip.js';
import { parseIp } from '../../core/cidr.js';
import { Ipam } from '../../ipam/allocator.js';
import { ipamKeys, type HandleRecord } from '../../ipam/keys.js';
import { offsetOfIp, release, type BlockRecord } from '../../ipam/block.js';
import { commitCas } from '../../ipam/cas.js';
import { quantile, describeRuns } from '../stats.js';
import type { Benchmark, Side } from '../benchmark.js';
import type { EtcdMembers } from './bench-cluster.js';
import { NetdBenchHost, counterDelta } from './netd-host.js';
import { VPC_INTERFACE_PEER_ONLY, VPC_INTERFACE_SUBJECT_ONLY } from './netd-cni-latency.js';

/**
 * Where a DEL's time goes. netd's DEL of a VPC interface is: the plugin process and its socket
 * call; then, at the same time, the veth's deletion (the kernel waits for an RCU grace period per
 * unregistered device) and the etcd delete of the endpoint record; then, only once no interface
 * carries the address any more, the address's release (list the handle, read the block, one CAS
 * transaction). The reference's DEL: a Go plugin process, the veth deletion, then a host-local
 * process that deletes a file. Each part is measured here on its own, with the same tools and the
 * same etcd, as baselines in the same rotation as the two DELs.
 */

const CALLS = 40;

const BASELINES = [
  {
    name: 'plugin round trip',
    description:
      'a CNI STATUS through the netd plugin: process start, socket call, the daemon’s dispatch, reply (no kernel or etcd work)',
  },
  {
    name: 'veth delete',
    description:
      '`ip link del` of a veth whose host end is on a bridge and whose other end (with an address) is in a container netns, ' +
      'one `ip` process per call as netd’s DEL does: the kernel unregisters both ends and waits for RCU',
  },
  {
    name: 'port detach',
    description:
      'the same veth taken down and off its bridge (`ip link set down nomaster`, one `ip` process), without deleting it: ' +
      'what a DEL could do before releasing the address, deleting the link later, off the critical path',
  },
  {
    name: 'etcd delete',
    description: 'one etcd delete (as of the endpoint record), from this process, over the same etcd',
  },
  {
    name: 'ipam release',
    description:
      'the ipam library’s releaseHandle from this process (as netd calls it): list the handle, read the block, one CAS transaction',
  },
  {
    name: 'release txn alone',
    description:
      'only the last step of that release: the CAS transaction (block update + handle delete), handle and block read beforehand',
  },
  {
    name: 'host-local DEL',
    description: 'the reference’s IPAM part alone: one host-local process per DEL (a Go binary deleting a file)',
  },
] as const;

type BaselineName = (typeof BASELINES)[number]['name'];

export function netdDelBenchmark(runner: CommandRunner, opts: { etcdMembers: EtcdMembers; suffix: string }): Benchmark {
  const host = new NetdBenchHost(runner);
  let round = 0;
  const daemonDel: number[] = [];
  const reconcilesPerDel: number[] = [];
  const reconcileMs: number[] = [];

  const netdConfig = { cniVersion: '1.1.0', name: 'bench', type: 'netd', vpc: 'bench' };
  const referenceConfig = () => ({
    cniVersion: '1.0.0',
    name: 'bench',
    type: 'bridge',
    bridge: 'cni-bench',
    ipam: { type: 'host-local', ranges: [[{ subnet: '10.129.0.0/16' }]], dataDir: join(host.dir, 'host-local') },
  });

  /** Runs `work(i)` for each of CALLS netns, one after another; returns p50/p99 of the timed parts. */
  async function sequential(
    prepare: (names: string[], r: number) => Promise<void>,
    work: (i: number, names: string[], r: number) => Promise<number>,
  ): Promise<Record<string, number>> {
    const r = round++;
    const ip = new IpClient(runner);
    const names = Array.from({ length: CALLS }, (_, i) => `tn-bcd${process.pid}-${r}-${i}`);
    await ip.addNetns(names);
    try {
      await prepare(names, r);
      const times: number[] = [];
      for (let i = 0; i < CALLS; i++) times.push(await work(i, names, r));
      return { 'per call p50': quantile(times, 0.5), 'per call p99': quantile(times, 0.99) };
    } finally {
      await ip.deleteNetns(names);
    }
  }

  async function dels(side: Side, record: boolean): Promise<Record<string, number>> {
    const plugin = side === 'subject' ? 'netd' : 'bridge';
    const config = side === 'subject' ? netdConfig : referenceConfig();
    const call = (command: 'ADD' | 'DEL', i: number, names: string[], r: number) =>
      host.invoke({
        plugin,
        command,
        config,
        containerId: `d${r}-${i}`,
        ifname: 'eth1',
        netnsPath: `/run/netns/${names[i]}`,
      });
    let before: Awaited<ReturnType<NetdBenchHost['counters']>> | undefined;
    const out = await sequential(
      async (names, r) => {
        for (let i = 0; i < CALLS; i++) await call('ADD', i, names, r);
        if (side === 'subject') before = await host.counters();
      },
      async (i, names, r) => (await call('DEL', i, names, r)).ms,
    );
    if (side === 'subject' && record) {
      const d = counterDelta(before!, await host.counters());
      daemonDel.push((d.cni.DEL!.seconds / d.cni.DEL!.count) * 1000);
      reconcilesPerDel.push(d.reconciles / CALLS);
      if (d.reconciles > 0) reconcileMs.push((d.reconcileSeconds / d.reconciles) * 1000);
    }
    return out;
  }

  /** veth pairs as netd makes them: host end on a bridge, the other end named eth1 with an address. */
  async function wirePairs(names: string[]): Promise<void> {
    const hostIp = new IpClient(host.plugins, { name: host.netns });
    const b = new IpBatch();
    for (let i = 0; i < names.length; i++) {
      b.linkAddVeth(`nd${i}`, 'eth1', { mtu: 1450, master: 'nbdel', peerNetns: `/run/netns/${names[i]}` })
        .linkSet(`nd${i}`, { addrGenMode: 'none' })
        .linkSet(`nd${i}`, { up: true });
    }
    await hostIp.apply(b);
    for (const [i, ns] of names.entries()) {
      await hostIp.in({ name: ns }).apply(
        new IpBatch()
          .linkSet('eth1', { addrGenMode: 'none' })
          .linkSet('eth1', { up: true })
          .addrAdd(`10.251.0.${i + 2}/16`, 'eth1'),
      );
    }
  }

  const timed = async (work: () => Promise<unknown>) => {
    const started = performance.now();
    await work();
    return performance.now() - started;
  };

  async function baseline(name: BaselineName): Promise<Record<string, number>> {
    const hostIp = new IpClient(host.plugins, { name: host.netns });
    switch (name) {
      case 'plugin round trip':
        return sequential(
          async () => undefined,
          async (i, names) =>
            (
              await host.invoke({
                plugin: 'netd',
                command: 'STATUS',
                config: netdConfig,
                containerId: `st${i}`,
                ifname: 'eth1',
                netnsPath: `/run/netns/${names[i]}`,
              })
            ).ms,
        );
      case 'veth delete':
        return sequential(wirePairs, (i) => timed(() => hostIp.apply(new IpBatch().linkDel(`nd${i}`))));
      case 'port detach': {
        const out = await sequential(wirePairs, (i) =>
          timed(() => hostIp.apply(new IpBatch().linkSet(`nd${i}`, { up: false, master: null }))),
        );
        return out;
      }
      case 'etcd delete': {
        const store = host.openStore();
        try {
          return await sequential(
            async (_names, r) => {
              for (let i = 0; i < CALLS; i++)
                await store.put(`/bench/del/${r}/${i}`, JSON.stringify({ i, pad: 'x'.repeat(200) }));
            },
            (i, _names, r) => timed(() => store.delete(`/bench/del/${r}/${i}`)),
          );
        } finally {
          await store.close();
        }
      }
      case 'ipam release':
      case 'release txn alone': {
        const store = host.openStore();
        const ipam = new Ipam({ store, host: 'benchdel' });
        let pool = '';
        let handles: string[] = [];
        try {
          return await sequential(
            async (_names, r) => {
              pool = `del${r}`;
              handles = Array.from({ length: CALLS }, (_, i) => `h${r}-${i}:eth1`);
              await ipam.createPool({ name: pool, cidr: '10.250.0.0/16', kind: 'vpc' });
              for (let i = 0; i < CALLS; i++)
                await ipam.allocate({
                  pool,
                  handle: `h${r}-${i}:eth1`,
                  owner: { containerId: `h${r}-${i}`, ifname: 'eth1' },
                });
            },
            async (i, _names, r) => {
              const handle = `h${r}-${i}:eth1`;
              if (name === 'ipam release') return timed(() => ipam.releaseHandle(handle, pool));
              const hkv = (await store.get(ipamKeys.handleInPool(handle, pool)))!;
              const rec = JSON.parse(hkv.value) as HandleRecord;
              const blockKey = (await store.list(ipamKeys.blocks(pool))).kvs.find(
                (kv) => (JSON.parse(kv.value) as BlockRecord).cidr === rec.block,
              )!;
              const block = JSON.parse(blockKey.value) as BlockRecord;
              const next = release(block, offsetOfIp(block, parseIp(rec.ip)), handle, rec.seq);
              return timed(async () => {
                const { ok } = await commitCas(store, [
                  { key: ipamKeys.handleInPool(handle, pool), expectModRevision: hkv.modRevision, value: null },
                  { key: blockKey.key, expectModRevision: blockKey.modRevision, value: JSON.stringify(next) },
                ]);
                if (!ok) throw new Error('release transaction lost a race it cannot have');
              });
            },
          );
        } finally {
          await store.deletePrefix(ipamKeys.blocks(pool)).catch(() => undefined);
          await store.deletePrefix(ipamKeys.hostAffinities('benchdel')).catch(() => undefined);
          for (const h of handles) await store.deletePrefix(ipamKeys.handle(h)).catch(() => undefined);
          await store.delete(ipamKeys.pool(pool)).catch(() => undefined);
          await store.close();
        }
      }
      case 'host-local DEL': {
        const dataDir = join(host.dir, 'host-local-alone');
        const config = {
          cniVersion: '1.0.0',
          name: 'alone',
          type: 'host-local',
          ipam: { type: 'host-local', ranges: [[{ subnet: '10.252.0.0/16' }]], dataDir },
        };
        const exec = (command: 'ADD' | 'DEL', i: number, names: string[], r: number) =>
          host.invoke({
            plugin: 'host-local',
            command,
            config,
            containerId: `hl${r}-${i}`,
            ifname: 'eth1',
            netnsPath: `/run/netns/${names[i]}`,
          });
        return sequential(
          async (names, r) => {
            for (let i = 0; i < CALLS; i++) await exec('ADD', i, names, r);
          },
          async (i, names, r) => (await exec('DEL', i, names, r)).ms,
        );
      }
    }
  }

  return {
    name: `netd-del${opts.suffix}`,
    title: `netd: where the time of a DEL goes (${CALLS} sequential DELs of one VPC interface, and each part alone; ${opts.etcdMembers === 1 ? '1 etcd member' : `${opts.etcdMembers} etcd members`})`,
    description:
      `${CALLS} containers with one VPC interface each are deleted one after another (ADDs untimed), with netd and with ` +
      'the reference `bridge` + `host-local`, as in netd-cni-latency. Beside them, each part of a DEL is measured alone ' +
      `(${CALLS} calls, one after another) as a baseline. Per-call latency, lower is better.`,
    subjectLabel: 'netd DEL',
    peerLabel: 'bridge + host-local DEL',
    subjectOnly: VPC_INTERFACE_SUBJECT_ONLY,
    peerOnly: VPC_INTERFACE_PEER_ONLY,
    store: () => host.describeStore(),
    metrics: [
      { name: 'per call p50', unit: 'ms', better: 'lower' },
      { name: 'per call p99', unit: 'ms', better: 'lower' },
    ],
    runs: 5,
    needsRoot: true,
    baselines: [...BASELINES],
    async setup() {
      await host.setup({ vpcs: [{ name: 'bench', cidr: '10.128.0.0/16' }], etcdMembers: opts.etcdMembers });
      await new IpClient(runner, { name: host.netns }).apply(
        new IpBatch().linkAddBridge('nbdel', { mcastSnooping: false }).linkSet('nbdel', { up: true }),
      );
    },
    trial: (side, ctx) => dels(side, !ctx.warmup),
    baselineTrial: (name) => baseline(name as BaselineName),
    teardown: () => host.teardown(),
    notes() {
      return [
        `Time netd spent on a DEL (mean, from its /metrics: request received to reply sent): ${describeRuns(daemonDel, 1, ' ms')}. ` +
          'The rest of the plugin’s DEL latency is the plugin process and its socket call (compare “plugin round trip”).',
        `Full reconciles netd ran per DEL: ${describeRuns(reconcilesPerDel, 2)}, ${describeRuns(reconcileMs, 1, ' ms')} each ` +
          '(the record’s delete event: the reconcile lists every link of the host and runs beside the next DEL).',
        'netd’s DEL ≈ plugin round trip + max(veth delete, etcd delete) + ipam release; the reference’s ≈ a Go plugin ' +
          'process + veth delete + host-local DEL. Figures in the notes: median over the measured trials (min–max).',
      ];
    },
  };
}
