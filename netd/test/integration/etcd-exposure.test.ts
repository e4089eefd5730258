import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { IpClient } from '../../../sys/ip.js';
import { invokePlugin } from '../netd-hosts.js';

/**
 * docs/operations.md, "Keep etcd off the container network": eth0 traffic leaves through the host
 * (NAT), so when etcd shares the underlay a container reaches its port; the documented nft guard in
 * the host's forward path stops that, and netd on the same host (output path) is not affected.
 */
t.test("a container's eth0 reaches etcd's port through the host unless the documented guard drops it", async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1, with: ['netd'] }, async (s) => {
    const d = s.cluster.description;
    const cni = d.cni!;
    const h1 = s.cluster.host('h1');
    const ns = [`tn-${d.prefix}-x1`, `tn-${d.prefix}-x2`];
    const ip = new IpClient(s.runner);
    await ip.addNetns(ns);
    const conf = { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true };
    const cniCall = (command: string, i: number) =>
      invokePlugin(s, cni.binDir, 'h1', command, conf, {
        CNI_CONTAINERID: `x${i}`,
        CNI_NETNS: `/run/netns/${ns[i]}`,
        CNI_IFNAME: 'eth0',
      });
    const first = await cniCall('ADD', 0);
    t.ok(first.ok, `eth0 attached: ${JSON.stringify(first.out)}`);
    const etcd = d.etcd.members[0]!.address;
    t.ok(await s.probe.connect(ns[0]!, 'tcp', etcd, 2379, 2_000), "unguarded: the container opens etcd's client port");

    const members = d.etcd.members.map((m) => m.address).join(', ');
    await s.runner.run({
      argv: ['nft', '-f', '-'],
      netns: { name: h1.netns },
      stdin: `table inet etcd_guard {
  set members { type ipv4_addr; elements = { ${members} } }
  chain forward {
    type filter hook forward priority 0; policy accept;
    iifname "ne*" ip daddr @members tcp dport { 2379, 2380 } reject with tcp reset
  }
}
`,
    });
    t.notOk(await s.probe.connect(ns[0]!, 'tcp', etcd, 2379, 2_000), 'guarded: the connection is refused');
    t.notOk(await s.probe.connect(ns[0]!, 'tcp', etcd, 2380, 2_000), 'the peer port too');
    t.ok(
      await s.probe.delivered({
        from: ns[0]!,
        to: d.outside.netns,
        address: d.outside.address,
        protocol: 'tcp',
        port: 7000,
      }),
      'the container still reaches the outside world',
    );
    const second = await cniCall('ADD', 1);
    t.ok(second.ok, `netd on the guarded host still talks to etcd: ${JSON.stringify(second.out)}`);

    for (const i of [0, 1]) t.ok((await cniCall('DEL', i)).ok, `DEL x${i}`);
    await s.runner.run({ argv: ['nft', 'delete', 'table', 'inet', 'etcd_guard'], netns: { name: h1.netns } });
    await ip.deleteNetns(ns);
  });
});
