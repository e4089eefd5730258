import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { findLeader } from '../../../test-netns/etcd.js';
import { IpClient } from '../../../sys/ip.js';
import { BridgeClient } from '../../../sys/bridge.js';
import { addressAt, formatIp, parseCidr } from '../../../core/cidr.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { endpointId, type EndpointRecord } from '../../../tenancy/records.js';
import { linkNames } from '../../names.js';
import { invokePlugin, putVpcs, type PluginAnswer as Answer } from '../netd-hosts.js';

const ADDS = 120;
const IN_FLIGHT = 8;
const KILL_AFTER = 30;
const VNI = 60;

t.test(
  'the etcd leader SIGKILLed during a burst of CNI ADDs: each ADD succeeds or fails with a CNI error, no address is held twice, and netd keeps following etcd',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2, with: ['netd'], etcdMembers: 3 }, async (s) => {
      const d = s.cluster.description;
      const cni = d.cni!;
      const store = new EtcdStore(d.etcd.client);
      t.teardown(() => store.close());
      await putVpcs(store, [{ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.60.0.0/16', vni: VNI }]);
      const ipam = new Ipam({ store, host: 'admin' });
      const id = (host: string, container: string) => endpointId({ host, containerId: container, ifname: 'eth1' });

      // Containers as a runtime makes them: plain namespaces (removed with the cluster's).
      const names = Array.from({ length: ADDS }, (_, i) => `tn-${d.prefix}-k${i}`);
      const late = `tn-${d.prefix}-late`;
      const ip = new IpClient(s.runner);
      await ip.addNetns([...names, late]);
      const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'vpc-a', type: 'netd', vpc: 'a' });
      const call = (host: string, command: string, id: string, netns: string): Promise<Answer> =>
        invokePlugin(s, cni.binDir, host, command, conf, {
          CNI_CONTAINERID: id,
          CNI_NETNS: `/run/netns/${netns}`,
          CNI_IFNAME: 'eth1',
        });

      // The burst on h1, with the etcd leader SIGKILLed once KILL_AFTER ADDs were answered.
      const members = s.cluster.etcdMembers();
      const leader = await findLeader(members);
      if (leader === undefined) throw new Error('no etcd leader');
      const answers = new Map<number, Answer>();
      let next = 0;
      let succeeded = 0;
      let killedAt = 0;
      const started = Date.now();
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          for (;;) {
            const i = next++;
            if (i >= ADDS) return;
            const a = await call('h1', 'ADD', `k${i}`, names[i]!);
            answers.set(i, a);
            if (a.ok && ++succeeded === KILL_AFTER) {
              s.cluster.etcdMember(leader).kill();
              killedAt = Date.now();
            }
          }
        }),
      );
      t.ok(killedAt > 0, `etcd leader m${leader + 1} was SIGKILLed after ${KILL_AFTER} ADDs`);
      const failed = [...answers].filter(([, a]) => !a.ok);
      const codes = new Map<number, number>();
      for (const [, a] of failed) codes.set(Number(a.out.code), (codes.get(Number(a.out.code)) ?? 0) + 1);
      t.comment(
        `${ADDS} ADDs in ${Date.now() - started} ms (${Date.now() - killedAt} ms after the kill): ` +
          `${succeeded} succeeded, ${failed.length} failed, CNI codes ${JSON.stringify(Object.fromEntries(codes))}`,
      );
      t.same(
        failed.filter(([, a]) => !(typeof a.out.code === 'number' && typeof a.out.msg === 'string')),
        [],
        'every failed ADD answered with a CNI error object (code, msg)',
      );
      t.equal(succeeded + failed.length, ADDS, 'every ADD answered');
      t.not(await findLeader(s.cluster.etcdMembers()), leader, 'etcd elected another leader');

      // etcd's truth: handles agree with the blocks, no address is held twice.
      const handles = (await ipam.handles()).map((h) => h.record).filter((h) => h.pool === 'a');
      const blocks = await ipam.blocks('a');
      const inBlocks = new Map<string, { handle: string; seq: number }>();
      for (const b of blocks) {
        const cidr = parseCidr(b.cidr);
        for (const [offset, alloc] of Object.entries(b.allocations))
          inBlocks.set(formatIp(addressAt(cidr, BigInt(offset))), { handle: alloc.h, seq: alloc.s });
      }
      t.equal(new Set(handles.map((h) => h.ip)).size, handles.length, 'no address in two handles');
      t.same(
        handles.filter((h) => inBlocks.get(h.ip)?.handle !== h.handle || inBlocks.get(h.ip)?.seq !== h.seq),
        [],
        'every handle is its block allocation',
      );
      t.equal(inBlocks.size, handles.length, 'and every block allocation has its handle');
      const records = new Map(
        (await store.list(modelKeys.endpoints())).kvs.map((kv) => {
          const r = JSON.parse(kv.value) as EndpointRecord;
          return [r.id, r];
        }),
      );
      const answeredWithoutRecord = [...answers]
        .filter(([, a]) => a.ok)
        .filter(([i, a]) => {
          const r = records.get(id('h1', `k${i}`));
          const address = (a.out.ips as Array<{ address: string }> | undefined)?.[0]?.address.split('/')[0];
          return !r || r.ip !== address;
        })
        .map(([i]) => `k${i}`);
      t.same(answeredWithoutRecord, [], 'every answered ADD has its endpoint record, with the address it answered');
      const failedWithRecord = failed.filter(([i]) => records.has(id('h1', `k${i}`))).length;
      if (failedWithRecord) t.comment(`${failedWithRecord} failed ADDs left a record (their rollback met the outage)`);
      t.same(
        [...records.values()].filter((r) => !handles.some((h) => h.handle === r.id && h.ip === r.ip)).map((r) => r.id),
        [],
        'every endpoint record holds its address',
      );

      // netd's watches followed the failover: a container ADDed on h2 now appears in h1's FDB.
      const z = await call('h2', 'ADD', 'late', late);
      t.ok(z.ok, `ADD on h2 after the kill: ${JSON.stringify(z.out)}`);
      const zRecord = async () =>
        (await store.list(modelKeys.endpoints())).kvs
          .map((kv) => JSON.parse(kv.value) as EndpointRecord)
          .find((r) => r.id === id('h2', 'late'));
      const zMac = (await zRecord())?.mac;
      t.ok(zMac, 'its endpoint record is in etcd');
      const h1Fdb = new BridgeClient(s.runner, { name: s.cluster.host('h1').netns });
      t.ok(
        await eventually(
          async () =>
            (await h1Fdb.fdb({ dev: linkNames.vxlan(VNI) })).some(
              (e) => e.mac === zMac && e.dst === s.cluster.host('h2').underlayIp,
            ),
          15_000,
        ),
        `h1 programmed an FDB entry for ${zMac} towards h2`,
      );

      // The runtime's cleanup (a DEL for every ADD, failed or not); then nothing is left.
      await call('h2', 'DEL', 'late', late);
      const dels = Array.from({ length: ADDS }, (_, i) => i);
      await Promise.all(
        Array.from({ length: IN_FLIGHT }, async () => {
          for (let i = dels.shift(); i !== undefined; i = dels.shift()) {
            const r = await call('h1', 'DEL', `k${i}`, names[i]!);
            if (!r.ok) t.fail(`DEL k${i}: ${JSON.stringify(r.out)}`);
          }
        }),
      );
      t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record left');
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
      await ipam.deletePool('a');
      await store.deletePrefix(modelKeys.vpcs());
      await ip.deleteNetns([...names, late]);
    });
  },
);
