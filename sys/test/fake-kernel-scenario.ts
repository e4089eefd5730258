import { BridgeBatch, BridgeClient } from '../bridge.js';
import { IpBatch, IpBatchLane, IpClient } from '../ip.js';
import { NftClient, NftTransaction } from '../nft.js';
import { isCommandError, type CommandRunner, type NetnsTarget } from '../runner.js';
import { SysctlClient } from '../sysctl.js';
import { TcBatch, TcClient } from '../tc.js';

/**
 * The sequence of sys/ calls netd makes for one host (same wrappers, same batches, same order as
 * netd/dataplane.ts, attach.ts, external.ts and qos.ts at the time of writing), run by the
 * conformance test against the real kernel and the fake, and by the fake's unit test. `host` is the
 * host's namespace; `container` a container's, given by path as CNI gives it.
 */

export interface Scene {
  runner: CommandRunner;
  host: NetnsTarget;
  container: NetnsTarget;
}

const UPLINK = 'up0';
const UNDERLAY_IP = '192.0.2.11';
const BRIDGE = 'nb2a';
const VXLAN = 'nx2a';
const ZERO_MAC = '00:00:00:00:00:00';
const REMOTES = [
  { host: '192.0.2.12', ip: '10.20.0.7', mac: '02:2a:0a:14:00:07' },
  { host: '192.0.2.13', ip: '10.20.0.8', mac: '02:2a:0a:14:00:08' },
];
const PROXY_GATEWAY = '169.254.1.1';
const EXTERNAL_IP = '203.0.113.5';

/** netd/qos.ts tbfFor(): 10 ms of traffic (at least 32 KiB), 50 ms of queue, IP-layer rates. */
const tbf = (rateBps: number) => ({
  rateBps,
  burstBytes: Math.max(32 * 1024, Math.ceil(rateBps / 8 / 100)),
  latencyMs: 50,
  overheadBytes: -14,
});

export function clients(s: Scene) {
  return {
    ip: new IpClient(s.runner, s.host),
    inside: new IpClient(s.runner, s.container),
    bridge: new BridgeClient(s.runner, s.host),
    tc: new TcClient(s.runner, s.host),
    lane: new IpBatchLane(s.runner, s.host),
  };
}

export interface Phase {
  name: string;
  run(s: Scene): Promise<void>;
}

export const phases: Phase[] = [
  {
    // Test infrastructure, not netd: the host's uplink with its underlay address.
    name: 'uplink',
    run: async (s) => {
      await clients(s).ip.apply(
        new IpBatch()
          .linkAddVeth(UPLINK, 'up1')
          .addrAdd(`${UNDERLAY_IP}/24`, UPLINK)
          .linkSet(UPLINK, { up: true })
          .linkSet('up1', { up: true }),
      );
    },
  },
  {
    // dataplane.reconcile(): the VPC's bridge and VXLAN device, FDB, neighbours (ARP suppression).
    name: 'vpc',
    run: async (s) => {
      const { ip, bridge } = clients(s);
      await ip.apply(
        new IpBatch()
          .linkAddBridge(BRIDGE, { mtu: 1450, mcastSnooping: false })
          .linkSet(BRIDGE, { up: true })
          .linkAddVxlan({
            name: VXLAN,
            vni: 42,
            local: UNDERLAY_IP,
            dev: UPLINK,
            gbp: true,
            learning: false,
            proxy: true,
            mtu: 1450,
          })
          .linkSet(VXLAN, { master: BRIDGE, up: true }),
      );
      const fdb = new BridgeBatch();
      for (const r of REMOTES) {
        fdb.fdbAppend(ZERO_MAC, VXLAN, { dst: r.host }).fdbAppend(r.mac, VXLAN, { dst: r.host });
      }
      await bridge.apply(fdb);
      const neighbours = new IpBatch();
      for (const r of REMOTES) neighbours.neighReplace(r.ip, r.mac, VXLAN);
      await ip.applyForgivingMissing(neighbours);
    },
  },
  {
    // attach.ts wireVeth() for eth1: the pair created with its container end in the container's
    // netns (provisional MAC) and the host end on the bridge; then the container side.
    name: 'eth1',
    run: async (s) => {
      const { lane, inside } = clients(s);
      await lane.submit(
        new IpBatch()
          .linkAddVeth('ni1', 'eth1', {
            mtu: 1450,
            peerNetns: 'name' in s.container ? s.container.name : s.container.path,
            peerAddress: '02:7f:00:00:00:01',
            master: BRIDGE,
          })
          .linkSet('ni1', { addrGenMode: 'none' })
          .linkSet('ni1', { up: true }),
      );
      await inside.apply(
        new IpBatch()
          .linkSet('eth1', { addrGenMode: 'none' })
          .linkSet('eth1', { address: '02:2a:0a:14:00:05' })
          .linkSet('eth1', { up: true })
          .addrAdd('10.20.0.5/24', 'eth1'),
      );
    },
  },
  {
    // external.ts attachExternal() in routed mode with QoS both ways.
    name: 'eth0',
    run: async (s) => {
      const { ip, inside, tc } = clients(s);
      await ip.apply(
        new IpBatch()
          .linkAddVeth('ne1', 'eth0', {
            mtu: 1500,
            peerNetns: 'name' in s.container ? s.container.name : s.container.path,
            peerAddress: '02:7f:00:00:00:02',
          })
          .linkSet('ne1', { addrGenMode: 'none' })
          .linkSet('ne1', { up: true })
          .linkAddIfb('nqe1')
          .linkSet('nqe1', { up: true })
          .add('neigh', 'replace', 'proxy', PROXY_GATEWAY, 'dev', 'ne1'),
      );
      await Promise.all([
        inside.apply(
          new IpBatch()
            .linkSet('eth0', { addrGenMode: 'none' })
            .linkSet('eth0', { up: true })
            .addrAdd(`${EXTERNAL_IP}/32`, 'eth0')
            .routeReplace(`${PROXY_GATEWAY}/32`, { dev: 'eth0', scope: 'link' })
            .routeReplace('default', { via: PROXY_GATEWAY, dev: 'eth0', onlink: true }),
        ),
        ip.apply(
          new IpBatch()
            .routeReplace(`${EXTERNAL_IP}/32`, { dev: 'ne1', scope: 'link' })
            .proxyNeighReplace(EXTERNAL_IP, UPLINK),
        ),
        tc.apply(
          new TcBatch()
            .rootTbf('ne1', tbf(10_000_000))
            .ingress('ne1')
            .redirectIngressTo('ne1', 'nqe1')
            .rootTbf('nqe1', tbf(5_000_000)),
        ),
      ]);
      await new SysctlClient(s.runner, s.host).set('net.ipv4.neigh.ne1.proxy_delay', 0);
      await new NftClient(s.runner, s.host).apply(new NftTransaction().deleteTable('ip', 'netd_nat'));
    },
  },
  {
    // daemon.applyQos(): a changed limit is a replace on the running qdisc. Then DEL of eth1
    // (attach.ts removePort: the port and its ifb, which it never had, in one forgiving batch).
    name: 'qos change, eth1 removed',
    run: async (s) => {
      const { ip, tc } = clients(s);
      await tc.apply(new TcBatch().rootTbf('ne1', tbf(20_000_000)).rootTbf('nqe1', tbf(100_000_000_000)));
      await ip.applyForgivingMissing(new IpBatch().linkDel('ni1').linkDel('nqi1'));
    },
  },
  {
    // The container is gone: its namespace (and with it both veth pairs' ends) goes.
    name: 'container netns deleted',
    run: async (s) => {
      const name = 'name' in s.container ? s.container.name : s.container.path.split('/').pop()!;
      await s.runner.run({ argv: ['ip', 'netns', 'del', name] });
    },
  },
  {
    // DEL of eth0 after the fact, then the reconciler empties the VPC: neighbours (one already
    // gone: `ip neigh` stops the batch there), FDB, and the devices.
    name: 'eth0 DEL, VPC removed',
    run: async (s) => {
      const { ip, bridge } = clients(s);
      await ip.applyForgivingMissing(new IpBatch().linkDel('ne1').linkDel('nqe1').proxyNeighDel(EXTERNAL_IP, UPLINK));
      await ip.applyForgivingMissing(new IpBatch().neighDel('10.20.0.99', VXLAN).neighDel(REMOTES[0]!.ip, VXLAN));
      await bridge.apply(new BridgeBatch().fdbDel(REMOTES[0]!.mac, VXLAN, { dst: REMOTES[0]!.host }));
      await bridge.apply(new BridgeBatch().fdbDel(ZERO_MAC, VXLAN, { dst: REMOTES[0]!.host }));
      await ip.apply(new IpBatch().linkDel(VXLAN), { force: true }).catch((err: unknown) => {
        if (!isCommandError(err, 'not-found')) throw err;
      });
    },
  },
];

/**
 * Everything the sys/ read calls return for both namespaces: what netd's reconciler, recovery and
 * CNI CHECK read, plus qdiscs of every link.
 */
export async function readState(s: Scene, opts: { containerGone?: boolean } = {}): Promise<Record<string, unknown>> {
  const { ip, inside, bridge, tc } = clients(s);
  const out: Record<string, unknown> = {};
  const links = await ip.links();
  out['host links'] = links;
  out['host vxlan links'] = await ip.links({ type: 'vxlan' });
  out['host addresses'] = await ip.addresses();
  out['host routes'] = await ip.routes({ family: 4 });
  out['host neighbours'] = await ip.neighbours();
  for (const l of links) {
    out[`host proxies on ${l.ifname}`] = await ip.proxyNeighbours(l.ifname);
    out[`host qdiscs on ${l.ifname}`] = await tc.qdiscs(l.ifname);
    if (l.linkinfo?.info_kind === 'vxlan') {
      out[`host fdb of ${l.ifname}`] = await bridge.fdb({ dev: l.ifname });
      out[`host neighbours on ${l.ifname}`] = await ip.neighbours(l.ifname);
    }
    if (l.linkinfo?.info_kind === 'bridge') out[`host fdb of bridge ${l.ifname}`] = await bridge.fdb({ br: l.ifname });
  }
  out['host fdb'] = await bridge.fdb();
  if (links.some((l) => l.ifname === 'ne1')) out['host filters on ne1'] = await tc.filters('ne1', 'ffff:');
  out['host link nx2a'] = (await ip.link(VXLAN)) ?? null;
  out['host link nosuch'] = (await ip.link('nosuch')) ?? null;
  if (!opts.containerGone) {
    out['container links'] = await inside.links();
    out['container addresses'] = await inside.addresses();
    out['container eth1 addresses'] = await inside.addresses('eth1').catch((e: unknown) => describe(e));
    out['container routes'] = await inside.routes({ family: 4 });
    out['container neighbours'] = await inside.neighbours();
  }
  return out;
}

/** Commands that fail, each in its own way; what matters is stderr, exit code and kind. */
export const failures: Array<{ name: string; run(s: Scene): Promise<unknown> }> = [
  {
    name: 'a batch stops at its first failing line',
    run: (s) => clients(s).ip.apply(new IpBatch().linkAddBridge('zb1').linkAddBridge(BRIDGE).linkAddBridge('zb2')),
  },
  {
    name: '-force goes on past failing lines',
    run: (s) =>
      clients(s).ip.apply(new IpBatch().linkDel('nosuch1').linkAddBridge('zb3').linkDel('nosuch2').linkDel('zb3'), {
        force: true,
      }),
  },
  {
    name: 'a missing master ends ip at once, even with -force',
    run: (s) =>
      clients(s).ip.apply(new IpBatch().linkDel('nosuch').linkSet('up1', { master: 'nosuch' }).linkDel('nosuch'), {
        force: true,
      }),
  },
  {
    name: 'a missing neighbour ends ip at once',
    run: (s) => clients(s).ip.apply(new IpBatch().neighDel('10.9.9.9', UPLINK).linkDel('nosuch'), { force: true }),
  },
  { name: 'duplicate address', run: (s) => clients(s).ip.apply(new IpBatch().addrAdd(`${UNDERLAY_IP}/24`, UPLINK)) },
  { name: 'address not there', run: (s) => clients(s).ip.apply(new IpBatch().addrDel('192.0.2.99/24', UPLINK)) },
  {
    name: 'gateway not on a connected route',
    run: (s) => clients(s).ip.apply(new IpBatch().routeReplace('198.51.100.0/24', { via: '10.9.9.9', dev: UPLINK })),
  },
  { name: 'route not there', run: (s) => clients(s).ip.apply(new IpBatch().routeDel('198.51.100.0/24')) },
  { name: 'link group with no members', run: (s) => clients(s).ip.apply(new IpBatch().linkDelGroup(77)) },
  {
    name: 'VNI already in use',
    run: (s) =>
      clients(s).ip.apply(
        new IpBatch().linkAddVxlan({
          name: 'zx1',
          vni: 42,
          local: UNDERLAY_IP,
          dev: UPLINK,
          gbp: true,
          learning: false,
        }),
      ),
  },
  { name: 'tc: no ingress to delete', run: (s) => clients(s).tc.apply(new TcBatch().deleteIngress(UPLINK)) },
  { name: 'tc: default root qdisc', run: (s) => clients(s).tc.apply(new TcBatch().deleteRoot(UPLINK)) },
  { name: 'tc: missing device', run: (s) => clients(s).tc.apply(new TcBatch().deleteRoot('nosuch')) },
  {
    name: 'tc: filter without ingress',
    run: (s) => clients(s).tc.apply(new TcBatch().redirectIngressTo(UPLINK, 'up1')),
  },
  {
    name: 'bridge: fdb entry not there',
    run: (s) => clients(s).bridge.apply(new BridgeBatch().fdbDel('02:00:00:00:00:99', VXLAN, { dst: '192.0.2.12' })),
  },
  {
    name: 'bridge: flood entries cannot be replaced',
    run: (s) => clients(s).bridge.apply(new BridgeBatch().fdbReplace(ZERO_MAC, VXLAN, { dst: '192.0.2.19' })),
  },
  {
    name: 'nft: no such table',
    run: (s) => new NftClient(s.runner, s.host).apply(new NftTransaction().flushTable('ip', 'nosuch')),
  },
  {
    name: 'sysctl: no such device',
    run: (s) => new SysctlClient(s.runner, s.host).set('net.ipv4.neigh.nosuch.proxy_delay', 0),
  },
];

export function describe(err: unknown): { exitCode: unknown; stderr: unknown; kind: unknown } | string {
  if (!isCommandError(err)) return String(err);
  return { exitCode: err.exitCode, stderr: err.stderr, kind: err.kind };
}
