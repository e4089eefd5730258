import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot, uniqueSuffix } from '../../../test-netns/testing.js';
import { Podman } from '../../../test-netns/podman.js';
import { isCommandError } from '../../../sys/runner.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { netdTestbed, vlanOf } from '../netd-hosts.js';

// Per mode: vxlan and vlan VPCs may share a CIDR, routed ones may not; routed also with IPv6 VPCs.
for (const [mode, cidrA, cidrB] of [
  ['vxlan', '10.70.0.0/24', '10.70.0.0/24'],
  ['routed', '10.70.0.0/24', '10.71.0.0/24'],
  ['routed', 'fd10:70::/64', 'fd10:71::/64'],
  ['vlan', '10.70.0.0/24', '10.70.0.0/24'],
] as const)
  t.test(
    `podman containers (${mode}, ${cidrA.includes(':') ? 'IPv6' : 'IPv4'}) on two hosts talk inside their VPC and not across VPCs; podman rm leaves nothing`,
    async (t) => {
      if (!requireRoot(t)) return;
      await withCluster({ hosts: 2, vlan: mode === 'vlan' }, async (s) => {
        const d = s.cluster.description;
        const tb = await netdTestbed(t, s, {
          label: 'podman',
          vpcs: [
            { name: 'a', tenant: 't1', mode, cidr: cidrA, vni: 700, ...vlanOf(mode, 700) },
            { name: 'b', tenant: 't2', mode, cidr: cidrB, vni: 701, ...vlanOf(mode, 701) },
          ],
          externalPool: { name: 'ext', cidr: '100.64.0.0/24' },
        });
        const { store, bin } = tb;
        const podman = await Podman.create(s.runner, { pluginDir: bin });
        t.teardown(() => podman.cleanup());
        podman.addNetwork({ name: 'vpc-a', plugins: [{ type: 'netd', vpc: 'a' }] });
        podman.addNetwork({ name: 'vpc-b', plugins: [{ type: 'netd', vpc: 'b' }] });
        podman.addNetwork({ name: 'external', plugins: [{ type: 'netd', external: true }] });

        const h1 = s.cluster.host('h1').netns;
        const h2 = s.cluster.host('h2').netns;
        const server = `tn-a2-${uniqueSuffix()}`;
        t.teardown(() => podman.remove(h2, server).catch(() => undefined));
        await podman.run(h2, { name: server, networks: ['vpc-a'], detach: true }, ['sleep', '300']);
        const records = (await store.list(modelKeys.endpoints())).kvs.map(
          (kv) => JSON.parse(kv.value) as EndpointRecord,
        );
        t.equal(records.length, 1, 'podman run created one endpoint');
        const target = records[0]!;
        t.equal(target.host, 'h2');

        const ping = (network: string) =>
          podman.run(h1, { networks: [network], rm: true }, ['ping', '-c', '1', '-W', '2', target.ip]).then(
            () => true,
            (err: unknown) => (isCommandError(err) ? false : Promise.reject(err)),
          );
        t.ok(await eventually(() => ping('vpc-a'), 20_000, 200), `a container on h1 in VPC a pings ${target.ip} on h2`);
        t.notOk(
          await ping('vpc-b'),
          `a container in VPC b (other tenant${mode === 'routed' ? '' : ', same CIDR'}) does not`,
        );

        // eth0 (external, IPv4) reaches the outside world; eth1 (the VPC) never does.
        const outside = d.outside.address;
        // What eth1 would try: the outside world's address of the VPC's family.
        const outsideOfVpc = cidrA.includes(':') ? d.outside.address6 : outside;
        const run = (networks: string[], cmd: string[]) =>
          podman.run(h1, { networks, rm: true }, cmd).then(
            () => true,
            (err: unknown) => (isCommandError(err) ? false : Promise.reject(err)),
          );
        t.ok(
          await run(['external', 'vpc-a'], ['ping', '-c', '1', '-W', '2', outside]),
          `eth0 reaches outside (${outside})`,
        );
        t.notOk(
          await run(['external', 'vpc-a'], ['ping', '-c', '1', '-W', '1', '-I', 'eth1', outsideOfVpc]),
          `eth1 does not (${outsideOfVpc})`,
        );
        t.notOk(
          await run(['vpc-a'], ['ping', '-c', '1', '-W', '1', outsideOfVpc]),
          'a VPC-only container does not either',
        );
        t.ok(
          await run(['external', 'vpc-a'], ['ping', '-c', '1', '-W', '2', target.ip]),
          'with both interfaces, the VPC peer is still reached over eth1',
        );

        await podman.remove(h2, server);
        t.ok(
          await eventually(async () => (await store.list(modelKeys.endpoints())).kvs.length === 0, 10_000),
          'podman rm: no endpoint record left',
        );
        t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left (internal or external)');
        t.same((await store.list('/netd/v1/external/')).kvs, [], 'no external endpoint left');
        for (const h of [h1, h2]) {
          t.ok(
            await eventually(
              async () =>
                !(await s.runner.run({ argv: ['ip', '-o', 'link'], netns: { name: h } })).stdout.match(
                  /: n[bxieqo][0-9a-f]+[@:]/,
                ),
              10_000,
            ),
            `${h}: no netd link left`,
          );
          const rules = async () =>
            [
              ...(await s.runner.run({ argv: ['ip', '-4', 'rule'], netns: { name: h } })).stdout.split('\n'),
              ...(await s.runner.run({ argv: ['ip', '-6', 'rule'], netns: { name: h } })).stdout.split('\n'),
            ].filter((l) => l.includes(' proto 78'));
          t.ok(
            await eventually(async () => (await rules()).length === 0, 10_000),
            `${h}: no netd rule left ${JSON.stringify(await rules())}`,
          );
        }
        await tb.stopAll();
        await store.deletePrefix('/netd/v1/');
        t.same(await s.residue(), []);
      });
    },
  );
