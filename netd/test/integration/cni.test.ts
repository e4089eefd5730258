import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import type { TestContainer } from '../../../test-netns/containers.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { netdTestbed } from '../netd-hosts.js';
import { isRunning } from '../../../sys/process.js';
import { IpClient } from '../../../sys/ip.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import { TcClient } from '../../../sys/tc.js';

t.test(
  'the netd CNI plugin wires eth1 through the host daemon: ADD, CHECK, DEL (twice, and after the netns is gone), VERSION, STATUS, bad input',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 2 }, async (s) => {
      const d = s.cluster.description;
      const tb = await netdTestbed(t, s, {
        label: 'cni',
        vpcs: [{ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.5.0.0/24', vni: 500 }],
        // No dead-host sweep during the test: its lock key would change etcd under "exactly as before".
        netd: { extraArgs: ['--sweep-interval', '3600'] },
      });
      const { store } = tb;
      const daemons = () => [...tb.daemons.values()].map((n) => n.handle);
      const conf = { cniVersion: '1.0.0', name: 'vpc-a', type: 'netd', vpc: 'a' };

      const version = await tb.plugin('h1', 'VERSION', '', {});
      t.match(version.out, { supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
      t.ok((await tb.plugin('h1', 'STATUS', { ...conf, cniVersion: '1.1.0' }, {})).ok, 'STATUS: ready');

      const made: Array<{ c: TestContainer; host: string; ip: string }> = [];
      for (const [name, host] of [
        ['c1', 'h1'],
        ['c2', 'h2'],
      ] as const) {
        const c = await s.containers.add({ host, name });
        const add = await tb.plugin(host, 'ADD', conf, {
          CNI_CONTAINERID: name,
          CNI_NETNS: c.netnsPath,
          CNI_IFNAME: 'eth1',
        });
        t.ok(add.ok, `ADD ${name}: ${JSON.stringify(add.out)}`);
        t.comment(`ADD ${name} took ${add.ms.toFixed(1)} ms through the plugin`);
        const ips = add.out.ips as Array<{ address: string; interface: number }>;
        t.match(ips[0]?.address, /^10\.5\.0\.\d+\/24$/);
        // Every interface the attachment made: the host end (no sandbox) and the container's.
        const ifaces = add.out.interfaces as Array<{ name: string; mac?: string; sandbox?: string }>;
        t.same(ifaces[0], { name: linkNames.internalPort(`${host}:${name}:eth1`) }, 'the host end first');
        t.match(ifaces[1], { name: 'eth1', sandbox: c.netnsPath, mac: /^02:/ }, "then the container's");
        t.equal(ips[0]?.interface, 1, "the address is on the container's interface");
        const inside = await new IpClient(s.runner, { name: c.netns }).addresses('eth1');
        t.ok(
          inside[0]?.addr_info.some((a) => `${a.local}/${a.prefixlen}` === ips[0]!.address),
          `${name} carries its address`,
        );
        t.notOk(
          inside[0]?.addr_info.some((a) => a.family === 'inet6'),
          `${name}: no IPv6 link-local on an IPv4 VPC's interface`,
        );
        const port = (
          await new IpClient(s.runner, { name: s.cluster.host(host).netns }).addresses(
            linkNames.internalPort(`${host}:${name}:eth1`),
          )
        )[0];
        t.notOk(
          port?.addr_info.some((a) => a.family === 'inet6'),
          `${name}: none on its host port either`,
        );
        made.push({ c, host, ip: ips[0]!.address.split('/')[0]! });
      }
      t.ok(
        await eventually(() => s.probe.ping(made[0]!.c.netns, made[1]!.ip, 500), 20_000),
        'c1 (h1) reaches c2 (h2) over eth1',
      );
      const env1 = { CNI_CONTAINERID: 'c1', CNI_NETNS: made[0]!.c.netnsPath, CNI_IFNAME: 'eth1' };
      t.ok((await tb.plugin('h1', 'CHECK', conf, env1)).ok, 'CHECK');
      const again = await tb.plugin('h1', 'ADD', conf, env1);
      t.match(again.out, { ips: [{ address: `${made[0]!.ip}/24` }] }, 'ADD twice: same address');

      // The bandwidth capability: both limits are in place when ADD answers (no reconcile to wait
      // for), and DEL takes the ifb away with the port.
      {
        const c = await s.containers.add({ host: 'h1', name: 'bw' });
        const e = { CNI_CONTAINERID: 'bw', CNI_NETNS: c.netnsPath, CNI_IFNAME: 'eth1' };
        const bwConf = {
          ...conf,
          capabilities: { bandwidth: true },
          runtimeConfig: {
            bandwidth: {
              ingressRate: 20_000_000,
              ingressBurst: 1_000_000,
              egressRate: 30_000_000,
              egressBurst: 1_000_000,
            },
          },
        };
        t.ok((await tb.plugin('h1', 'ADD', bwConf, e)).ok, 'ADD with the bandwidth capability');
        const port = linkNames.internalPort('h1:bw:eth1');
        const tc = new TcClient(s.runner, { name: s.cluster.host('h1').netns });
        const rateOf = async (dev: string) => (await tc.qdiscs(dev)).find((q) => q.kind === 'tbf')?.options?.rate;
        t.equal(
          await rateOf(port),
          2_500_000,
          'into the container: tbf at 20 Mbit/s (bytes/s) on the host port, at once',
        );
        t.equal(
          await rateOf(linkNames.ifbFor(port)),
          3_750_000,
          'out of the container: tbf at 30 Mbit/s on its ifb, at once',
        );
        t.ok(
          (await tc.qdiscs(port)).some((q) => q.kind === 'ingress'),
          'the port redirects its ingress',
        );
        t.ok((await tb.plugin('h1', 'DEL', bwConf, e)).ok, 'DEL');
        const hostIp = new IpClient(s.runner, { name: s.cluster.host('h1').netns });
        t.equal(await hostIp.link(linkNames.ifbFor(port)), undefined, 'the ifb went with the port');
        await s.containers.remove(c);
      }

      // A VPC's default limits (PATCH /v1/vpcs/{vpc} writes them) re-shape its running interfaces
      // that have no limits of their own; taking them away removes the shaping.
      {
        const tc = new TcClient(s.runner, { name: s.cluster.host('h1').netns });
        const port = linkNames.internalPort('h1:c1:eth1');
        const rateOf = async () => (await tc.qdiscs(port)).find((q) => q.kind === 'tbf')?.options?.rate;
        const vpc = JSON.parse((await store.get(modelKeys.vpc('a')))!.value) as Record<string, unknown>;
        await store.put(modelKeys.vpc('a'), JSON.stringify({ ...vpc, qos: { ingressBps: 8_000_000 } }));
        t.ok(
          await eventually(async () => (await rateOf()) === 1_000_000, 10_000),
          'the VPC default (8 Mbit/s in) shapes the running c1',
        );
        await store.put(modelKeys.vpc('a'), JSON.stringify(vpc));
        t.ok(await eventually(async () => (await rateOf()) === undefined, 10_000), 'and its removal unshapes it');
      }

      // Bad input never reaches the kernel or etcd, and never takes the daemon down.
      const bad: Array<[string, object | string, Record<string, string>, number]> = [
        ['not JSON', '{oops', env1, 6],
        ['no vpc', { cniVersion: '1.0.0', name: 'x', type: 'netd' }, env1, 7],
        ['unknown vpc', { ...conf, vpc: 'nope' }, env1, 7],
        ['old version', { ...conf, cniVersion: '0.2.0' }, env1, 1],
        ['bad ifname', conf, { ...env1, CNI_IFNAME: 'much-too-long-name' }, 4],
        ['missing netns', conf, { ...env1, CNI_NETNS: '' }, 4],
        [
          'netns that does not exist',
          conf,
          { ...env1, CNI_CONTAINERID: 'ghost', CNI_NETNS: '/run/netns/does-not-exist' },
          5,
        ],
      ];
      for (const [what, config, e, code] of bad) {
        const r = await tb.plugin('h1', 'ADD', config, e);
        t.notOk(r.ok, `${what}: refused`);
        t.equal(r.out.code, code, `${what}: CNI code ${code} (${String(r.out.msg)})`);
      }
      const oversized = await tb.plugin('h1', 'ADD', { ...conf, pad: 'x'.repeat(1100 * 1024) }, env1);
      t.match(
        oversized.out,
        { cniVersion: '1.0.0', code: 6, msg: /request over/ },
        'an oversized request: code 6, in its own version',
      );
      t.same(
        (await store.list(modelKeys.endpoints())).kvs.map((kv) => kv.key).sort(),
        ['/netd/v1/endpoints/a/h1:c1:eth1', '/netd/v1/endpoints/a/h2:c2:eth1'],
        'bad ADDs left no record',
      );
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs.length, 2, 'and no address (the failed ADD rolled back)');
      t.ok(
        daemons().every((h) => isRunning(h)),
        'both daemons still run',
      );

      // 500 malformed invocations, generated: each must get a spec error and change nothing.
      let seed = 7;
      const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
      const configs: Array<object | string> = [
        '',
        '{',
        'null',
        '[]',
        '"x"',
        '{"cniVersion":"1.0.0"}',
        'x'.repeat(1100 * 1024),
        { ...conf, cniVersion: '9.0.0' },
        { ...conf, vpc: 'nope' },
        { ...conf, vpc: '../etc' },
        { ...conf, vpc: 12 },
        { ...conf, name: '' },
        { ...conf, runtimeConfig: { bandwidth: { ingressRate: -5 } } },
        { ...conf, runtimeConfig: { ips: ['192.0.2.1/24'] } },
        { ...conf, runtimeConfig: { ips: ['not-an-ip'] } },
        { ...conf, runtimeConfig: { mac: 'zz:zz' } },
        { ...conf, external: true },
      ];
      const envs: Array<Record<string, string>> = [
        {},
        { CNI_CONTAINERID: '' },
        { CNI_CONTAINERID: 'a/b' },
        { CNI_CONTAINERID: 'x'.repeat(300) },
        { CNI_IFNAME: '' },
        { CNI_IFNAME: 'eth1eth1eth1eth1' },
        { CNI_IFNAME: 'a b' },
        { CNI_NETNS: '' },
        { CNI_NETNS: '/run/netns/does-not-exist' },
        { CNI_ARGS: 'broken' },
        { CNI_ARGS: 'IP=999.1.1.1' },
        { CNI_ARGS: 'IP=10.5.0.300' },
      ];
      const baseEnv = { CNI_CONTAINERID: 'fuzz', CNI_NETNS: made[0]!.c.netnsPath, CNI_IFNAME: 'eth9' };
      const before = (await store.list('/netd/')).kvs.map((kv) => `${kv.key}@${kv.modRevision}`).sort();
      const codes = new Map<number, number>();
      let wellFormed = 0;
      for (let i = 0; i < 500; i++) {
        const config = pick(configs);
        const e = { ...baseEnv, ...pick(envs), ...(rand() < 0.5 ? pick(envs) : {}) };
        const r = await tb.plugin('h1', pick(['ADD', 'ADD', 'ADD', 'CHECK', 'FROB']), config, e);
        if (!r.ok && typeof r.out.code === 'number' && typeof r.out.msg === 'string') wellFormed++;
        codes.set(Number(r.out.code), (codes.get(Number(r.out.code)) ?? 0) + 1);
      }
      t.comment(`error codes seen: ${[...codes].map(([c, n]) => `${c}×${n}`).join(' ')}`);
      t.equal(wellFormed, 500, 'all 500 malformed calls failed with a spec error (code and msg) and a non-zero exit');
      t.ok(
        daemons().every((h) => isRunning(h)),
        'no daemon crashed',
      );
      const after = (await store.list('/netd/')).kvs.map((kv) => `${kv.key}@${kv.modRevision}`).sort();
      t.same(after, before, 'etcd is exactly as before');

      for (const m of made) {
        const e = { CNI_CONTAINERID: m.c.name, CNI_NETNS: m.c.netnsPath, CNI_IFNAME: 'eth1' };
        t.ok((await tb.plugin(m.host, 'DEL', conf, e)).ok, `DEL ${m.c.name}`);
        t.ok((await tb.plugin(m.host, 'DEL', conf, e)).ok, `DEL ${m.c.name} twice`);
        await s.containers.remove(m.c);
        t.ok(
          (await tb.plugin(m.host, 'DEL', conf, { ...e, CNI_NETNS: '' })).ok,
          `DEL ${m.c.name} after its netns is gone`,
        );
      }
      t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint left');
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address left');
      for (const h of d.hosts) {
        const ip = new IpClient(s.runner, { name: h.netns });
        t.ok(
          await eventually(
            async () => (await ip.links()).filter((l) => /^n[bxie]/.test(l.ifname)).length === 0,
            10_000,
          ),
          `${h.name}: no netd link left`,
        );
      }
      await tb.stopAll();

      // With the host's daemon down, the plugin answers by itself, in the request's version:
      // STATUS says "plugin not available" (50), ADD "try again later" (11).
      t.match(
        (await tb.plugin('h1', 'STATUS', { ...conf, cniVersion: '1.1.0' })).out,
        { cniVersion: '1.1.0', code: 50 },
        'STATUS with no daemon: code 50 in version 1.1.0',
      );
      const noDaemon = await tb.plugin('h1', 'ADD', conf, env1);
      t.notOk(noDaemon.ok, 'ADD with no daemon fails');
      t.match(noDaemon.out, { cniVersion: '1.0.0', code: 11 }, 'ADD with no daemon: code 11 in version 1.0.0');

      await store.deletePrefix('/netd/v1/');
      t.same(await s.residue(), []);
    });
  },
);
