import t from 'tap';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { withCluster, type ClusterSession } from '../../../test-netns/harness.js';
import type { TestContainer } from '../../../test-netns/containers.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { eventually } from '../netd-hosts.js';
import { startDaemon, stopDaemon, killDaemon, type DaemonHandle } from '../../../sys/process.js';
import { IpClient } from '../../../sys/ip.js';
import { BridgeClient } from '../../../sys/bridge.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../../ipam/allocator.js';
import { attachInternal, detachInternal, type DirectDeps as AttachDeps } from '../direct-attach.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import type { HostRecord, VpcRecord } from '../../../tenancy/records.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'main.js');
const LEASE_TTL = 2;

function runNetd(s: ClusterSession, host: string, dir: string): { handle: DaemonHandle; log: string } {
  const h = s.cluster.host(host);
  const log = join(dir, `netd-${host}-${Date.now()}.log`);
  const handle = startDaemon({
    argv: [
      process.execPath,
      MAIN,
      '--host',
      h.name,
      '--underlay-ip',
      h.underlayIp,
      '--uplink',
      h.uplink,
      '--etcd',
      s.cluster.description.etcd.underlayEndpoints.join(','),
      '--lease-ttl',
      String(LEASE_TTL),
    ],
    netns: { name: h.netns },
    logFile: log,
    env: { LOG_LEVEL: 'warn' },
  });
  return { handle, log };
}

async function ready(run: { log: string }): Promise<boolean> {
  return eventually(async () => readFileSync(run.log, 'utf8').includes('ready'), 15_000);
}

t.test(
  'netd daemons converge the vxlan data path from etcd; a dead host is dropped, a restarted one comes back',
  async (t) => {
    if (!requireRoot(t)) return;
    const dir = mkdtempSync(join(tmpdir(), 'netd-daemon-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const store = new EtcdStore({ endpoints: d.etcd.endpoints });
      t.teardown(() => store.close());
      const ipam = new Ipam({ store, host: 'admin' });
      const vpcs: VpcRecord[] = [
        { name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 300 },
        { name: 'b', tenant: 't2', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 301 },
      ];
      for (const v of vpcs) {
        await store.put(modelKeys.vpc(v.name), JSON.stringify(v));
        await ipam.createPool({ name: v.name, cidr: v.cidr, kind: 'vpc' });
      }
      // The CNI side of ADD, done before the daemons run (outside a daemon nothing claims a port
      // while it is wired, so a running reconcile could take it for an orphan): one container per
      // VPC per host. Starting, the daemons find records and ports and converge the rest from etcd.
      const depsFor = (host: string): AttachDeps => {
        const h = s.cluster.host(host);
        const record: HostRecord = {
          name: h.name,
          underlayIp: h.underlayIp,
          uplink: h.uplink,
          underlayMtu: d.underlay.mtu,
        };
        return { store, ipam: new Ipam({ store, host }), runner: s.runner, host: record, hostNetns: { name: h.netns } };
      };
      const containers: Array<{
        name: string;
        host: string;
        vpc: string;
        netns: string;
        ip: string;
        container: TestContainer;
      }> = [];
      for (const [name, host, vpc] of [
        ['a1', 'h1', 'a'],
        ['b1', 'h1', 'b'],
        ['a2', 'h2', 'a'],
        ['b2', 'h2', 'b'],
      ] as const) {
        const c = await s.containers.add({ host, name });
        const att = await attachInternal(
          { containerId: name, ifname: 'eth1', netnsPath: c.netnsPath, vpc },
          depsFor(host),
        );
        containers.push({ name, host, vpc, netns: c.netns, ip: att.allocation.ip, container: c });
      }
      const by = (n: string) => containers.find((c) => c.name === n)!;
      const daemons = new Map([
        ['h1', runNetd(s, 'h1', dir)],
        ['h2', runNetd(s, 'h2', dir)],
      ]);
      t.teardown(async () => {
        for (const r of daemons.values()) await stopDaemon(r.handle);
      });
      for (const [h, r] of daemons) t.ok(await ready(r), `netd on ${h} is ready`);
      t.ok(
        await eventually(() => s.probe.ping(by('a1').netns, by('a2').ip, 500), 15_000),
        'a1 reaches a2 across hosts once the daemons converged',
      );
      t.ok(await eventually(() => s.probe.ping(by('b1').netns, by('b2').ip, 500), 15_000), 'b1 reaches b2 (icmp)');
      // ARP suppression: h1's VXLAN device answers for a2 itself; no ARP request crosses the underlay.
      {
        const h1 = new IpClient(s.runner, { name: s.cluster.host('h1').netns });
        const nx = linkNames.vxlan(300);
        t.equal((await h1.link(nx))?.linkinfo?.info_data?.proxy, true, `${nx} has proxy (ARP suppression) on`);
        const a2 = containers.find((c) => c.name === 'a2')!;
        const a2Mac = (await new IpClient(s.runner, { name: a2.netns }).link('eth1'))?.address;
        t.ok(
          (await h1.neighbours(nx)).some(
            (n) => n.dst === a2.ip && n.lladdr === a2Mac && (n.state ?? []).includes('PERMANENT'),
          ),
          `h1 holds a2's ${a2.ip} → ${a2Mac} on ${nx}`,
        );
      }
      t.ok(
        await s.probe.delivered({
          from: by('b1').netns,
          to: by('b2').netns,
          address: by('b2').ip,
          protocol: 'tcp',
          port: 7000,
        }),
        'b1 reaches b2 (tcp)',
      );
      const server = await s.probe.serve(by('a2').netns, 'tcp', by('a2').ip, 7100);
      try {
        const sameAddrInB = containers.find((c) => c.vpc === 'b' && c.ip === by('a2').ip);
        if (sameAddrInB) t.comment(`${sameAddrInB.name} in VPC b has a2's address too`);
        t.notOk(
          await s.probe.connect(by('b1').netns, 'tcp', by('a2').ip, 7100, 800),
          "VPC b cannot reach VPC a's server",
        );
      } finally {
        await server.stop();
      }

      // h2's netd is SIGKILLed: its lease expires and h1 drops every FDB entry towards h2.
      const h1Fdb = () =>
        new BridgeClient(s.runner, { name: s.cluster.host('h1').netns }).fdb({ dev: linkNames.vxlan(300) });
      const towardsH2 = async () => (await h1Fdb()).some((e) => e.dst === s.cluster.host('h2').underlayIp);
      t.ok(await towardsH2(), 'h1 has FDB entries towards h2');
      killDaemon(daemons.get('h2')!.handle, 'SIGKILL');
      await daemons.get('h2')!.handle.exited;
      t.ok(await eventually(async () => !(await towardsH2()), 15_000), 'after the lease expired, h1 dropped h2');
      daemons.set('h2', runNetd(s, 'h2', dir));
      t.ok(await ready(daemons.get('h2')!), 'h2 restarted');
      t.ok(await eventually(() => s.probe.ping(by('a1').netns, by('a2').ip, 500), 15_000), 'a1 reaches a2 again');

      // A graceful restart of h1's netd does not disturb h2: its registration outlives the restart.
      const h2Fdb = () =>
        new BridgeClient(s.runner, { name: s.cluster.host('h2').netns }).fdb({ dev: linkNames.vxlan(300) });
      await stopDaemon(daemons.get('h1')!.handle);
      daemons.set('h1', runNetd(s, 'h1', dir));
      let dropped = false;
      for (let i = 0; i < 10; i++) {
        if (!(await h2Fdb()).some((e) => e.dst === s.cluster.host('h1').underlayIp)) dropped = true;
        await sleep(100);
      }
      t.ok(await ready(daemons.get('h1')!), 'h1 restarted');
      t.notOk(dropped, 'h2 never dropped h1 during the graceful restart');
      await sleep(LEASE_TTL * 1000 + 1000);
      t.ok(
        (await h2Fdb()).some((e) => e.dst === s.cluster.host('h1').underlayIp),
        'and still has it after the old lease expired',
      );

      // DEL everything: records, addresses and netd's links go.
      for (const c of containers)
        await detachInternal({ containerId: c.name, ifname: 'eth1', vpc: c.vpc }, depsFor(c.host));
      for (const h of ['h1', 'h2']) {
        const ip = new IpClient(s.runner, { name: s.cluster.host(h).netns });
        t.ok(
          await eventually(
            async () => (await ip.links()).filter((l) => /^n[bxie]/.test(l.ifname)).length === 0,
            10_000,
          ),
          `${h}: netd's links are gone`,
        );
      }
      t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record left');
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
      for (const r of daemons.values()) await stopDaemon(r.handle);
      await store.deletePrefix('/netd/v1/');
      for (const c of containers) await s.containers.remove(c.container);
      t.same(await s.residue(), []);
    });
  },
);
