import t from 'tap';
import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { HostRecord } from '../../../tenancy/records.js';
import { netdOvsPorts, netdTestbed } from '../netd-hosts.js';

/**
 * Open vSwitch that is not there when netd starts (a service starting after it, or down for a
 * while): the host serves the other modes and says why it serves no vlan VPC, then sets vlan up on
 * a later resync and says so in its record. (netd's database socket is a path that appears later.)
 */
t.test('a host whose Open vSwitch appears after netd started takes up vlan mode without a restart', async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, vlan: true }, async (s) => {
    const h1 = s.cluster.host('h1');
    const tb = await netdTestbed(t, s, { label: 'vlan-late', start: false });
    const late = join(tb.dir, 'late-db.sock');
    await tb.start(['h1'], { extraArgs: ['--ovs-db', late] });
    const record = async () => JSON.parse((await tb.store.get(modelKeys.host('h1')))!.value) as HostRecord;
    const first = await record();
    t.same(first.modes, ['vxlan', 'routed'], 'without Open vSwitch the host builds vxlan and routed only');
    t.notOk(first.vlan, 'and claims no trunk');
    symlinkSync(h1.vlan!.ovsDb, late);
    t.ok(
      await eventually(async () => (await record()).vlan?.physnet === 'physnet0', 20_000),
      'once Open vSwitch answers, the host sets vlan up and its record says so',
    );
    t.same((await record()).modes, ['vxlan', 'routed', 'vlan']);
    await tb.stopAll();
    await tb.store.deletePrefix('/netd/v1/');
    t.same(await s.residue(), [], 'nothing left behind');
  });
});

t.test(
  'Open vSwitch going away under a running netd: vlan leaves the record, DELs still succeed, other modes keep working; it comes back by itself',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 1, vlan: true }, async (s) => {
      const tb = await netdTestbed(t, s, {
        label: 'vlan-outage',
        vpcs: [
          { name: 'va', tenant: 't1', mode: 'vlan', cidr: '10.72.0.0/24', vni: 720, vlan: 720, physnet: 'physnet0' },
          { name: 'vx', tenant: 't1', mode: 'vxlan', cidr: '10.73.0.0/24', vni: 721 },
        ],
      });
      const record = async () => JSON.parse((await tb.store.get(modelKeys.host('h1')))!.value) as HostRecord;
      const cni = async (command: string, name: string, vpc: string, netnsPath: string) =>
        tb.plugin(
          'h1',
          command,
          { cniVersion: '1.0.0', name: vpc, type: 'netd', vpc },
          {
            CNI_CONTAINERID: name,
            CNI_NETNS: netnsPath,
            CNI_IFNAME: 'eth1',
          },
        );
      const c1 = await s.containers.add({ host: 'h1', name: 'c1' });
      t.ok((await cni('ADD', 'c1', 'va', c1.netnsPath)).ok, 'ADD c1 into the vlan VPC');

      await s.cluster.stopOvs('h1');
      t.ok(
        await eventually(async () => (await record()).vlan === undefined, 20_000),
        "with Open vSwitch gone, the host's record no longer offers vlan",
      );
      t.ok((await cni('DEL', 'c1', 'va', c1.netnsPath)).ok, 'DEL of a vlan container still succeeds');
      const x1 = await s.containers.add({ host: 'h1', name: 'x1' });
      t.ok((await cni('ADD', 'x1', 'vx', x1.netnsPath)).ok, 'a vxlan ADD works meanwhile');
      const c2 = await s.containers.add({ host: 'h1', name: 'c2' });
      const refused = await cni('ADD', 'c2', 'va', c2.netnsPath);
      t.notOk(refused.ok, 'a vlan ADD is refused meanwhile');
      t.match(String(refused.out.msg), /serves no vlan VPC/, `it says why: ${String(refused.out.msg)}`);

      await s.cluster.startOvs('h1');
      t.ok(
        await eventually(async () => (await record()).vlan?.physnet === 'physnet0', 20_000),
        'Open vSwitch back: the host sets vlan up again by itself',
      );
      t.ok((await cni('ADD', 'c2', 'va', c2.netnsPath)).ok, 'and vlan ADDs work again');
      const port = (await tb.store.list(modelKeys.vpcEndpoints('va'))).kvs.map(
        (kv) => JSON.parse(kv.value) as { hostIf: string },
      )[0]?.hostIf;
      t.ok(
        await eventually(
          async () => JSON.stringify([...(await netdOvsPorts(s, 'h1')).keys()]) === JSON.stringify([port]),
          15_000,
        ),
        "c1's row, left while Open vSwitch was away, is gone; c2's port is there",
      );
      t.ok((await cni('DEL', 'c2', 'va', c2.netnsPath)).ok);
      t.ok((await cni('DEL', 'x1', 'vx', x1.netnsPath)).ok);
      for (const c of [c1, c2, x1]) await s.containers.remove(c);
      await tb.stopAll();
      await tb.store.deletePrefix('/netd/v1/');
      t.same(await s.residue(), [], 'nothing left behind');
    });
  },
);
