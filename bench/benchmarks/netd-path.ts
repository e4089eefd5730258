import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, ErrorCodes } from '../../core/errors.js';
import type { CommandRunner } from '../../sys/runner.js';
import { IpClient } from '../../sys/ip.js';
import { startDaemon, stopDaemon, type DaemonHandle } from '../../sys/process.js';
import { VirtualCluster, teardownCluster } from '../../test-netns/cluster.js';
import { names } from '../../test-netns/names.js';
import { uniqueSuffix } from '../../test-netns/testing.js';
import { NetdApiClient } from '../../tenancy/api/client.js';
import type { ModeName } from '../../tenancy/records.js';
import type { Benchmark, Side } from '../benchmark.js';

/**
 * The data path of a network mode: two containers on two hosts of a virtual cluster, wired by netd
 * (podman's way: the netd plugin, one process per call), against the ceiling — the same
 * measurement between the two hosts' own namespaces over the underlay they share. Throughput with
 * iperf3 (1 and 8 TCP streams), TCP request/response round trips with sockperf ping-pong.
 */

const IPERF_SECONDS = 3;
const RR_SECONDS = 2;
const IPERF_PORT = 5201;
const RR_PORT = 11111;

/** Where vlan mode's numbers come from on this machine, and what a production host changes. */
const VLAN_NOTE =
  'vlan here is the userspace datapath: no OVS kernel module (and no 8021q) in this kernel. Every frame crosses ' +
  'two ovs-vswitchd processes through packet sockets (a copy in and out of user space, one syscall per frame on ' +
  'this 2-core machine, where the sender, the receiver and both switches share the CPUs), and the container veths ' +
  'must compute checksums themselves, which turns TSO/GSO off: a packet per 1448-byte segment. The target ratios ' +
  'of the other modes do not apply. With the kernel datapath (openvswitch module; netd picks it when loaded) or ' +
  '8021q, a frame is switched in softirq like a Linux bridge does, offloads stay on, and the path costs about what ' +
  "vxlan's does without the encapsulation.";

interface Endpoint {
  netns: string;
  ip: string;
}

export function netdPathBenchmark(runner: CommandRunner, mode: ModeName): Benchmark {
  let cluster: VirtualCluster | undefined;
  let prefix = '';
  const servers: DaemonHandle[] = [];
  let logDir = '';
  const pairs: Partial<Record<Side, { from: Endpoint; to: Endpoint }>> = {};
  let mtu = { container: 0, underlay: 0 };

  const iperf = async (from: Endpoint, to: Endpoint, streams: number): Promise<number> => {
    const { stdout } = await runner.run({
      argv: [
        'iperf3',
        '-c',
        to.ip,
        '-p',
        String(IPERF_PORT),
        '-t',
        String(IPERF_SECONDS),
        '-O',
        '1',
        '-P',
        String(streams),
        '-J',
      ],
      netns: { name: from.netns },
      timeoutMs: (IPERF_SECONDS + 20) * 1000,
    });
    const out = JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } };
    return out.end.sum_received.bits_per_second / 1e9;
  };
  const roundTrips = async (from: Endpoint, to: Endpoint): Promise<{ p50: number; p99: number }> => {
    const { stdout, stderr } = await runner.run({
      argv: [
        'sockperf',
        'ping-pong',
        '--tcp',
        '-i',
        to.ip,
        '-p',
        String(RR_PORT),
        '-t',
        String(RR_SECONDS),
        '--full-rtt',
      ],
      netns: { name: from.netns },
      timeoutMs: (RR_SECONDS + 20) * 1000,
    });
    const text = stdout + stderr;
    const at = (p: string) => {
      const m = new RegExp(`percentile ${p} =\\s*([0-9.]+)`).exec(text);
      if (!m) throw new AppError(ErrorCodes.INTERNAL, `sockperf gave no ${p} percentile: ${text.slice(-400)}`);
      return Number(m[1]);
    };
    return { p50: at('50.000'), p99: at('99.000') };
  };

  return {
    name: `netd-path-${mode}`,
    title: `netd ${mode} mode: throughput and round trips between containers on two hosts, against the ceiling`,
    description:
      `Two containers on two hosts, attached by netd in ${mode} mode through its CNI plugin, measured ` +
      `against the same measurement between the two hosts' namespaces over their shared underlay (a veth ` +
      `pair each into one Linux bridge: the fabric). iperf3 ${IPERF_SECONDS} s (1 s omitted) with 1 and 8 ` +
      `TCP streams; sockperf TCP ping-pong ${RR_SECONDS} s, full round-trip times. Both sides run the ` +
      `same tools in the same rotation; the ratio is the mode's share of the ceiling.`,
    subjectLabel: `containers, netd ${mode}`,
    peerLabel: 'host to host (ceiling)',
    subjectOnly: {
      vxlan: [
        'one more veth pair per side (container ↔ host), a Linux bridge and a VXLAN device per side',
        'VXLAN encapsulation (50 bytes per packet: container MTU = underlay MTU − 50)',
      ],
      routed: [
        'one more veth pair per side (container ↔ host) and IP forwarding on each host',
        'a policy rule and a per-VPC routing table per packet; strict rp_filter on the container port',
      ],
      vlan: [
        'one more veth pair per side (container ↔ host) and Open vSwitch per host on its userspace datapath ' +
          '(no OVS kernel module here): every frame is copied into ovs-vswitchd through a packet socket and out again',
        'checksum offload off on the container veths (the userspace datapath needs it): no TSO/GSO, one packet per segment',
        'an 802.1Q tag per frame on the trunk (a second veth per host into its own fabric bridge)',
        'a shaper veth pair per container between its port and OVS (two tc mirred redirects per frame): what lets ' +
          'egress limits work on the userspace datapath',
      ],
    }[mode],
    peerOnly: ['nothing: it is the path the subject rides on, without the container hops'],
    store: 'not involved (the data path only; the wiring is done before measuring)',
    metrics: [
      { name: 'tput1', unit: 'Gbit/s', better: 'higher' },
      { name: 'tput8', unit: 'Gbit/s', better: 'higher' },
      { name: 'rr_p50', unit: 'µs', better: 'lower' },
      { name: 'rr_p99', unit: 'µs', better: 'lower' },
    ],
    runs: 5,
    needsRoot: true,
    async setup() {
      prefix = `bp${uniqueSuffix(2)}`;
      cluster = await VirtualCluster.up({ prefix, hosts: 2, with: ['netd'], vlan: mode === 'vlan' }, { runner });
      const d = cluster.description;
      const [h1, h2] = d.hosts as [(typeof d.hosts)[0], (typeof d.hosts)[0]];
      const admin = new NetdApiClient(h1.daemons.netdApi!, d.adminToken);
      const { token } = await admin.call<{ token: string }>('POST', '/v1/tenants', { name: 'bench' });
      const tenant = admin.withToken(token);
      const vpc = await tenant.call<{ id: string }>('POST', '/v1/vpcs', { name: 'p', cidr: '10.50.0.0/24', mode });
      const cni = d.cni!;
      const attach = async (host: typeof h1, name: string): Promise<Endpoint> => {
        const netns = names.containerNetns(prefix, host.name, name);
        await new IpClient(runner).addNetns([netns]);
        await runner.run({ argv: ['ip', 'link', 'set', 'lo', 'up'], netns: { name: netns } });
        const { stdout } = await runner.run({
          argv: [join(cni.binDir, 'netd')],
          stdin: JSON.stringify({ cniVersion: '1.0.0', name: 'bench', type: 'netd', vpc: vpc.id }),
          netns: { name: host.netns },
          env: {
            CNI_COMMAND: 'ADD',
            CNI_PATH: cni.binDir,
            CNI_CONTAINERID: `${prefix}-${name}`,
            CNI_NETNS: names.netnsPath(netns),
            CNI_IFNAME: 'eth1',
          },
          timeoutMs: 30_000,
        });
        const ip = (JSON.parse(stdout) as { ips: Array<{ address: string }> }).ips[0]!.address.split('/')[0]!;
        return { netns, ip };
      };
      const c1 = await attach(h1, 'c1');
      const c2 = await attach(h2, 'c2');
      pairs.subject = { from: c1, to: c2 };
      pairs.peer = { from: { netns: h1.netns, ip: h1.underlayIp }, to: { netns: h2.netns, ip: h2.underlayIp } };
      mtu = {
        container: (await new IpClient(runner, { name: c1.netns }).link('eth1'))?.mtu ?? 0,
        underlay: d.underlay.mtu,
      };
      logDir = mkdtempSync(join(tmpdir(), 'bench-path-'));
      for (const [side, p] of Object.entries(pairs)) {
        servers.push(
          startDaemon({
            argv: ['iperf3', '-s', '-B', p.to.ip, '-p', String(IPERF_PORT)],
            netns: { name: p.to.netns },
            logFile: join(logDir, `iperf-${side}.log`),
          }),
          startDaemon({
            argv: ['sockperf', 'server', '--tcp', '-i', p.to.ip, '-p', String(RR_PORT)],
            netns: { name: p.to.netns },
            logFile: join(logDir, `sockperf-${side}.log`),
          }),
        );
      }
      // The servers listen within a few ms; the first (warm-up) trial retries nothing, so wait for
      // both to answer one short round trip before measuring.
      for (let i = 0; i < 50; i++) {
        try {
          for (const p of Object.values(pairs)) await roundTrips(p.from, p.to);
          return;
        } catch {
          await sleep(100);
        }
      }
      throw new AppError(ErrorCodes.INTERNAL, 'the measurement servers did not answer');
    },
    async trial(side) {
      const p = pairs[side]!;
      const tput1 = await iperf(p.from, p.to, 1);
      const tput8 = await iperf(p.from, p.to, 8);
      const rr = await roundTrips(p.from, p.to);
      return { tput1, tput8, rr_p50: rr.p50, rr_p99: rr.p99 };
    },
    async teardown() {
      for (const s of servers.splice(0)) await stopDaemon(s, 2000).catch(() => undefined);
      if (logDir) rmSync(logDir, { recursive: true, force: true });
      if (cluster) await teardownCluster(prefix, { runner });
      cluster = undefined;
    },
    notes: () => [
      `Container MTU ${mtu.container}, underlay MTU ${mtu.underlay}.`,
      ...(mode === 'vlan' ? [VLAN_NOTE] : []),
    ],
  };
}
