import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { IpClient } from '../../../sys/ip.js';
import { NftClient } from '../../../sys/nft.js';
import { silentLogger } from '../../../sys/log.js';
import { EtcdStore } from '../../../store/etcd.js';
import { PolicyDirectory } from '../../../tenancy/policy.js';
import { PortGuard } from '../../../tagqueue/port-guard.js';
import { FAMILY, SETS, TAGQUEUE_TABLE } from '../../../tagqueue/ruleset.js';
import { invokePlugin } from '../netd-hosts.js';
import { NetdApiClient } from '../../../tenancy/api/client.js';

/**
 * tagqueue on eth0, judged at the receivers: a container's eth0 reaches the outside world but not
 * etcd, its own host or another host (each drop counted by the host's table); the operator's
 * allow-list opens exactly what it names; forged source addresses and MACs never leave the host;
 * a DEL takes the port's elements away.
 */
t.test(
  'eth0: the world yes; etcd, the hosts and forged sources no; the allow-list opens exactly what it lists',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2, with: ['netd'] }, async (s) => {
      const d = s.cluster.description;
      const h1 = s.cluster.host('h1');
      const h2 = s.cluster.host('h2');
      const x1 = `tn-${d.prefix}-x1`;
      const ip = new IpClient(s.runner);
      await ip.addNetns([x1]);
      t.teardown(() => ip.deleteNetns([x1]).catch(() => undefined));
      const conf = { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true };
      const cniCall = (command: string) =>
        invokePlugin(s, d.cni!.binDir, 'h1', command, conf, {
          CNI_CONTAINERID: 'x1',
          CNI_NETNS: `/run/netns/${x1}`,
          CNI_IFNAME: 'eth0',
        });
      const added = await cniCall('ADD');
      t.ok(added.ok, `eth0 attached: ${JSON.stringify(added.out)}`);

      // The table is in place before the ADD answered: read it now, no waiting.
      const nft = new NftClient(s.runner, { name: h1.netns });
      const table = await nft.table(FAMILY, TAGQUEUE_TABLE);
      const portSet = table?.sets.find((x) => x.name === SETS.external)?.elem ?? [];
      t.equal(portSet.length, 1, "the port is in h1's tagqueue table when the ADD answers");
      const counts = () => new PortGuard(nft, silentLogger(), () => ({ infra: [], allow: [] })).drops();

      t.ok(
        await s.probe.delivered({
          from: x1,
          to: d.outside.netns,
          address: d.outside.address,
          protocol: 'tcp',
          port: 7000,
        }),
        'the container reaches the outside world',
      );

      // Another host's address: nothing arrives there.
      const atH2 = await s.probe.countIn(h2.netns, 'tcp dport 7100');
      t.teardown(() => atH2.remove());
      let before = await counts();
      t.notOk(
        await s.probe.delivered({ from: x1, to: h2.netns, address: h2.underlayIp, protocol: 'tcp', port: 7100 }),
        "h2's address is out of reach",
      );
      t.equal(await atH2.read(), 0, 'h2 saw no packet of it');
      let after = await counts();
      t.ok(after.infra.packets > before.infra.packets, `h1 counted the drops (infra ${after.infra.packets})`);

      // etcd's client port, on the fabric.
      const etcd = d.etcd.members[0]!.address;
      before = after;
      t.notOk(await s.probe.connect(x1, 'tcp', etcd, 2379, 1_500), "etcd's client port is out of reach");
      after = await counts();
      t.ok(after.infra.packets > before.infra.packets, 'counted as infrastructure');

      // Its own host.
      before = after;
      t.notOk(
        await s.probe.delivered({ from: x1, to: h1.netns, address: h1.underlayIp, protocol: 'tcp', port: 7101 }),
        'its own host is out of reach',
      );
      after = await counts();
      t.ok(after.host.packets > before.host.packets, 'counted as to the host');

      // The operator opens one port of h2 (the policy, as PUT /v1/policy writes it).
      const store = new EtcdStore(d.etcd.client);
      t.teardown(() => store.close());
      await new PolicyDirectory(store).set({ infraAllow: [{ cidr: `${h2.underlayIp}/32`, proto: 'tcp', port: 7100 }] });
      t.ok(
        await eventually(
          () => s.probe.delivered({ from: x1, to: h2.netns, address: h2.underlayIp, protocol: 'tcp', port: 7100 }),
          10_000,
        ),
        'the allow-list opens h2:7100',
      );
      t.ok((await atH2.read()) > 0, 'and h2 sees it');
      t.notOk(
        await s.probe.delivered({ from: x1, to: h2.netns, address: h2.underlayIp, protocol: 'tcp', port: 7102 }),
        'and nothing else of h2',
      );
      t.notOk(await s.probe.connect(x1, 'tcp', etcd, 2379, 1_500), 'nor etcd');
      await new PolicyDirectory(store).set({});

      // Forged sources: another address, then another MAC. The outside counts echo requests.
      const atOutside = await s.probe.countIn(d.outside.netns, 'icmp type echo-request');
      t.teardown(() => atOutside.remove());
      const ping = (extra: string[]) =>
        s.runner
          .run({ argv: ['ping', '-c', '3', '-i', '0.2', '-W', '1', ...extra, d.outside.address], netns: { name: x1 } })
          .then(
            () => true,
            () => false,
          );
      t.ok(await ping([]), 'pings from its own address arrive');
      const honest = await atOutside.read();
      t.ok(honest >= 3, `the outside counted ${honest}`);
      before = await counts();
      await s.runner.run({ argv: ['ip', 'addr', 'add', '100.64.250.250/32', 'dev', 'eth0'], netns: { name: x1 } });
      t.notOk(await ping(['-I', '100.64.250.250']), 'a forged source gets no answer');
      t.equal(await atOutside.read(), honest, 'and the outside saw none of it');
      after = await counts();
      t.ok(
        after.spoofed.packets >= before.spoofed.packets + 3,
        `h1 counted the forged packets (${after.spoofed.packets})`,
      );
      await s.runner.run({ argv: ['ip', 'addr', 'del', '100.64.250.250/32', 'dev', 'eth0'], netns: { name: x1 } });
      const mac = (await new IpClient(s.runner, { name: x1 }).link('eth0'))!.address!;
      await s.runner.run({ argv: ['ip', 'link', 'set', 'eth0', 'address', '02:66:66:66:66:66'], netns: { name: x1 } });
      before = after;
      t.notOk(await ping([]), 'a forged MAC gets no answer');
      t.equal(await atOutside.read(), honest, 'the outside saw none of it');
      after = await counts();
      t.ok(after.spoofed.packets > before.spoofed.packets, 'counted');
      const metrics = await new NetdApiClient(h1.daemons.netdApi!).text('/metrics');
      const scraped = Number(/netd_tagqueue_dropped\{kind="spoofed",unit="packets"\} (\d+)/.exec(metrics)?.[1]);
      t.ok(scraped >= after.spoofed.packets, `h1's /metrics reports the spoofed drops (${scraped})`);
      await s.runner.run({ argv: ['ip', 'link', 'set', 'eth0', 'address', mac], netns: { name: x1 } });
      t.ok(await eventually(() => ping([]), 10_000), 'its own MAC again: answered');

      t.ok((await cniCall('DEL')).ok, 'DEL');
      const left = (await nft.table(FAMILY, TAGQUEUE_TABLE))?.sets.flatMap((x) => x.elem ?? []) ?? [];
      t.same(
        left.filter((e) => JSON.stringify(e).includes('"ne')),
        [],
        "the DEL took the port's elements away",
      );
    });
  },
);
