import { mkdtempSync, rmSync, symlinkSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CommandRunner } from '../../sys/runner.js';
import { startDaemon, stopDaemon, processStartTime, type DaemonHandle } from '../../sys/process.js';
import { IpClient } from '../../sys/ip.js';
import { VirtualCluster, teardownCluster } from '../../test-netns/cluster.js';
import { uniqueSuffix } from '../../test-netns/testing.js';
import { EtcdStore } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { installNetdPlugin } from '../../netd/install-cni.js';
import { netdKeys } from '../../netd/keys.js';
import { quantile } from '../stats.js';
import type { Benchmark } from '../benchmark.js';

/**
 * CNI ADD and DEL latency of one VPC interface: netd (sh plugin → daemon → ipam on etcd → veth,
 * bridge, vxlan) against the reference bridge + host-local chain, both invoked as a runtime would
 * (a process per call, in the host's namespace, sequentially), on the same virtual host.
 */

const CONTAINERS = 40;
const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'netd', 'main.js');

export function netdCniLatencyBenchmark(runner: CommandRunner): Benchmark {
  let cluster: VirtualCluster | undefined;
  let dir = '';
  let daemon: DaemonHandle | undefined;
  let trial = 0;
  const rss: number[] = [];
  const hostNetns = () => cluster!.host('h1').netns;

  async function invoke(plugin: string, command: string, config: object, container: string, netnsPath: string): Promise<number> {
    const started = performance.now();
    await runner.run({
      argv: [join(dir, 'bin', plugin)],
      stdin: JSON.stringify(config),
      netns: { name: hostNetns() },
      env: { CNI_COMMAND: command, CNI_CONTAINERID: container, CNI_NETNS: netnsPath, CNI_IFNAME: 'eth1', CNI_PATH: join(dir, 'bin') },
    });
    return performance.now() - started;
  }

  return {
    name: 'netd-cni-latency',
    title: `netd: CNI ADD/DEL latency of one VPC interface vs bridge + host-local (${CONTAINERS} containers, sequential)`,
    description:
      `${CONTAINERS} containers get one VPC interface each, one ADD after another, then are deleted one after another, on one ` +
      'virtual host. Subject: the netd plugin (a static C shim to the host daemon, which allocates from the cluster IPAM on ' +
      'etcd, fsync included, wires the veth and converges bridge + vxlan). Peer: the reference `bridge` plugin with `host-local` IPAM ' +
      '(node-local files, no cluster state). Latency per call, lower is better.',
    subjectLabel: 'netd',
    peerLabel: 'bridge + host-local',
    metrics: [
      { name: 'ADD p50', unit: 'ms', better: 'lower' },
      { name: 'ADD p99', unit: 'ms', better: 'lower' },
      { name: 'DEL p50', unit: 'ms', better: 'lower' },
      { name: 'DEL p99', unit: 'ms', better: 'lower' },
    ],
    runs: 3,
    needsRoot: true,
    async setup() {
      dir = mkdtempSync(join(tmpdir(), 'bench-cni-'));
      cluster = await VirtualCluster.up({ prefix: `bc${uniqueSuffix(2)}`, hosts: 1 }, { runner });
      const d = cluster.description;
      const store = new EtcdStore({ endpoints: d.etcd.endpoints });
      await store.put(netdKeys.vpc('bench'), JSON.stringify({ name: 'bench', tenant: 't', mode: 'vxlan', cidr: '10.128.0.0/16', vni: 4000 }));
      await new Ipam({ store, host: 'admin' }).createPool({ name: 'bench', cidr: '10.128.0.0/16', kind: 'vpc' });
      await store.close();
      installNetdPlugin(join(dir, 'bin'), join(dir, 'sock'));
      for (const p of ['bridge', 'host-local']) symlinkSync(join('/usr/lib/cni', p), join(dir, 'bin', p));
      const h = cluster.host('h1');
      const log = join(dir, 'netd.log');
      daemon = startDaemon({
        argv: [process.execPath, MAIN, '--host', 'h1', '--underlay-ip', h.underlayIp, '--uplink', h.uplink, '--etcd', d.etcd.underlayEndpoints.join(','), '--cni-socket-dir', join(dir, 'sock')],
        netns: { name: h.netns },
        logFile: log,
        env: { LOG_LEVEL: 'warn' },
      });
      for (let i = 0; i < 300 && !readFileSync(log, 'utf8').includes('ready'); i++) await sleep(50);
    },
    async trial(side) {
      const n = trial++;
      const ip = new IpClient(runner);
      const names = Array.from({ length: CONTAINERS }, (_, i) => `tn-bcc${process.pid}-${n}-${i}`);
      await ip.addNetns(names);
      const config =
        side === 'subject'
          ? { cniVersion: '1.0.0', name: 'bench', type: 'netd', vpc: 'bench' }
          : { cniVersion: '1.0.0', name: 'bench', type: 'bridge', bridge: 'cni-bench', ipam: { type: 'host-local', ranges: [[{ subnet: '10.129.0.0/16' }]], dataDir: join(dir, 'host-local') } };
      const plugin = side === 'subject' ? 'netd' : 'bridge';
      const add: number[] = [];
      const del: number[] = [];
      try {
        for (const [i, ns] of names.entries()) add.push(await invoke(plugin, 'ADD', config, `c${n}-${i}`, `/run/netns/${ns}`));
        if (side === 'subject' && daemon) rss.push(readRssKb(daemon.pid));
        for (const [i, ns] of names.entries()) del.push(await invoke(plugin, 'DEL', config, `c${n}-${i}`, `/run/netns/${ns}`));
      } finally {
        await ip.deleteNetns(names);
      }
      return { 'ADD p50': quantile(add, 0.5), 'ADD p99': quantile(add, 0.99), 'DEL p50': quantile(del, 0.5), 'DEL p99': quantile(del, 0.99) };
    },
    async teardown() {
      if (daemon) await stopDaemon(daemon);
      if (cluster) await teardownCluster(cluster.prefix, { runner });
      rmSync(dir, { recursive: true, force: true });
    },
    notes() {
      return rss.length ? [`netd RSS with ${CONTAINERS} endpoints: ${Math.max(...rss) / 1024 | 0} MiB.`] : [];
    },
  };
}

function readRssKb(pid: number): number {
  if (processStartTime(pid) === undefined) return 0;
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}
