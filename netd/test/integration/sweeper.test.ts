import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { IpClient } from '../../../sys/ip.js';
import { BridgeClient } from '../../../sys/bridge.js';
import { killDaemon } from '../../../sys/process.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { netdTestbed } from '../netd-hosts.js';

/**
 * A host dies for good: the others drop its FDB entries as soon as its lease expires, and only
 * after the grace period does the sweeper remove its endpoint records and addresses. When the
 * host comes back after that, it removes the ports nobody records any more.
 */

const GRACE_SECONDS = 4;

t.test(
  'dead host: FDB dropped at once; records and addresses swept after the grace; a late return cleans its ports',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      // Asserts "netd on h1 ready", "netd on h2 ready".
      const tb = await netdTestbed(t, s, {
        label: 'sweep',
        vpcs: [{ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.6.0.0/24', vni: 600 }],
        netd: { leaseTtl: 2, extraArgs: ['--dead-host-grace', String(GRACE_SECONDS), '--sweep-interval', '0.5'] },
      });
      const { store, ipam } = tb;
      const daemons = tb.daemons;

      const ip = new IpClient(s.runner);
      const ns = { h1: `tn-${d.prefix}-s1`, h2: `tn-${d.prefix}-s2` };
      await ip.addNetns(Object.values(ns));
      t.teardown(() => ip.deleteNetns(Object.values(ns)));
      const conf = { cniVersion: '1.0.0', name: 'vpc-a', type: 'netd', vpc: 'a' };
      const env = (host: 'h1' | 'h2') => ({
        CNI_CONTAINERID: `c-${host}`,
        CNI_NETNS: `/run/netns/${ns[host]}`,
        CNI_IFNAME: 'eth1',
      });
      for (const host of ['h1', 'h2'] as const)
        t.ok((await tb.plugin(host, 'ADD', conf, env(host))).ok, `ADD on ${host}`);
      const records = async () =>
        (await store.list(modelKeys.endpoints())).kvs.map((kv) => (JSON.parse(kv.value) as EndpointRecord).host).sort();
      const handleHosts = async () => (await ipam.handles()).map((h) => h.record.host).sort();
      const h1Fdb = () =>
        new BridgeClient(s.runner, { name: s.cluster.host('h1').netns }).fdb({ dev: linkNames.vxlan(600) });
      const towardsH2 = async () => (await h1Fdb()).some((e) => e.dst === s.cluster.host('h2').underlayIp);
      t.ok(await eventually(towardsH2, 10_000), 'h1 forwards towards h2');

      killDaemon(daemons.get('h2')!.handle, 'SIGKILL');
      await daemons.get('h2')!.handle.exited;
      const killedAt = Date.now();
      t.ok(
        await eventually(async () => !(await towardsH2()), 15_000),
        'once the lease expired, h1 dropped its FDB entries towards h2',
      );
      t.same(
        await records(),
        ['h1', 'h2'],
        `but h2's record stays within the grace (${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill)`,
      );
      t.same(await handleHosts(), ['h1', 'h2'], 'and so does its address');
      t.ok(
        await eventually(async () => JSON.stringify(await records()) === '["h1"]', 30_000, 200),
        `after the grace, h2's record is gone (${((Date.now() - killedAt) / 1000).toFixed(1)} s after the kill)`,
      );
      t.ok(
        await eventually(async () => JSON.stringify(await handleHosts()) === '["h1"]', 10_000, 200),
        "and h2's address is free",
      );

      // h2 comes back late: nothing records its container any more, so its port is an orphan.
      await tb.start(['h2']); // asserts "netd on h2 ready"
      const h2Ports = async () =>
        (await new IpClient(s.runner, { name: s.cluster.host('h2').netns }).links()).filter((l) =>
          /^n[ie]/.test(l.ifname),
        ).length;
      t.ok(await eventually(async () => (await h2Ports()) === 0, 15_000), 'h2 removed the port nobody records');

      t.ok((await tb.plugin('h1', 'DEL', conf, env('h1'))).ok, 'DEL on h1');
      t.ok((await tb.plugin('h2', 'DEL', conf, env('h2'))).ok, 'DEL on h2 of what is already gone succeeds');
      t.same(await records(), [], 'no record left');
      t.same(await handleHosts(), [], 'no address left');
      await tb.stopAll();
      await store.deletePrefix('/netd/v1/');
    });
  },
);
