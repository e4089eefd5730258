import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { IpClient } from '../../../sys/ip.js';
import { TcClient } from '../../../sys/tc.js';
import { linkNames } from '../../names.js';
import { netdTestbed } from '../netd-hosts.js';

/**
 * eth0 in both external modes at once: h1 routes its containers' addresses as they are (it answers
 * ARP for them on its uplink), h2 NATs them to its own address. The outside router knows only an
 * on-link route to the pool. Seen from outside, a routed container is reachable and speaks with
 * its own address; a NAT'd one is unreachable and speaks with its host's.
 */

const POOL = { name: 'ext', cidr: '100.64.0.0/24' };

t.test('eth0 routed (proxy ARP on the uplink, no NAT) and NAT side by side; DEL leaves no proxy entry', async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 2 }, async (s) => {
    const d = s.cluster.description;
    // Asserts "netd on h1 ready", "netd on h2 ready".
    const tb = await netdTestbed(t, s, {
      label: 'ext',
      externalPool: POOL,
      netd: (host) => ({ externalMode: host === 'h1' ? 'routed' : 'nat' }),
    });
    const { store } = tb;

    const ip = new IpClient(s.runner);
    const out = d.outside.netns;
    // The upstream router: the pool is on its segment (hosts answer for their containers).
    await s.runner.run({ argv: ['ip', 'route', 'replace', POOL.cidr, 'dev', 'uplink'], netns: { name: out } });
    // Counts what reaches the outside from the pool's addresses, by source.
    await s.runner.run({
      argv: ['nft', '-f', '-'],
      netns: { name: out },
      stdin:
        'table ip seen {\n chain input {\n type filter hook input priority 0;\n ip saddr 100.64.0.0/24 counter\n ip saddr 10.77.0.0/24 counter\n }\n}\n',
    });
    const seenFrom = async (): Promise<{ pool: number; underlay: number }> => {
      const { stdout } = await s.runner.run({
        argv: ['nft', '-j', 'list', 'chain', 'ip', 'seen', 'input'],
        netns: { name: out },
      });
      const rules = (
        JSON.parse(stdout) as { nftables: Array<{ rule?: { expr: Array<{ counter?: { packets: number } }> } }> }
      ).nftables.filter((x) => x.rule);
      const packets = (i: number) => rules[i]!.rule!.expr.find((e) => e.counter)!.counter!.packets;
      return { pool: packets(0), underlay: packets(1) };
    };

    const ns = { h1: `tn-${d.prefix}-r1`, h2: `tn-${d.prefix}-n1` };
    await ip.addNetns(Object.values(ns));
    t.teardown(() => ip.deleteNetns(Object.values(ns)));
    const conf = { cniVersion: '1.0.0', name: 'external', type: 'netd', external: true };
    const add = async (host: 'h1' | 'h2') => {
      const r = await tb.plugin(host, 'ADD', conf, {
        CNI_CONTAINERID: `c-${host}`,
        CNI_NETNS: `/run/netns/${ns[host]}`,
        CNI_IFNAME: 'eth0',
      });
      t.ok(r.ok, `ADD on ${host}: ${JSON.stringify(r.out)}`);
      return String((r.out.ips as Array<{ address: string }>)[0]!.address).split('/')[0]!;
    };
    const routedIp = await add('h1');
    const natIp = await add('h2');
    const uplinkOf = (host: string) => new IpClient(s.runner, { name: s.cluster.host(host).netns });

    t.same(
      await uplinkOf('h1').proxyNeighbours('uplink'),
      [routedIp],
      'h1 answers ARP for its container on the uplink',
    );
    t.same(await uplinkOf('h2').proxyNeighbours('uplink'), [], 'h2 (NAT) answers for nothing');
    const sysctlOn = async (host: string, key: string) =>
      (await s.runner.run({ argv: ['sysctl', '-n', key], netns: { name: s.cluster.host(host).netns } })).stdout.trim();
    const h1Port = (JSON.parse((await store.get('/netd/v1/external/h1/h1:c-h1:eth0'))!.value) as { hostIf: string })
      .hostIf;
    t.equal(
      await sysctlOn('h1', `net.ipv4.neigh.${h1Port}.proxy_delay`),
      '0',
      "the gateway's proxy ARP answers at once (no proxy_delay)",
    );
    t.equal(await sysctlOn('h1', 'net.ipv4.neigh.uplink.proxy_delay'), '0', "and so does the routed host's uplink");

    // Routed: reachable from outside, and it speaks with its own address.
    t.ok(await s.probe.ping(out, routedIp), `outside reaches the routed container (${routedIp}) directly`);
    const before = await seenFrom();
    t.ok(await s.probe.ping(ns.h1, d.outside.address), 'the routed container reaches outside');
    const afterRouted = await seenFrom();
    t.ok(
      afterRouted.pool > before.pool && afterRouted.underlay === before.underlay,
      `outside saw the container's own address (pool +${afterRouted.pool - before.pool}, host +${afterRouted.underlay - before.underlay})`,
    );

    // NAT: unreachable from outside, and it speaks with its host's address.
    t.notOk(await s.probe.ping(out, natIp), `outside cannot reach the NAT'd container (${natIp})`);
    t.ok(await s.probe.ping(ns.h2, d.outside.address), "the NAT'd container reaches outside");
    const afterNat = await seenFrom();
    t.ok(
      afterNat.underlay > afterRouted.underlay && afterNat.pool === afterRouted.pool,
      `outside saw the host's address (host +${afterNat.underlay - afterRouted.underlay}, pool +${afterNat.pool - afterRouted.pool})`,
    );

    // A stray proxy entry in the pool (a crash between DEL steps) is removed by the reconciler;
    // one outside the pool is not netd's and stays.
    await s.runner.run({
      argv: ['ip', 'neigh', 'replace', 'proxy', '100.64.0.200', 'dev', 'uplink'],
      netns: { name: s.cluster.host('h1').netns },
    });
    await s.runner.run({
      argv: ['ip', 'neigh', 'replace', 'proxy', '10.77.0.99', 'dev', 'uplink'],
      netns: { name: s.cluster.host('h1').netns },
    });
    t.ok(
      await eventually(
        async () =>
          JSON.stringify((await uplinkOf('h1').proxyNeighbours('uplink')).sort()) ===
          JSON.stringify(['10.77.0.99', routedIp].sort()),
        15_000,
        200,
      ),
      'the reconciler removed the stray entry in the pool and kept the foreign one',
    );
    await s.runner.run({
      argv: ['ip', 'neigh', 'del', 'proxy', '10.77.0.99', 'dev', 'uplink'],
      netns: { name: s.cluster.host('h1').netns },
    });

    // eth0's limits change at runtime (PATCH .../external writes them on the eth0 record).
    {
      const key = '/netd/v1/external/h1/h1:c-h1:eth0';
      const rec = JSON.parse((await store.get(key))!.value) as Record<string, unknown>;
      const port = String(rec.hostIf);
      const tc = new TcClient(s.runner, { name: s.cluster.host('h1').netns });
      const rateOf = async (dev: string) =>
        (await tc.qdiscs(dev).catch(() => [])).find((q) => q.kind === 'tbf')?.options?.rate;
      await store.put(key, JSON.stringify({ ...rec, qos: { ingressBps: 16_000_000, egressBps: 24_000_000 } }));
      t.ok(
        await eventually(
          async () => (await rateOf(port)) === 2_000_000 && (await rateOf(linkNames.ifbFor(port))) === 3_000_000,
          10_000,
        ),
        'eth0 reshaped at runtime: 16 Mbit/s in, 24 Mbit/s out',
      );
      await store.put(key, JSON.stringify(rec));
      t.ok(await eventually(async () => (await rateOf(port)) === undefined, 10_000), 'and unshaped when the limits go');
    }

    for (const host of ['h1', 'h2'] as const) {
      const r = await tb.plugin(host, 'DEL', conf, {
        CNI_CONTAINERID: `c-${host}`,
        CNI_NETNS: `/run/netns/${ns[host]}`,
        CNI_IFNAME: 'eth0',
      });
      t.ok(r.ok, `DEL on ${host}`);
    }
    t.same(await uplinkOf('h1').proxyNeighbours('uplink'), [], 'DEL removed the proxy entry');
    t.notOk(await s.probe.ping(out, routedIp), 'the address is no longer answered');
    t.same((await store.list('/netd/v1/external/')).kvs, [], 'no external endpoint record left');
    t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
    await tb.ipam.deletePool(POOL.name);
  });
});
