import type { Test } from 'tap';
import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { withCluster } from '../../test-netns/harness.js';
import { eventually, requireRoot } from '../../test-netns/testing.js';
import { readState } from '../../test-netns/cluster.js';
import { killDaemon, isRunning } from '../../sys/process.js';
import { IpClient } from '../../sys/ip.js';
import { EtcdStore } from '../../store/etcd.js';
import { Ipam } from '../../ipam/allocator.js';
import { modelKeys } from '../../tenancy/keys.js';
import { linkNames } from '../names.js';
import type { EndpointRecord } from '../../tenancy/records.js';
import type { ModeName } from '../../tenancy/records.js';
import { ROUTED_PROTO } from '../modes/routed.js';
import { netdOvsPorts, noNetdRouting, putVpcs, startNetd, vlanOf, waitReady } from './netd-hosts.js';

export const ADDS = 200;
const IN_FLIGHT = 16;

/**
 * SIGKILL netd during a burst of ADDs, for each network mode (one file per mode, so tap runs them
 * side by side): after restart every container is fully wired or fully absent, no address leaked.
 */
export async function crashDuringAdds(t: Test, mode: ModeName): Promise<void> {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, with: ['netd'], vlan: mode === 'vlan' }, async (s) => {
    const d = s.cluster.description;
    const cni = d.cni!;
    const store = new EtcdStore(d.etcd.client);
    t.teardown(() => store.close());
    await putVpcs(store, [{ name: 'a', tenant: 't1', mode, cidr: '10.50.0.0/16', vni: 50, ...vlanOf(mode, 50) }]);
    const h1 = s.cluster.host('h1');
    const ip = new IpClient(s.runner);
    const names = Array.from({ length: ADDS }, (_, i) => `tn-${d.prefix}-k${i}`);
    await ip.addNetns(names);
    t.teardown(() => ip.deleteNetns(names));
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'vpc-a', type: 'netd', vpc: 'a' });
    const call = (command: string, i: number) =>
      s.runner
        .run({
          argv: [join(cni.binDir, 'netd')],
          stdin: conf,
          netns: { name: h1.netns },
          env: {
            CNI_COMMAND: command,
            CNI_CONTAINERID: `k${i}`,
            CNI_NETNS: `/run/netns/${names[i]}`,
            CNI_IFNAME: 'eth1',
            CNI_PATH: cni.binDir,
          },
          timeoutMs: 60_000,
        })
        .then(
          () => true,
          () => false,
        );

    // The burst, with netd SIGKILLed in the middle of it.
    const daemon = readState(d.prefix)!.daemons!.find((x) => x.host === 'h1' && x.component === 'netd')!;
    let next = 0;
    let succeeded = 0;
    const answered = new Set<string>();
    const burst = Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        for (;;) {
          const i = next++;
          if (i >= ADDS) return;
          if (await call('ADD', i)) {
            succeeded++;
            answered.add(`h1:k${i}:eth1`);
          }
        }
      }),
    );
    await eventually(async () => succeeded >= 40, 30_000, 20);
    killDaemon(daemon, 'SIGKILL');
    await burst;
    t.ok(succeeded >= 40 && succeeded < ADDS, `the kill interrupted the burst (${succeeded} of ${ADDS} ADDs answered)`);
    t.notOk(isRunning(daemon), 'netd is dead');

    // Restart netd on h1 (the same arguments as test-netns uses) and let it settle.
    const dir = join(d.stateDir, 'logs');
    const restarted = startNetd(s, 'h1', {
      dir,
      socketDir: cni.socketDir,
      leaseTtl: 5,
      externalPool: cni.externalPool,
    });
    t.teardown(() => killDaemon(restarted.handle, 'SIGTERM'));
    t.ok(await waitReady(restarted), 'netd restarted');

    const records = (await store.list(modelKeys.endpoints())).kvs.map((kv) => JSON.parse(kv.value) as EndpointRecord);
    const handles = (await new Ipam({ store, host: 'h1' }).handles({ host: 'h1' })).map((h) => h.record.handle);
    t.same(
      handles.sort(),
      records.map((r) => r.id).sort(),
      'every address has an endpoint record, and every record an address',
    );
    const hostLinks = new Set((await new IpClient(s.runner, { name: h1.netns }).links()).map((l) => l.ifname));
    let wired = 0;
    let absent = 0;
    const broken: string[] = [];
    for (let i = 0; i < ADDS; i++) {
      const id = `h1:k${i}:eth1`;
      const record = records.find((r) => r.id === id);
      const inside = (await new IpClient(s.runner, { name: names[i]! }).links()).filter((l) => l.ifname !== 'lo');
      const port = hostLinks.has(linkNames.internalPort(id));
      if (record) {
        const addrs = await new IpClient(s.runner, { name: names[i]! }).addresses('eth1').catch(() => []);
        if (port && addrs.some((a) => a.addr_info.some((x) => x.local === record.ip))) wired++;
        else broken.push(`${id}: record without complete wiring`);
      } else if (!port && inside.length === 0) absent++;
      else broken.push(`${id}: no record but ${port ? 'a host port' : ''} ${inside.map((l) => l.ifname).join(',')}`);
    }
    t.same(broken, [], 'nothing half-wired');
    t.equal(wired + absent, ADDS);
    t.comment(`after restart: ${wired} fully wired, ${absent} fully absent`);
    if (mode === 'routed') {
      // The host routes each wired container's /32 to its port (an ADD cut short put none, or
      // one the reconciler removes with its port).
      const hostIp = new IpClient(s.runner, { name: h1.netns });
      const routedTo = async () =>
        new Set((await hostIp.routesByProto(ROUTED_PROTO)).filter((r) => r.dev?.startsWith('ni')).map((r) => r.dst));
      t.ok(
        await eventually(async () => {
          const have = await routedTo();
          return have.size === records.length && records.every((r) => have.has(r.ip));
        }, 15_000),
        `a /32 route to each of the ${records.length} wired containers, and no other`,
      );
    }
    if (mode === 'vlan') {
      // Each wired container's port is on the OVS bridge with its VLAN (an ADD cut short before
      // plugging is plugged by the reconciler), and no other port of netd is.
      const want = new Map(records.map((r) => [r.hostIf, 50]));
      t.ok(
        await eventually(
          async () => JSON.stringify([...(await netdOvsPorts(s, 'h1'))].sort()) === JSON.stringify([...want].sort()),
          15_000,
        ),
        `each of the ${records.length} wired containers' ports is on the OVS bridge as an access port of VLAN 50, and no other`,
      );
    }
    const lost = [...answered].filter((id) => !records.some((r) => r.id === id));
    if (lost.length)
      t.comment(
        readFileSync(restarted.log, 'utf8')
          .split('\n')
          .filter((l) => l.includes('settled'))
          .join('\n'),
      );
    t.same(lost, [], 'every ADD that was answered is still wired');

    // DEL everything (the runtime's cleanup), then nothing is left.
    for (let i = 0; i < ADDS; i++) await call('DEL', i);
    t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record');
    t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address');
    // The daemon has followed the DELs (its ports, ifbs and the VPC's devices gone) before the
    // VPC record goes.
    t.ok(
      await eventually(
        async () =>
          (await new IpClient(s.runner, { name: h1.netns }).links()).every((l) => !/^n[bxieqo]/.test(l.ifname)),
        15_000,
      ),
      'h1: no netd link left',
    );
    t.ok(await eventually(() => noNetdRouting(s.runner, h1.netns), 15_000), 'h1: no route or rule of netd left');
    await store.deletePrefix(modelKeys.vpcs());
  });
}
