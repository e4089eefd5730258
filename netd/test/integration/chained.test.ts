import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { requireRoot, uniqueSuffix } from '../../../test-netns/testing.js';
import { Podman } from '../../../test-netns/podman.js';
import { IpClient } from '../../../sys/ip.js';
import { TcClient } from '../../../sys/tc.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { linkNames } from '../../names.js';
import { netdTestbed } from '../netd-hosts.js';
import { eventually } from '../../../test-netns/testing.js';

/**
 * The reference plugins chained after netd, run by podman (a runtime nobody here wrote): each
 * finds what it needs in netd's ADD result (the host end of the veth, the container's interface
 * and address). portmap publishes a port on the external network (eth0); tuning sets a sysctl in
 * the container; bandwidth shapes netd's host port; firewall opens the container's address.
 */

const RATE = 8_000_000; // bits/s, given to the reference bandwidth plugin

t.test(
  'portmap, tuning, bandwidth and firewall chained after netd work under podman; podman rm undoes all',
  async (t) => {
    if (!requireRoot(t)) return;
    await withCluster({ hosts: 1 }, async (s) => {
      const { store, bin, stopAll } = await netdTestbed(t, s, {
        label: 'chain',
        vpcs: [{ name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.71.0.0/24', vni: 710 }],
        externalPool: { name: 'ext', cidr: '100.64.0.0/24' },
      });
      const d = s.cluster.description;
      const podman = await Podman.create(s.runner, { pluginDir: bin });
      t.teardown(() => podman.cleanup());
      const bandwidth = {
        type: 'bandwidth',
        ingressRate: RATE,
        ingressBurst: 131072,
        egressRate: RATE,
        egressBurst: 131072,
      };
      podman.addNetwork({
        name: 'ext-chain',
        plugins: [
          { type: 'netd', external: true },
          { type: 'portmap', capabilities: { portMappings: true } },
          { type: 'tuning', sysctl: { 'net.core.somaxconn': '1234' } },
          bandwidth,
          { type: 'firewall', backend: 'iptables' },
        ],
      });
      podman.addNetwork({ name: 'vpc-chain', plugins: [{ type: 'netd', vpc: 'a' }, bandwidth] });

      const h1 = s.cluster.host('h1');
      const name = `tn-chain-${uniqueSuffix()}`;
      t.teardown(() => podman.remove(h1.netns, name).catch(() => undefined));
      await podman.podman(h1.netns, [
        'run',
        '-d',
        '--name',
        name,
        '-p',
        '8080:80',
        '--network',
        'ext-chain:interface_name=eth0',
        '--network',
        'vpc-chain:interface_name=eth1',
        '--ulimit',
        'nofile=10000:10000',
        '--ulimit',
        'nproc=1000:1000',
        podman.image,
        'sh',
        '-c',
        'while true; do echo hello-from-chain | nc -l -p 80; done',
      ]);
      const id = (await podman.podman(h1.netns, ['inspect', '-f', '{{.Id}}', name])).stdout.trim();
      const ext = (await store.list(modelKeys.hostExternals('h1'))).kvs.map(
        (kv) => JSON.parse(kv.value) as { ip: string; hostIf: string },
      );
      t.equal(ext.length, 1, 'netd recorded the eth0');
      const extPort = linkNames.externalPort(`h1:${id}:eth0`);
      const vpcPort = linkNames.internalPort(`h1:${id}:eth1`);
      t.equal(ext[0]?.hostIf, extPort);

      // tuning: the sysctl is set inside the container.
      const somaxconn = (
        await podman.podman(h1.netns, ['exec', name, 'cat', '/proc/sys/net/core/somaxconn'])
      ).stdout.trim();
      t.equal(somaxconn, '1234', 'tuning set net.core.somaxconn in the container');

      // bandwidth: it found netd's host port in the result and shaped it (a tbf at the rate, its own ifb).
      const tc = new TcClient(s.runner, { name: h1.netns });
      for (const port of [extPort, vpcPort]) {
        const tbf = (await tc.qdiscs(port)).find((q) => q.kind === 'tbf');
        t.equal(tbf?.options?.rate, RATE / 8, `bandwidth put a tbf at ${RATE / 1e6} Mbit/s on ${port}`);
      }
      const hostLinks = async () => (await new IpClient(s.runner, { name: h1.netns }).links()).map((l) => l.ifname);
      t.ok(
        (await hostLinks()).some((n) => n.startsWith('bwp')),
        'and its ifb for the egress side',
      );

      // firewall: the container's address is let through.
      const iptables = async (args: string[]) =>
        (await s.runner.run({ argv: ['iptables', ...args], netns: { name: h1.netns } }).catch(() => ({ stdout: '' })))
          .stdout;
      t.match(await iptables(['-S', 'CNI-FORWARD']), ext[0]!.ip, 'firewall: a rule for the container address');

      // portmap: outside reaches h1:8080 and gets the container's answer.
      const fetch = async () =>
        (
          await s.runner
            .run({
              argv: ['busybox', 'nc', '-w', '2', h1.underlayIp, '8080'],
              netns: { name: d.outside.netns },
              stdin: '',
              timeoutMs: 5000,
            })
            .catch(() => ({ stdout: '' }))
        ).stdout;
      t.ok(
        await eventually(async () => (await fetch()).includes('hello-from-chain'), 15_000, 200),
        `portmap: outside got the container's answer from ${h1.underlayIp}:8080`,
      );

      await podman.remove(h1.netns, name);
      t.ok(
        await eventually(async () => !(await hostLinks()).some((n) => /^(n[ieq]|bwp)/.test(n)), 10_000),
        'podman rm: no netd port, no ifb left',
      );
      t.notMatch(await iptables(['-t', 'nat', '-S']), ext[0]!.ip, 'no DNAT rule left for the container');
      t.notMatch(await iptables(['-S', 'CNI-FORWARD']), ext[0]!.ip, 'no firewall rule left for it');
      t.same((await store.list(modelKeys.endpoints())).kvs, [], 'no endpoint record');
      t.same((await store.list(modelKeys.externals())).kvs, [], 'no external record');
      t.same((await store.list('/netd/v1/ipam/handles/')).kvs, [], 'no address');
      await stopAll();
      await store.deletePrefix('/netd/v1/');
      t.same(await s.residue(), []);
    });
  },
);
