import type { Test } from 'tap';
import { withCluster } from '../../test-netns/harness.js';
import { eventually, requireRoot } from '../../test-netns/testing.js';
import { IpClient } from '../../sys/ip.js';
import { EtcdStore } from '../../store/etcd.js';
import { modelKeys } from '../../tenancy/keys.js';
import { NetdApiClient } from '../../tenancy/api/client.js';
import type { ModeName } from '../../tenancy/records.js';
import { invokePlugin, netdOvsPorts, noNetdRouting, putVpcs, vlanOf } from './netd-hosts.js';

export const CYCLES = 2000;
const IN_FLIGHT = 8;

/** The churn test, run for each network mode (one file per mode, so tap runs them side by side). */
export async function churn(t: Test, mode: ModeName): Promise<void> {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, with: ['netd'], vlan: mode === 'vlan' }, async (s) => {
    const d = s.cluster.description;
    const cni = d.cni!;
    const store = new EtcdStore(d.etcd.client);
    t.teardown(() => store.close());
    await putVpcs(store, [{ name: 'a', tenant: 't1', mode, cidr: '10.51.0.0/16', vni: 51, ...vlanOf(mode, 51) }]);
    const h1 = s.cluster.host('h1');
    const ip = new IpClient(s.runner);
    // One namespace per worker, reused: each cycle attaches and detaches eth1 in it.
    const slots = Array.from({ length: IN_FLIGHT }, (_, i) => `tn-${d.prefix}-w${i}`);
    await ip.addNetns(slots);
    t.teardown(() => ip.deleteNetns(slots));
    const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'vpc-a', type: 'netd', vpc: 'a' });
    // An answer that is not ok throws, so a failed ADD is not followed by its DEL.
    const call = async (command: string, id: string, netns: string) => {
      const a = await invokePlugin(s, cni.binDir, 'h1', command, conf, {
        CNI_CONTAINERID: id,
        CNI_NETNS: `/run/netns/${netns}`,
        CNI_IFNAME: 'eth1',
      });
      if (!a.ok) throw new Error(`${command} ${id}: ${JSON.stringify(a.out)}`);
    };
    let next = 0;
    let failures = 0;
    const reasons: string[] = [];
    const started = Date.now();
    await Promise.all(
      slots.map(async (slot) => {
        for (;;) {
          const i = next++;
          if (i >= CYCLES) return;
          try {
            await call('ADD', `churn${i}`, slot);
            await call('DEL', `churn${i}`, slot);
          } catch (err) {
            failures++;
            if (reasons.length < 5) reasons.push(err instanceof Error ? err.message : String(err));
          }
        }
      }),
    );
    const seconds = (Date.now() - started) / 1000;
    t.comment(
      `${CYCLES} cycles in ${seconds.toFixed(1)} s (${((CYCLES * 2) / seconds).toFixed(0)} CNI calls/s, ${IN_FLIGHT} in flight)`,
    );
    t.equal(
      failures,
      0,
      `every ADD and DEL succeeded${reasons.length ? `; first failures: ${reasons.join(' || ')}` : ''}`,
    );
    // The daemon counted every call it served (its /metrics, on its API socket).
    const metrics = await new NetdApiClient(h1.daemons.netdApi!).text('/metrics');
    const served = (verb: string) =>
      Number(
        new RegExp(`netd_cni_request_duration_seconds_count\\{verb="${verb}",result="ok"\\} (\\d+)`).exec(
          metrics,
        )?.[1] ?? 0,
      );
    t.ok(
      served('ADD') >= CYCLES && served('DEL') >= CYCLES,
      `/metrics counted ${served('ADD')} ADDs and ${served('DEL')} DELs`,
    );
    // (The view follows etcd: the last DEL's watch event may still be on its way.)
    const api = new NetdApiClient(h1.daemons.netdApi!);
    t.ok(
      await eventually(async () => /netd_endpoints\{kind="vpc"\} 0\n/.test(await api.text('/metrics')), 5_000),
      '/metrics: no endpoint left on the host',
    );
    t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record');
    t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address handle');
    t.same((await store.list('/netd/v1/ipam/blocks/a/')).kvs, [], 'no block left claimed');
    const links = async () =>
      (await new IpClient(s.runner, { name: h1.netns }).links()).map((l) => l.ifname).filter((n) => /^n[ieqo]/.test(n));
    // (A vlan DEL leaves its port's shaper pair to the reconciler, which removes it moments later.)
    await eventually(async () => (await links()).length === 0, 5_000);
    t.same(await links(), [], 'no container port, ifb or shaper left on the host');
    t.ok(await eventually(() => noNetdRouting(s.runner, h1.netns), 5_000), 'no route or rule of netd left on the host');
    if (mode === 'vlan')
      t.same([...(await netdOvsPorts(s, 'h1')).keys()], [], 'no port of netd left on the OVS bridge');
    for (const slot of slots) {
      const inside = (await new IpClient(s.runner, { name: slot }).links()).map((l) => l.ifname);
      t.same(inside, ['lo'], `${slot}: only lo`);
    }
    await store.deletePrefix(modelKeys.vpcs());
    await store.deletePrefix('/netd/v1/ipam/pools/a');
  });
}
