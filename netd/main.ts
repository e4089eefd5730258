#!/usr/bin/env node
import { parseArgs } from 'node:util';
import { isIP, isIPv4 } from 'node:net';
import { lookup } from 'node:dns/promises';
import { describeError, invalidInput } from '../core/errors.js';
import { formatCidr, parseCidr, parseIp } from '../core/cidr.js';
import { ExecRunner, SpawnerRunner, type CommandRunner } from '../sys/runner.js';
import { createLogger, type Logger } from '../sys/log.js';
import { ifname } from '../sys/tokens.js';
import { EtcdStore } from '../store/etcd.js';
import { etcdConnection, etcdInputFromEnv, mergeEtcdInput, refusePasswordFlag } from '../store/etcd-config.js';
import { Ipam } from '../ipam/allocator.js';
import { NetdDaemon, type HostCapabilities } from './daemon.js';
import { checkHostName, PHYSNET_RE } from '../tenancy/records.js';
import { DEFAULT_PHYSNET } from '../tenancy/vpcs.js';
import { DEFAULT_OVS_BRIDGE, type VlanHostOptions } from './vlan-host.js';
import { OWNED_LINK_RE } from './names.js';
import { buildNetdApi } from './api-routes.js';
import { NetdMetrics } from './metrics.js';
import { readFileSync, rmSync, chmodSync } from 'node:fs';
import { installNetdPlugin } from './install-cni.js';
import { SOCKET_DIR } from './cni/server.js';
import { checkAsn, parseBgpPeer, type BgpOptions } from './bgp.js';
import { EXTERNAL_MODES, type ExternalMode } from './external.js';
import { ipv6Of } from './modes/routed.js';

/**
 * `netd`: the per-host daemon. Runs in the host's network namespace.
 *   netd --host NAME --underlay-ip IP [--underlay-ip6 IP6] --uplink IF [--mtu 1500] --etcd URL[,URL] [--lease-ttl 10]
 *        [--etcd-ca FILE [--etcd-cert FILE --etcd-key FILE]] [--etcd-user NAME --etcd-password-file FILE]
 *        (each also from $NETD_ETCD_ENDPOINTS, _CA, _CERT, _KEY, _USER, _PASSWORD_FILE; or $NETD_ETCD_PASSWORD)
 *        [--external-pool NAME [--external-mode nat|routed]] [--dead-host-grace 900] [--sweep-interval 30]
 *        [--api-socket PATH] [--api-listen ADDR:PORT] [--admin-token-file FILE | $NETD_ADMIN_TOKEN]
 *        [--bgp-asn N --bgp-peer IP:ASN... --bgp-config FILE --bgp-socket PATH [--bgp-export CIDR...]]
 *        [--fabric-gateway IP] [--fabric-gateway6 IP6]
 *        [--vlan-trunk IF [--physnet physnet0] [--ovs-bridge br-netd] [--ovs-db PATH]]
 *   (the operator's routed and VLAN ranges are cluster policy: PUT /v1/policy, not flags)
 *   netd install-cni [--cni-bin-dir /opt/cni/bin] [--cni-socket-dir /run/netd]
 * SIGTERM/SIGINT stop it gracefully: the data path stays, the registration outlives a quick restart.
 */
async function main(): Promise<void> {
  if (process.argv[2] === 'install-cni') {
    const { values } = parseArgs({
      args: process.argv.slice(3),
      options: {
        'cni-bin-dir': { type: 'string', default: '/opt/cni/bin' },
        'cni-socket-dir': { type: 'string', default: SOCKET_DIR },
      },
    });
    process.stdout.write(`installed ${installNetdPlugin(values['cni-bin-dir']!, values['cni-socket-dir'])}\n`);
    return;
  }
  refusePasswordFlag(process.argv.slice(2));
  const { values } = parseArgs({
    options: {
      host: { type: 'string' },
      'underlay-ip': { type: 'string' },
      'underlay-ip6': { type: 'string' },
      uplink: { type: 'string' },
      mtu: { type: 'string', default: '1500' },
      etcd: { type: 'string' },
      'etcd-ca': { type: 'string' },
      'etcd-cert': { type: 'string' },
      'etcd-key': { type: 'string' },
      'etcd-user': { type: 'string' },
      'etcd-password-file': { type: 'string' },
      'lease-ttl': { type: 'string', default: '10' },
      'cni-socket-dir': { type: 'string', default: SOCKET_DIR },
      'external-pool': { type: 'string' },
      'external-mode': { type: 'string', default: 'nat' },
      'dead-host-grace': { type: 'string', default: '900' },
      'sweep-interval': { type: 'string', default: '30' },
      'api-socket': { type: 'string' },
      'api-listen': { type: 'string' },
      'admin-token-file': { type: 'string' },
      'bgp-asn': { type: 'string' },
      'bgp-peer': { type: 'string', multiple: true },
      'bgp-config': { type: 'string' },
      'bgp-socket': { type: 'string' },
      'bgp-export': { type: 'string', multiple: true },
      'fabric-gateway': { type: 'string' },
      'fabric-gateway6': { type: 'string' },
      'vlan-trunk': { type: 'string' },
      physnet: { type: 'string', default: DEFAULT_PHYSNET },
      'ovs-bridge': { type: 'string', default: DEFAULT_OVS_BRIDGE },
      'ovs-db': { type: 'string' },
    },
  });
  const host = checkHostName(values.host);
  const underlayIp = values['underlay-ip'] ?? '';
  if (parseIp(underlayIp).family !== 4) throw invalidInput('--underlay-ip must be an IPv4 address');
  const underlayIp6 = values['underlay-ip6'] === undefined ? undefined : ipv6Of(values['underlay-ip6']);
  if (values['underlay-ip6'] !== undefined && underlayIp6 === undefined)
    throw invalidInput('--underlay-ip6 must be a unicast IPv6 address (not link-local, multicast or ::/8; no zone)');
  const uplink = ifname(values.uplink ?? '');
  const mtu = Number(values.mtu);
  const leaseTtl = Number(values['lease-ttl']);
  if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 9216) throw invalidInput('--mtu must be 1280..9216');
  if (!Number.isInteger(leaseTtl) || leaseTtl < 2 || leaseTtl > 3600)
    throw invalidInput('--lease-ttl must be 2..3600 seconds');
  const graceSeconds = Number(values['dead-host-grace']);
  const sweepSeconds = Number(values['sweep-interval']);
  if (!Number.isFinite(graceSeconds) || graceSeconds < 1 || graceSeconds > 30 * 86_400)
    throw invalidInput('--dead-host-grace must be 1..2592000 seconds');
  if (!Number.isFinite(sweepSeconds) || sweepSeconds < 0.1 || sweepSeconds > 3600)
    throw invalidInput('--sweep-interval must be 0.1..3600 seconds');
  const externalMode = values['external-mode'] as ExternalMode;
  if (!EXTERNAL_MODES.includes(externalMode))
    throw invalidInput(`--external-mode must be one of ${EXTERNAL_MODES.join(', ')}`);
  const bgp = bgpOptions(values);
  if (values['fabric-gateway'] !== undefined && parseIp(values['fabric-gateway']).family !== 4)
    throw invalidInput('--fabric-gateway must be an IPv4 address');
  if (values['fabric-gateway6'] !== undefined && ipv6Of(values['fabric-gateway6']) === undefined)
    throw invalidInput('--fabric-gateway6 must be a unicast IPv6 address (not link-local, multicast or ::/8; no zone)');
  const vlan = vlanOptions(values);
  const etcd = etcdConnection(
    mergeEtcdInput(
      {
        endpoints: values.etcd,
        ca: values['etcd-ca'],
        cert: values['etcd-cert'],
        key: values['etcd-key'],
        user: values['etcd-user'],
        passwordFile: values['etcd-password-file'],
      },
      etcdInputFromEnv(process.env),
    ),
  );

  const logger = createLogger({ level: process.env.LOG_LEVEL ?? 'info' }).child({ host });
  // Revision probes read inside /netd/: a least-privilege etcd user may read nothing else.
  const store = new EtcdStore({ ...etcd, probeKey: '/netd/', logger });
  const metrics = new NetdMetrics();
  // ip/tc/nft through the posix_spawn helper: Node's own spawn forks the whole daemon each time.
  let runner: CommandRunner;
  if (SpawnerRunner.available()) runner = new SpawnerRunner({ logger });
  else {
    logger.warn('netd-spawner not built (npm run build); spawning from Node, which is slower');
    runner = new ExecRunner({ logger });
  }
  // One allocator for the daemon and the API: its pool and block caches are shared.
  const ipam = new Ipam({ store, host, logger });
  const daemon = new NetdDaemon(
    {
      host: { name: host, underlayIp, ...(underlayIp6 !== undefined && { underlayIp6 }), uplink, underlayMtu: mtu },
      leaseTtlSeconds: leaseTtl,
      cniSocketDir: values['cni-socket-dir'],
      deadHostGraceMs: graceSeconds * 1000,
      sweepIntervalMs: sweepSeconds * 1000,
      ...(values['external-pool'] && { externalPool: values['external-pool'], externalMode }),
      ...(bgp && { bgp }),
      ...(values['fabric-gateway'] && { fabricGateway: values['fabric-gateway'] }),
      ...(values['fabric-gateway6'] && { fabricGateway6: ipv6Of(values['fabric-gateway6'])! }),
      ...(vlan && { vlan }),
      infrastructure: await etcdAddresses(etcd.endpoints, logger),
    },
    { store, runner, ipam, logger, metrics },
  );
  const shutdown = (sig: string) => {
    logger.info({ sig }, 'stopping');
    void daemon
      .stop()
      .then(() => store.close())
      .finally(() => process.exit(0));
  };
  process.once('SIGTERM', () => shutdown('SIGTERM'));
  process.once('SIGINT', () => shutdown('SIGINT'));
  await daemon.start();
  const api = await startApi(values, {
    store,
    pools: ipam,
    metrics,
    capabilities: () => daemon.capabilities(),
  });
  process.stdout.write(`netd ${host} ready\n`);
  process.once('exit', () => void api?.close());
}

/** BGP announcements (all four flags, or none). */
function bgpOptions(values: {
  'bgp-asn'?: string;
  'bgp-peer'?: string[];
  'bgp-config'?: string;
  'bgp-socket'?: string;
  'bgp-export'?: string[];
}): BgpOptions | undefined {
  const given = [values['bgp-asn'], values['bgp-peer'], values['bgp-config'], values['bgp-socket']];
  if (given.every((v) => v === undefined)) return undefined;
  if (given.some((v) => v === undefined))
    throw invalidInput('BGP needs --bgp-asn, --bgp-peer (one or more), --bgp-config and --bgp-socket together');
  return {
    asn: checkAsn(Number(values['bgp-asn'])),
    peers: values['bgp-peer']!.map(parseBgpPeer),
    configPath: values['bgp-config']!,
    socketPath: values['bgp-socket']!,
    ...(values['bgp-export'] && { exportCidrs: values['bgp-export'].map((c) => formatCidr(parseCidr(c))) }),
  };
}

/** vlan mode's flags: a trunk (the rest has defaults), or none. */
function vlanOptions(values: {
  'vlan-trunk'?: string;
  physnet?: string;
  'ovs-bridge'?: string;
  'ovs-db'?: string;
}): VlanHostOptions | undefined {
  if (values['vlan-trunk'] === undefined) return undefined;
  const physnet = values.physnet ?? DEFAULT_PHYSNET;
  if (!PHYSNET_RE.test(physnet)) throw invalidInput(`--physnet must match ${PHYSNET_RE}`);
  const bridge = values['ovs-bridge'] ?? DEFAULT_OVS_BRIDGE;
  if (OWNED_LINK_RE.test(bridge) || !/^[A-Za-z0-9_.-]{1,15}$/.test(bridge))
    throw invalidInput('--ovs-bridge must be 1-15 of A-Z a-z 0-9 _ . - and not a name netd gives its own links');
  const trunk = ifname(values['vlan-trunk']);
  if (OWNED_LINK_RE.test(trunk)) throw invalidInput('--vlan-trunk must not be a name netd gives its own links');
  return {
    trunk,
    physnet,
    bridge,
    ...(values['ovs-db'] && { dbSocket: values['ovs-db'] }),
  };
}

/** The HTTP API, when asked for: on a Unix socket (root-only) and/or a TCP address. */
async function startApi(
  values: { 'api-socket'?: string; 'api-listen'?: string; 'admin-token-file'?: string },
  deps: {
    store: EtcdStore;
    pools: Ipam;
    metrics: NetdMetrics;
    capabilities: () => HostCapabilities;
  },
) {
  if (!values['api-socket'] && !values['api-listen']) return undefined;
  const adminToken = (
    values['admin-token-file'] ? readFileSync(values['admin-token-file'], 'utf8') : (process.env.NETD_ADMIN_TOKEN ?? '')
  ).trim();
  if (adminToken.length < 16)
    throw invalidInput(
      'the API needs an admin token of at least 16 characters (--admin-token-file or $NETD_ADMIN_TOKEN)',
    );
  const app = buildNetdApi({ ...deps, adminToken });
  if (values['api-socket']) {
    rmSync(values['api-socket'], { force: true });
    await app.listen({ path: values['api-socket'] });
    chmodSync(values['api-socket'], 0o600);
  }
  if (values['api-listen']) {
    const [hostPart, portPart] = values['api-listen'].split(/:(?=\d+$)/);
    // A second listener: fastify listens once, so TCP gets its own server on the same routes.
    const tcp = buildNetdApi({ ...deps, adminToken });
    await tcp.listen({ host: hostPart, port: Number(portPart) });
  }
  return app;
}

main().catch((err: unknown) => {
  process.stderr.write(`netd: ${describeError(err)}\n`);
  process.exit(1);
});

/** The IPv4 addresses of the etcd members (names resolved once at start): no eth0 may reach them. */
async function etcdAddresses(endpoints: readonly string[], logger: Logger): Promise<string[]> {
  const out: string[] = [];
  for (const e of endpoints) {
    if (!/^https?:\/\//.test(e)) continue;
    const host = new URL(e).hostname.replace(/^\[|\]$/g, '');
    if (isIPv4(host)) out.push(host);
    else if (!isIP(host)) {
      try {
        for (const a of await lookup(host, { all: true, family: 4 })) out.push(a.address);
      } catch (err) {
        logger.warn({ err: String(err), host }, 'etcd member name did not resolve: not in the infrastructure set');
      }
    }
  }
  return out;
}
