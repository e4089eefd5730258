import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { IpClient } from '../../../sys/ip.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { linkNames } from '../../names.js';
import { eventually } from '../../../test-netns/testing.js';
import { invokePlugin } from '../netd-hosts.js';

/**
 * etcd goes away while containers run: netd keeps serving from its view (CHECK; DEL removes the
 * kernel side at once and finishes in etcd when it returns), refuses ADD with "try again" (11)
 * at once, and loses nothing: once etcd is back every record has its address and vice versa.
 */
t.test('etcd down: DEL and CHECK served from the view, ADD answers 11, nothing lost when etcd returns', async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, with: ['netd'] }, async (s) => {
    const d = s.cluster.description;
    const cni = d.cni!;
    const store = new EtcdStore({ ...d.etcd.client, callTimeoutMs: 2000 });
    t.teardown(() => store.close());
    await store.put(
      modelKeys.vpc('a'),
      JSON.stringify({ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.52.0.0/24', vni: 52 }),
    );
    await new Ipam({ store, host: 'admin' }).createPool({ name: 'a', cidr: '10.52.0.0/24', kind: 'vpc' });
    const h1 = s.cluster.host('h1');
    const ip = new IpClient(s.runner);
    const netns = ['c1', 'c2', 'c3'].map((c) => `tn-${d.prefix}-${c}`);
    await ip.addNetns(netns);
    t.teardown(() => ip.deleteNetns(netns));
    const conf = { cniVersion: '1.1.0', name: 'vpc-a', type: 'netd', vpc: 'a' };
    const call = (command: string, i: number) =>
      invokePlugin(s, cni.binDir, 'h1', command, conf, {
        CNI_CONTAINERID: `c${i + 1}`,
        CNI_NETNS: `/run/netns/${netns[i]}`,
        CNI_IFNAME: 'eth1',
      });
    const status = async () => (await invokePlugin(s, cni.binDir, 'h1', 'STATUS', conf, {})).ok;
    const hostIp = new IpClient(s.runner, { name: h1.netns });
    const port = (i: number) => linkNames.internalPort(`h1:c${i + 1}:eth1`);

    t.ok((await call('ADD', 0)).ok, 'ADD c1');
    t.ok((await call('ADD', 1)).ok, 'ADD c2');
    const etcd = s.cluster.etcdServer();
    t.teardown(() => etcd.stop());
    await etcd.stop();
    t.ok(await eventually(async () => !(await status()), 15_000), 'STATUS reports netd unavailable once etcd is gone');

    t.ok((await call('CHECK', 0)).ok, 'CHECK c1 answers from the view');
    const del = await call('DEL', 1);
    t.ok(del.ok, `DEL c2 succeeds (${del.ms.toFixed(0)} ms)`);
    t.equal(await hostIp.link(port(1)), undefined, "c2's host port is gone at once");
    t.same(
      (await new IpClient(s.runner, { name: netns[1]! }).links()).filter((l) => l.ifname !== 'lo'),
      [],
      "and so is c2's interface",
    );
    const add = await call('ADD', 2);
    t.notOk(add.ok, 'ADD c3 refused');
    t.equal(add.out.code, 11, `with code 11, try again later (${String(add.out.msg)})`);
    t.equal(add.out.cniVersion, '1.1.0', "in the request's version");
    t.ok(add.ms < 3000, `at once (${add.ms.toFixed(0)} ms), not after etcd timeouts`);
    t.equal(await hostIp.link(port(2)), undefined, 'the refused ADD left no port');

    await etcd.restart();
    t.ok(await eventually(status, 30_000, 200), 'STATUS ready again once etcd is back');
    t.ok(
      await eventually(async () => (await store.get(modelKeys.endpoint('a', 'h1:c2:eth1'))) === undefined, 30_000, 200),
      "the DEL finished in etcd: c2's record is gone",
    );
    const handles = async () =>
      (await new Ipam({ store, host: 'h1' }).handles({ host: 'h1' })).map((h) => h.record.handle).sort();
    t.ok(
      await eventually(async () => !(await handles()).includes('h1:c2:eth1'), 30_000, 200),
      "and c2's address released",
    );
    t.ok((await call('CHECK', 0)).ok, 'c1 is still complete');
    t.ok((await call('ADD', 2)).ok, 'ADD c3 works again');
    const records = (await store.list(modelKeys.endpoints())).kvs
      .map((kv) => (JSON.parse(kv.value) as EndpointRecord).id)
      .sort();
    t.same(records, ['h1:c1:eth1', 'h1:c3:eth1'], 'records: c1 and c3');
    t.same(await handles(), records, 'every record has its address, every address its record');

    for (const i of [0, 2]) t.ok((await call('DEL', i)).ok, `DEL c${i + 1}`);
    t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
    await store.deletePrefix(modelKeys.vpcs());
    // The restarted etcd is this test's process (the cluster recorded the first one): end it here.
    await etcd.stop();
  });
});
