#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { describeError } from '../core/errors.js';
import { ExecRunner } from '../sys/runner.js';
import { createLogger } from '../sys/log.js';
import { withCluster, type ClusterSession } from '../test-netns/harness.js';
import { ipamEtcdConfig } from '../test-netns/etcd-cluster.js';
import { findLeaks, formatLeaks } from '../test-netns/leaks.js';
import { eventually, uniqueSuffix } from '../test-netns/testing.js';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { installCniPlugin } from '../sys/cni-install.js';
import { IpBatch, IpClient } from '../sys/ip.js';
import { NftClient } from '../sys/nft.js';
import { GUARD_TABLE } from '../netd/source-guard.js';
import { PortGuard } from '../tagqueue/port-guard.js';
import { EtcdStore } from '../store/etcd.js';
import { Ipam } from '../ipam/allocator.js';
import { Podman } from '../test-netns/podman.js';
import { modelKeys } from '../tenancy/keys.js';
import { run as runCli } from '../netd/cli.js';
import { NetdApiClient } from '../tenancy/api/client.js';
import { ROUTED_PROTO } from '../netd/modes/routed.js';
import { OvsClient } from '../sys/ovs.js';
import { DEFAULT_OVS_BRIDGE } from '../netd/vlan-host.js';
import type { EndpointRecord } from '../tenancy/records.js';
import { startDaemon, stopDaemon } from '../sys/process.js';

/**
 * The main job: the whole system on a virtual cluster, end to end. Today: the cluster itself
 * (hosts on an underlay, the outside world, etcd), traffic between them, and a clean teardown.
 * Each capability adds its act here as it lands.
 */

const say = (text: string): void => {
  process.stdout.write(`${text}\n`);
};
const mark = (ok: boolean): string => (ok ? 'delivered' : 'dropped');

async function underlayAct(s: ClusterSession): Promise<boolean> {
  const { cluster, probe } = s;
  const hosts = cluster.description.hosts;
  say('\n== Underlay: every host reaches every other host (icmp, tcp, udp) ==');
  let ok = true;
  for (const a of hosts) {
    const row: string[] = [];
    for (const b of hosts) {
      if (a === b) {
        row.push('   -   ');
        continue;
      }
      const icmp = await probe.ping(a.netns, b.underlayIp);
      row.push(icmp ? '  ok   ' : ' FAIL  ');
      ok &&= icmp;
    }
    say(`  ${a.name} (${a.underlayIp}) -> ${row.join('')}`);
  }
  const [h1, h2] = hosts;
  if (h1 && h2) {
    const tcp = await probe.delivered({
      from: h1.netns,
      to: h2.netns,
      address: h2.underlayIp,
      protocol: 'tcp',
      port: 8080,
    });
    const udp = await probe.delivered({
      from: h2.netns,
      to: h1.netns,
      address: h1.underlayIp,
      protocol: 'udp',
      port: 5353,
    });
    say(`  tcp h1 -> h2:8080 ${mark(tcp)}; udp h2 -> h1:5353 ${mark(udp)}`);
    ok &&= tcp && udp;
  }
  const out = cluster.description.outside;
  const outside = await probe.ping(hosts[0]!.netns, out.address);
  say(`  h1 -> outside (${out.address}) ${mark(outside)}`);
  return ok && outside;
}

async function containersAct(s: ClusterSession): Promise<boolean> {
  say('\n== Containers: a namespace per container, wired to its host ==');
  const a = await s.containers.add({
    host: 'h1',
    name: 'web',
    address: '192.0.2.2/30',
    hostAddress: '192.0.2.1/30',
    gateway: '192.0.2.1',
  });
  const reach = await s.probe.delivered({
    from: s.cluster.host('h1').netns,
    to: a.netns,
    address: '192.0.2.2',
    protocol: 'tcp',
    port: 80,
  });
  // Nothing routes the container's address on h2 yet (that is netd's job): isolation by default.
  const across = await s.probe.ping(s.cluster.host('h2').netns, '192.0.2.2', 500);
  say(
    `  container web on h1 (${a.netns}): h1 -> web:80 ${mark(reach)}; h2 -> web ${mark(across)} (no route: expected)`,
  );
  await s.containers.remove(a);
  return reach && !across;
}

/**
 * Cluster IPAM: the reference `bridge` plugin on two hosts, with netd-ipam as its IPAM, wires two
 * containers from one pool; each host allocates from its own block; DEL gives everything back.
 */
async function ipamAct(s: ClusterSession): Promise<boolean> {
  say('\n== Cluster IPAM: reference bridge plugin + netd-ipam on two hosts, one pool ==');
  const binDir = mkdtempSync(join(tmpdir(), 'demo-cni-'));
  const store = new EtcdStore(s.cluster.description.etcd.client);
  try {
    installCniPlugin({
      binDir,
      type: 'netd-ipam',
      script: join(dirname(fileURLToPath(import.meta.url)), '..', 'ipam', 'netd-ipam.js'),
    });
    symlinkSync('/usr/lib/cni/bridge', join(binDir, 'bridge'));
    const admin = new Ipam({ store, host: 'admin' });
    await admin.createPool({ name: 'demo-vpc', cidr: '10.60.0.0/16', kind: 'vpc' });
    let ok = true;
    for (const hostName of ['h1', 'h2']) {
      const host = s.cluster.host(hostName);
      const c = await s.containers.add({ host: hostName, name: `app${hostName}` });
      await new IpClient(s.runner, { name: c.netns }).deleteLinkIfExists('eth0');
      const conf = {
        cniVersion: '1.0.0',
        name: 'demo-vpc',
        type: 'bridge',
        bridge: 'cni-demo',
        isGateway: true,
        ipam: {
          type: 'netd-ipam',
          pool: 'demo-vpc',
          host: hostName,
          etcd: ipamEtcdConfig(s.cluster.description),
        },
      };
      const env = {
        CNI_COMMAND: 'ADD',
        CNI_CONTAINERID: c.name,
        CNI_NETNS: c.netnsPath,
        CNI_IFNAME: 'eth0',
        CNI_PATH: binDir,
      };
      const started = Date.now();
      const { stdout } = await s.runner.run({
        argv: [join(binDir, 'bridge')],
        stdin: JSON.stringify(conf),
        env,
        netns: { name: host.netns },
      });
      const ip = (JSON.parse(stdout) as { ips: Array<{ address: string }> }).ips[0]!.address;
      const elapsed = Date.now() - started;
      const [held] = await admin.getHandle(`${hostName}:${c.name}:eth0`);
      const gw = await s.probe.ping(c.netns, '10.60.0.1');
      say(
        `  ${c.name} on ${hostName}: ${ip} from block ${held?.block} (claimed by ${hostName}) in ${elapsed} ms, gateway ${mark(gw)}`,
      );
      ok &&= gw;
      await s.runner.run({
        argv: [join(binDir, 'bridge')],
        stdin: JSON.stringify(conf),
        env: { ...env, CNI_COMMAND: 'DEL' },
        netns: { name: host.netns },
      });
      await s.containers.remove(c);
    }
    const left = await admin.blocks('demo-vpc');
    say(`  after DEL of both: ${left.length} blocks and ${(await admin.handles()).length} handles left in etcd`);
    ok &&= left.length === 0;
    await admin.deletePool('demo-vpc');
    return ok;
  } finally {
    await store.close();
    rmSync(binDir, { recursive: true, force: true });
  }
}

/**
 * netd: two tenants, a VPC each with the same CIDR, podman containers on two hosts attached with
 * `--network external --network vpc-X`; same-VPC traffic crosses hosts, nothing crosses VPCs, eth0
 * reaches the outside world and eth1 never does; a rate limit set in etcd shapes a running container.
 */
async function netdAct(s: ClusterSession): Promise<boolean> {
  say('\n== netd: two tenants, equal CIDRs, podman containers on two hosts ==');
  const d = s.cluster.description;
  const cni = d.cni!;
  const store = new EtcdStore(d.etcd.client);
  const podman = await Podman.create(s.runner, { pluginDir: cni.binDir });
  const h1 = s.cluster.host('h1').netns;
  const h2 = s.cluster.host('h2').netns;
  const server = `demo-web-${uniqueSuffix(2)}`;
  try {
    // Tenants and VPCs through netd's API (h1's daemon); hosts follow etcd.
    const admin = new NetdApiClient(s.cluster.host('h1').daemons.netdApi!, d.adminToken);
    const tenants: Record<string, NetdApiClient> = {};
    for (const [tenant, vpc] of [
      ['tenant-1', 'a'],
      ['tenant-2', 'b'],
    ] as const) {
      const { token, tag } = await admin.call<{ token: string; tag: number }>('POST', '/v1/tenants', { name: tenant });
      tenants[vpc] = admin.withToken(token);
      const created = await tenants[vpc]!.call<{ id: string; vni: number }>('POST', '/v1/vpcs', {
        name: 'app',
        cidr: '10.10.0.0/24',
      });
      // The id the API returned addresses the VPC as well as its name does.
      const conflist = await tenants[vpc]!.call<{ plugins: object[] }>('GET', `/v1/vpcs/${created.id}/cni-config`);
      podman.addNetwork({ name: `vpc-${vpc}`, plugins: conflist.plugins });
      say(`  ${tenant} (tag ${tag}): VPC app = ${created.id}, 10.10.0.0/24, VNI ${created.vni}`);
    }
    // The external network with the reference portmap plugin chained after netd: published ports.
    podman.addNetwork({
      name: 'external',
      plugins: [
        { type: 'netd', external: true },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    });
    let started = Date.now();
    await podman.run(h2, { name: server, networks: ['external', 'vpc-a'], detach: true, publish: ['8080:80'] }, [
      'sh',
      '-c',
      'while true; do echo hello from the web container | nc -l -p 80; done',
    ]);
    const target = (await store.list(modelKeys.endpoints())).kvs.map(
      (kv) => JSON.parse(kv.value) as EndpointRecord,
    )[0]!;
    say(
      `  podman run on h2 (tenant-1, vpc-a): eth1 ${target.ip}, eth0 from ${cni.externalCidr}, ${Date.now() - started} ms`,
    );
    // What tenant-1 sees with the CLI (netdctl endpoint list app).
    let table = '';
    await runCli(
      { api: 'demo', token: undefined, json: false, command: { kind: 'endpoint-list', vpc: 'app' } },
      tenants.a!,
      (text) => (table += text),
    );
    say(
      table
        .trimEnd()
        .split('\n')
        .map((l) => `    ${l}`)
        .join('\n'),
    );
    const attempt = (networks: string[], cmd: string[]) =>
      podman.run(h1, { networks, rm: true }, cmd).then(
        () => true,
        () => false,
      );
    let ok = true;
    started = Date.now();
    const same = await attempt(['external', 'vpc-a'], ['ping', '-c', '1', '-W', '2', target.ip]);
    say(
      `  h1 tenant-1 container -> ${target.ip} (vpc-a on h2): ${mark(same)} (${Date.now() - started} ms incl. podman run)`,
    );
    const other = await attempt(['external', 'vpc-b'], ['ping', '-c', '1', '-W', '1', target.ip]);
    say(`  h1 tenant-2 container -> ${target.ip} (same address space, vpc-b): ${mark(other)}`);
    const out = await attempt(['external', 'vpc-a'], ['ping', '-c', '1', '-W', '2', d.outside.address]);
    const viaEth1 = await attempt(
      ['external', 'vpc-a'],
      ['ping', '-c', '1', '-W', '1', '-I', 'eth1', d.outside.address],
    );
    say(`  eth0 -> outside ${d.outside.address}: ${mark(out)}; eth1 -> outside: ${mark(viaEth1)}`);
    ok = same && !other && out && !viaEth1;
    // Its published port (-p 8080:80 on the external network): from outside, through h2's address.
    const h2Ip = s.cluster.host('h2').underlayIp;
    const fetchPublished = async () =>
      (
        await s.runner
          .run({
            argv: ['busybox', 'nc', '-w', '2', h2Ip, '8080'],
            netns: { name: d.outside.netns },
            stdin: '',
            timeoutMs: 5000,
          })
          .catch(() => ({ stdout: '' }))
      ).stdout.trim();
    const published = (await eventually(async () => (await fetchPublished()) !== '', 10_000))
      ? await fetchPublished()
      : '';
    say(`  outside -> ${h2Ip}:8080 (published, portmap chained after netd on eth0): "${published}"`);
    ok &&= published.startsWith('hello from the web container');

    // QoS: 20 Mbit/s on the running server's eth1, set through the API, measured with iperf3.
    await tenants.a!.call('PATCH', `/v1/vpcs/app/endpoints/${target.id}`, {
      qos: { ingressBps: 20_000_000, egressBps: 20_000_000 },
    });
    await new Promise((r) => setTimeout(r, 500));
    const sandbox = (
      await podman.podman(h2, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', server])
    ).stdout.trim();
    const client = await podman.run(h2, { name: `${server}-c`, networks: ['vpc-a'], detach: true }, ['sleep', '600']);
    void client;
    const clientSandbox = (
      await podman.podman(h2, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', `${server}-c`])
    ).stdout.trim();
    const srv = startDaemon({ argv: ['iperf3', '-s', '-1', '-B', target.ip], netns: { path: sandbox } });
    await new Promise((r) => setTimeout(r, 300));
    const { stdout } = await s.runner.run({
      argv: ['iperf3', '-c', target.ip, '-t', '3', '-O', '1', '-J'],
      netns: { path: clientSandbox },
      timeoutMs: 30_000,
    });
    await stopDaemon(srv, 1000);
    const mbit =
      (JSON.parse(stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second /
      1e6;
    say(`  QoS 20 Mbit/s set on the running container: iperf3 into it measures ${mbit.toFixed(1)} Mbit/s`);
    ok &&= Math.abs(mbit - 20) / 20 < 0.1;
    // h2's daemon counted its CNI work (GET /metrics on its API).
    const metrics = await new NetdApiClient(s.cluster.host('h2').daemons.netdApi!).text('/metrics');
    const adds = /netd_cni_request_duration_seconds_count\{verb="ADD",result="ok"\} (\d+)/.exec(metrics)?.[1] ?? '0';
    say(
      `  h2 /metrics: ${adds} successful CNI ADDs served, endpoints ${/netd_endpoints\{kind="vpc"\} (\d+)/.exec(metrics)?.[1] ?? '?'} on eth1`,
    );
    await podman.remove(h2, `${server}-c`);
    await podman.remove(h2, server);

    // tagqueue: the operator's caps, and what a container's eth0 may not reach or forge.
    ok = (await tagqueueSection(s, podman, admin, tenants.a!)) && ok;

    // A routed VPC beside the vxlan ones: no overlay, the container's /32 routed host to host.
    ok = (await routedSection(s, podman, tenants)) && ok;
    ok = (await routed6Section(s, podman, tenants)) && ok;
    // And vlan VPCs: 802.1Q between hosts through Open vSwitch; the same CIDR twice, apart by tag.
    ok = (await vlanSection(s, podman, tenants)) && ok;

    const left =
      (await store.list(modelKeys.endpoints())).kvs.length + (await store.list('/netd/v1/external/')).kvs.length;
    say(`  podman rm: ${left} endpoint records left`);
    ok &&= left === 0;
    return ok;
  } finally {
    await podman.remove(h2, `${server}-c`).catch(() => undefined);
    await podman.remove(h2, server).catch(() => undefined);
    await podman.cleanup();
    await store.deletePrefix('/netd/v1/');
    await store.close();
  }
}

/**
 * The operator caps tenant-1 (a tenant's request above it is refused); a tenant-1 container on h1,
 * root in its own network namespace, tries etcd and its host through eth0 and forges a source
 * address: nothing arrives, and h1's tagqueue table counts each drop.
 */
async function tagqueueSection(
  s: ClusterSession,
  podman: Podman,
  admin: NetdApiClient,
  tenant: NetdApiClient,
): Promise<boolean> {
  say('\n== tagqueue: operator caps, eth0 kept off the infrastructure, forged sources dropped and counted ==');
  const d = s.cluster.description;
  const h1 = s.cluster.host('h1');
  let caps = '';
  await runCli(
    {
      api: 'demo',
      token: undefined,
      json: false,
      command: {
        kind: 'tenant-caps',
        name: 'tenant-1',
        caps: { eth0: { egressBps: 100e6 }, eth1: { egressBps: 50e6 } },
      },
    },
    admin,
    (text) => (caps += text),
  );
  say(`  netdctl tenant caps tenant-1 --eth0-egress 100mbit --eth1-egress 50mbit:\n${indent(caps)}`);
  const refused = await tenant.call('PATCH', '/v1/vpcs/app', { qos: { egressBps: 80e6 } }).then(
    () => 'accepted',
    (err: unknown) => describeError(err),
  );
  say(`  tenant-1 asks for 80 Mbit/s out of its VPC: ${refused}`);
  let ok = refused.includes('E_OVER_CAP');

  const name = `demo-tq-${uniqueSuffix(2)}`;
  const guard = new PortGuard(new NftClient(s.runner, { name: h1.netns }), createLogger({ level: 'silent' }), () => ({
    infra: [],
    allow: [],
  }));
  try {
    await podman.run(h1.netns, { name, networks: ['external'], detach: true }, ['sleep', '600']);
    const sandbox = (
      await podman.podman(h1.netns, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', name])
    ).stdout.trim();
    const inside = (argv: string[]) =>
      s.runner.run({ argv, netns: { path: sandbox }, timeoutMs: 10_000 }).then(
        () => true,
        () => false,
      );
    const before = await guard.drops();
    const etcd = d.etcd.members[0]!.address;
    const connect = (ip: string, port: number) =>
      inside(['timeout', '2', 'bash', '-c', `exec 3<>/dev/tcp/${ip}/${port}`]);
    const toEtcd = await connect(etcd, 2379);
    const toHost = await connect(h1.underlayIp, 22);
    const world = await inside(['ping', '-c', '1', '-W', '2', d.outside.address]);
    await inside(['ip', 'addr', 'add', '100.64.250.250/32', 'dev', 'eth0']);
    const forged = await inside(['ping', '-c', '3', '-i', '0.2', '-W', '1', '-I', '100.64.250.250', d.outside.address]);
    const after = await guard.drops();
    const grew = (k: 'infra' | 'host' | 'spoofed') => after[k].packets - before[k].packets;
    say(`  eth0 -> etcd ${etcd}:2379: ${mark(toEtcd)} (h1 counted ${grew('infra')} infra drops)`);
    say(`  eth0 -> its own host ${h1.underlayIp}: ${mark(toHost)} (${grew('host')} host drops)`);
    say(`  eth0 -> outside ${d.outside.address}: ${mark(world)}`);
    say(`  root in the container forges 100.64.250.250 on eth0: ${mark(forged)} (${grew('spoofed')} spoofed drops)`);
    ok &&= !toEtcd && !toHost && world && !forged && grew('infra') > 0 && grew('host') > 0 && grew('spoofed') >= 3;
  } finally {
    await podman.remove(h1.netns, name).catch(() => undefined);
    await admin.call('PUT', '/v1/tenants/tenant-1/caps', {});
  }
  return ok;
}

const indent = (text: string) =>
  text
    .trimEnd()
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');

/**
 * tenant-1's second VPC in routed mode (Calico-style): a podman container on each host, reachable
 * across hosts without encapsulation at the underlay's MTU; tenant-2 cannot claim an overlapping
 * routed CIDR; h1's routing table for the VPC shows h2's block via h2's underlay address.
 */
async function routedSection(
  s: ClusterSession,
  podman: Podman,
  tenants: Record<string, NetdApiClient>,
): Promise<boolean> {
  say('  -- routed mode --');
  const d = s.cluster.description;
  const [h1, h2] = [s.cluster.host('h1'), s.cluster.host('h2')];
  const name = `demo-routed-${uniqueSuffix(2)}`;
  try {
    const vpc = await tenants.a!.call<{ id: string; vni: number }>('POST', '/v1/vpcs', {
      name: 'fast',
      cidr: '10.20.0.0/24',
      mode: 'routed',
    });
    const conflist = await tenants.a!.call<{ plugins: object[] }>('GET', `/v1/vpcs/${vpc.id}/cni-config`);
    podman.addNetwork({ name: 'vpc-fast', plugins: conflist.plugins });
    say(`  tenant-1: VPC fast = ${vpc.id}, 10.20.0.0/24, mode routed`);
    const refused = await tenants
      .b!.call('POST', '/v1/vpcs', { name: 'fast', cidr: '10.20.0.128/25', mode: 'routed' })
      .then(
        () => 'created (wrong)',
        (err: unknown) => describeError(err),
      );
    say(`  tenant-2 asks for routed 10.20.0.128/25: ${refused}`);
    await podman.run(h2.netns, { name, networks: ['vpc-fast'], detach: true }, ['sleep', '600']);
    const sandbox = (
      await podman.podman(h2.netns, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', name])
    ).stdout.trim();
    const inside = new IpClient(s.runner, { path: sandbox });
    // Its only network: podman names the interface eth0.
    const eth1 = (await inside.addresses('eth0'))[0];
    const mtu = (await inside.link('eth0'))?.mtu;
    const addr = eth1?.addr_info.find((a) => a.family === 'inet');
    say(`  podman run on h2: ${addr?.local}/${addr?.prefixlen}, MTU ${mtu} (underlay ${d.underlay.mtu})`);
    await podman.run(h1.netns, { name: `${name}-c`, networks: ['vpc-fast'], detach: true }, ['sleep', '600']);
    const reached = await podman
      .podman(h1.netns, ['exec', `${name}-c`, 'ping', '-c', '1', '-W', '2', addr?.local ?? '0.0.0.0'])
      .then(
        () => true,
        () => false,
      );
    say(`  h1 container -> ${addr?.local} (routed, on h2): ${mark(reached)}`);
    const routes = await new IpClient(s.runner, { name: h1.netns }).routesByProto(ROUTED_PROTO);
    const viaH2 = routes.filter((r) => r.gateway === h2.underlayIp).map((r) => r.dst);
    say(`  h1 routes ${viaH2.join(', ') || 'nothing'} via h2 (${h2.underlayIp}), no tunnel`);
    return /E_POOL_OVERLAP/.test(refused) && reached && addr?.prefixlen === 32 && viaH2.length > 0;
  } finally {
    await podman.remove(h1.netns, `${name}-c`).catch(() => undefined);
    await podman.remove(h2.netns, name).catch(() => undefined);
  }
}

/**
 * An IPv6 routed VPC of tenant-1: podman containers on h1 and h2 with /128s behind fe80::1, routed
 * between the hosts by their IPv6 underlay addresses; a forged source is dropped by the guard.
 */
async function routed6Section(
  s: ClusterSession,
  podman: Podman,
  tenants: Record<string, NetdApiClient>,
): Promise<boolean> {
  say('  -- routed mode, IPv6 --');
  const [h1, h2] = [s.cluster.host('h1'), s.cluster.host('h2')];
  const name = `demo-routed6-${uniqueSuffix(2)}`;
  try {
    const vpc = await tenants.a!.call<{ id: string }>('POST', '/v1/vpcs', {
      name: 'fast6',
      cidr: 'fd20::/64',
      mode: 'routed',
    });
    const conflist = await tenants.a!.call<{ plugins: object[] }>('GET', `/v1/vpcs/${vpc.id}/cni-config`);
    podman.addNetwork({ name: 'vpc-fast6', plugins: conflist.plugins });
    say(`  tenant-1: VPC fast6 = ${vpc.id}, fd20::/64, mode routed`);
    await podman.run(h2.netns, { name, networks: ['vpc-fast6'], detach: true }, ['sleep', '600']);
    const sandbox = (
      await podman.podman(h2.netns, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', name])
    ).stdout.trim();
    const addr = (await new IpClient(s.runner, { path: sandbox }).addresses('eth0'))[0]?.addr_info.find(
      (a) => a.family === 'inet6',
    );
    say(`  podman run on h2: ${addr?.local}/${addr?.prefixlen}, gateway fe80::1 (on the host port itself)`);
    await podman.run(h1.netns, { name: `${name}-c`, networks: ['vpc-fast6'], detach: true }, ['sleep', '600']);
    const ping = (args: string[]) =>
      podman.podman(h1.netns, ['exec', `${name}-c`, 'ping', '-c', '1', '-W', '2', ...args]).then(
        () => true,
        () => false,
      );
    const reached = await ping([addr?.local ?? '::']);
    say(`  h1 container -> ${addr?.local} (routed, on h2, via h2's ${h2.underlayIp6}): ${mark(reached)}`);
    // Root in the container takes another address of the VPC (done from outside: podman's default
    // capabilities lack NET_ADMIN): the guard drops what it sends.
    const sandbox1 = (
      await podman.podman(h1.netns, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', `${name}-c`])
    ).stdout.trim();
    await new IpClient(s.runner, { path: sandbox1 }).apply(
      new IpBatch().addrAdd('fd20::ff:1/128', 'eth0', { nodad: true }),
    );
    const guardDrops = async () => {
      const table = await new NftClient(s.runner, { name: h1.netns }).table('ip6', GUARD_TABLE);
      return Number(/"packets":\s*(\d+)/.exec(JSON.stringify(table?.rules ?? []))?.[1] ?? 0);
    };
    const before = await guardDrops();
    const forged = await ping(['-I', 'fd20::ff:1', addr?.local ?? '::']);
    const dropped = (await guardDrops()) - before;
    say(
      `  the same container with a forged source fd20::ff:1: ${forged ? 'reached (wrong)' : 'not delivered'}; ` +
        `h1's source guard dropped ${dropped} packet(s)`,
    );
    return reached && !forged && dropped > 0 && addr?.prefixlen === 128;
  } finally {
    await podman.remove(h1.netns, `${name}-c`).catch(() => undefined);
    await podman.remove(h2.netns, name).catch(() => undefined);
  }
}

/**
 * vlan mode: tenant-1 and tenant-2 each get a vlan VPC with the same CIDR (each its own VLAN id on
 * physnet0); tenant-1's podman containers on h1 and h2 reach each other over the trunk, tenant-2's
 * container (given the same address as tenant-1's on h2) is not reached from tenant-1's.
 */
async function vlanSection(
  s: ClusterSession,
  podman: Podman,
  tenants: Record<string, NetdApiClient>,
): Promise<boolean> {
  say('  -- vlan mode (Open vSwitch, 802.1Q trunk between hosts) --');
  const [h1, h2] = [s.cluster.host('h1'), s.cluster.host('h2')];
  const name = `demo-vlan-${uniqueSuffix(2)}`;
  const started: Array<[string, string]> = [];
  try {
    const ready = JSON.parse(await new NetdApiClient(h1.daemons.netdApi!).text('/readyz')) as {
      modes: string[];
      vlan?: { datapath: string; physnet: string };
    };
    say(
      `  h1 /readyz: modes ${ready.modes.join(', ')}; vlan on ${ready.vlan?.physnet} (${ready.vlan?.datapath} datapath)`,
    );
    const a = await tenants.a!.call<{ id: string; vlan: number }>('POST', '/v1/vpcs', {
      name: 'wire',
      cidr: '10.30.0.0/24',
      mode: 'vlan',
    });
    const b = await tenants.b!.call<{ id: string; vlan: number }>('POST', '/v1/vpcs', {
      name: 'wire',
      cidr: '10.30.0.0/24',
      mode: 'vlan',
    });
    say(`  tenant-1: ${a.id} VLAN ${a.vlan}; tenant-2: ${b.id} VLAN ${b.vlan}; both 10.30.0.0/24`);
    for (const vpc of [a, b]) {
      const conflist = await tenants[vpc === a ? 'a' : 'b']!.call<{ plugins: object[] }>(
        'GET',
        `/v1/vpcs/${vpc.id}/cni-config`,
      );
      podman.addNetwork({ name: `vlan-${vpc.id}`, plugins: conflist.plugins });
    }
    const run = async (host: typeof h1, container: string, vpc: string) => {
      await podman.run(host.netns, { name: container, networks: [`vlan-${vpc}`], detach: true }, ['sleep', '600']);
      started.push([host.netns, container]);
      const sandbox = (
        await podman.podman(host.netns, ['inspect', '--format', '{{.NetworkSettings.SandboxKey}}', container])
      ).stdout.trim();
      return (await new IpClient(s.runner, { path: sandbox }).addresses('eth0'))[0]?.addr_info.find(
        (x) => x.family === 'inet',
      )?.local;
    };
    const onH2 = await run(h2, name, a.id);
    await run(h1, `${name}-c`, a.id);
    const otherOnH2 = await run(h2, `${name}-o`, b.id);
    const ping = (target: string | undefined) =>
      podman.podman(h1.netns, ['exec', `${name}-c`, 'ping', '-c', '1', '-W', '2', target ?? '0.0.0.0']).then(
        () => true,
        () => false,
      );
    const reached = await ping(onH2);
    say(`  tenant-1 h1 -> ${onH2} (tenant-1, on h2, over the trunk): ${mark(reached)}`);
    say(`  tenant-2's container on h2 has ${otherOnH2} in the same CIDR, on VLAN ${b.vlan}`);
    const ovs = new OvsClient(s.runner, { dbSocket: h2.vlan!.ovsDb });
    const tags = [...(await ovs.bridgePorts(DEFAULT_OVS_BRIDGE))].filter(([p]) => p !== 'trunk').map(([, t]) => t);
    say(
      `  h2's Open vSwitch bridge: access ports tagged ${tags.sort((x, y) => (x ?? 0) - (y ?? 0)).join(', ')}, trunk untagged`,
    );
    return reached && a.vlan !== b.vlan && tags.includes(a.vlan) && tags.includes(b.vlan);
  } finally {
    for (const [netns, container] of started.reverse()) await podman.remove(netns, container).catch(() => undefined);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({ options: { hosts: { type: 'string', default: '3' }, prefix: { type: 'string' } } });
  const logger = createLogger({ level: process.env.LOG_LEVEL ?? 'warn', destination: process.stderr });
  const runner = new ExecRunner({ logger });
  const prefix = values.prefix ?? `demo${uniqueSuffix(2)}`;
  const hosts = Number(values.hosts);
  const started = Date.now();
  let ok = true;
  await withCluster({ prefix, hosts, runner, logger, with: ['netd'], vlan: true }, async (s) => {
    const d = s.cluster.description;
    say(`== Cluster ${d.prefix}: ${d.hosts.length} hosts up in ${Date.now() - started} ms ==`);
    for (const h of d.hosts) say(`  ${h.name}\tnetns ${h.netns}\tunderlay ${h.underlayIp}`);
    say(`  outside\tnetns ${d.outside.netns}\taddress ${d.outside.address}`);
    say(
      `  etcd\t${d.etcd.hostClient.endpoints.join(',')} (hosts, TLS, user netd), ${d.etcd.client.endpoints.join(',')} (here, user root)`,
    );
    ok = (await underlayAct(s)) && ok;
    ok = (await containersAct(s)) && ok;
    ok = (await ipamAct(s)) && ok;
    ok = (await netdAct(s)) && ok;
    const residue = await s.residue();
    say(`\n== Residue while up: ${residue.length === 0 ? 'none' : formatLeaks(residue)} ==`);
    ok &&= residue.length === 0;
  });
  const leaks = await findLeaks({ prefix, runner });
  say(`== Torn down; leak check: ${leaks.length === 0 ? 'no leaks' : `\n${formatLeaks(leaks)}`} ==`);
  ok &&= leaks.length === 0;
  say(ok ? '\nDEMO OK' : '\nDEMO FAILED');
  return ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`demo: ${describeError(err)}\n`);
    process.exit(1);
  },
);
