import t from 'tap';
import { mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withCluster } from '../../../test-netns/harness.js';
import { ipamEtcdConfig } from '../../../test-netns/etcd-cluster.js';
import { requireRoot } from '../../../test-netns/testing.js';
import { installCniPlugin } from '../../../sys/cni-install.js';
import { IpClient } from '../../../sys/ip.js';
import { isCommandError, type CommandRunner } from '../../../sys/runner.js';
import { EtcdStore } from '../../../store/etcd.js';
import { Ipam } from '../../allocator.js';
import { endpointId } from '../../../tenancy/records.js';

const PLUGIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'netd-ipam.js');
const REFERENCE = '/usr/lib/cni';

interface Invocation {
  runner: CommandRunner;
  hostNetns: string;
  binDir: string;
}

/** Runs a CNI plugin the way a runtime on that host would: in the host's netns, config on stdin. */
async function cni(
  inv: Invocation,
  plugin: string,
  command: string,
  config: object,
  env: Record<string, string>,
): Promise<{ ok: boolean; out: unknown }> {
  try {
    const { stdout } = await inv.runner.run({
      argv: [join(inv.binDir, plugin)],
      stdin: JSON.stringify(config),
      netns: { name: inv.hostNetns },
      env: { CNI_COMMAND: command, CNI_PATH: inv.binDir, ...env },
      timeoutMs: 30_000,
    });
    return { ok: true, out: stdout.trim() ? JSON.parse(stdout) : undefined };
  } catch (err) {
    if (isCommandError(err)) return { ok: false, out: err.stdout.trim() ? JSON.parse(err.stdout) : err.stderr };
    throw err;
  }
}

t.test(
  'netd-ipam driven by the reference bridge plugin wires a container; DEL twice succeeds; GC releases what the runtime no longer lists',
  async (t) => {
    if (!requireRoot(t)) return;
    const binDir = mkdtempSync(join(tmpdir(), 'cni-bin-'));
    t.teardown(() => rmSync(binDir, { recursive: true, force: true }));
    installCniPlugin({ binDir, type: 'netd-ipam', script: PLUGIN });
    for (const p of ['bridge', 'loopback']) symlinkSync(join(REFERENCE, p), join(binDir, p));

    await withCluster({ hosts: 1 }, async ({ cluster, containers, probe, runner, residue }) => {
      const d = cluster.description;
      const h1 = cluster.host('h1');
      const store = new EtcdStore(d.etcd.client);
      t.teardown(() => store.close());
      const ipam = new Ipam({ store, host: 'h1' });
      await ipam.createPool({ name: 'vpc1', cidr: '10.30.0.0/24', kind: 'vpc' });
      const inv = { runner, hostNetns: h1.netns, binDir };
      const conf = (version: string) => ({
        cniVersion: version,
        name: 'vpc1',
        type: 'bridge',
        bridge: 'cni-vpc1',
        isGateway: true,
        ipam: { type: 'netd-ipam', pool: 'vpc1', host: 'h1', etcd: ipamEtcdConfig(d) },
      });

      // Two "containers": bare namespaces, as a runtime would create them.
      const c1 = await containers.add({ host: 'h1', name: 'c1' });
      await new IpClient(runner, { name: c1.netns }).deleteLinkIfExists('eth0'); // the plugin makes eth0
      const env1 = { CNI_CONTAINERID: 'c1', CNI_NETNS: c1.netnsPath, CNI_IFNAME: 'eth0' };
      const add = await cni(inv, 'bridge', 'ADD', conf('1.0.0'), env1);
      t.ok(add.ok, `ADD succeeded: ${JSON.stringify(add.out)}`);
      const result = add.out as { ips: Array<{ address: string; gateway: string }> };
      const address = result.ips[0]!.address;
      t.match(address, /^10\.30\.0\.\d+\/24$/);
      t.equal(result.ips[0]!.gateway, '10.30.0.1');
      const inside = await new IpClient(runner, { name: c1.netns }).addresses('eth0');
      t.ok(
        inside[0]?.addr_info.some((a) => `${a.local}/${a.prefixlen}` === address),
        'the container has the address',
      );
      t.ok(await probe.ping(c1.netns, '10.30.0.1'), 'and reaches its gateway on the bridge');
      t.same(
        (await ipam.getHandle(endpointId({ host: 'h1', containerId: 'c1', ifname: 'eth0' }))).map((h) => h.ip),
        [address.split('/')[0]],
        'etcd records the owner',
      );

      const again = await cni(inv, 'netd-ipam', 'ADD', conf('1.0.0'), env1);
      t.same(
        (again.out as { ips: Array<{ address: string }> }).ips[0]!.address,
        address,
        'ADD twice (same handle): same address',
      );

      const check = await cni(inv, 'bridge', 'CHECK', { ...conf('1.0.0'), prevResult: add.out }, env1);
      t.ok(check.ok, `CHECK passes: ${JSON.stringify(check.out)}`);

      t.ok((await cni(inv, 'bridge', 'DEL', conf('1.0.0'), env1)).ok, 'DEL');
      t.ok((await cni(inv, 'bridge', 'DEL', conf('1.0.0'), env1)).ok, 'DEL twice');
      t.same(
        await ipam.getHandle(endpointId({ host: 'h1', containerId: 'c1', ifname: 'eth0' })),
        [],
        'address released',
      );
      await containers.remove(c1);
      t.ok((await cni(inv, 'bridge', 'DEL', conf('1.0.0'), env1)).ok, 'DEL after the netns is gone');

      // GC (CNI 1.1.0; the reference plugins predate it, so the runtime calls netd-ipam directly).
      const c2 = await containers.add({ host: 'h1', name: 'c2' });
      await new IpClient(runner, { name: c2.netns }).deleteLinkIfExists('eth0');
      const env2 = { CNI_CONTAINERID: 'c2', CNI_NETNS: c2.netnsPath, CNI_IFNAME: 'eth0' };
      t.ok((await cni(inv, 'bridge', 'ADD', conf('1.0.0'), env2)).ok);
      const gcKeep = await cni(
        inv,
        'netd-ipam',
        'GC',
        { ...conf('1.1.0'), 'cni.dev/valid-attachments': [{ containerID: 'c2', ifname: 'eth0' }] },
        {},
      );
      t.ok(gcKeep.ok);
      t.equal(
        (await ipam.getHandle(endpointId({ host: 'h1', containerId: 'c2', ifname: 'eth0' }))).length,
        1,
        'a listed attachment is kept',
      );
      const gc = await cni(inv, 'netd-ipam', 'GC', { ...conf('1.1.0'), 'cni.dev/valid-attachments': [] }, {});
      t.ok(gc.ok, `GC: ${JSON.stringify(gc.out)}`);
      t.same(
        await ipam.getHandle(endpointId({ host: 'h1', containerId: 'c2', ifname: 'eth0' })),
        [],
        'GC released the attachment the runtime no longer lists',
      );
      await containers.remove(c2);

      const status = await cni(inv, 'netd-ipam', 'STATUS', conf('1.1.0'), {});
      t.ok(status.ok, 'STATUS: available');
      const unknownPool = await cni(
        inv,
        'netd-ipam',
        'STATUS',
        { ...conf('1.1.0'), ipam: { ...conf('1.1.0').ipam, pool: 'nope' } },
        {},
      );
      t.match(unknownPool.out, { code: 50 }, 'STATUS of a missing pool: code 50');

      await ipam.deletePool('vpc1');
      t.same(await residue(), []);
    });
  },
);

t.test('netd-ipam answers bad input with spec errors and writes nothing', async (t) => {
  if (!requireRoot(t)) return;
  const binDir = mkdtempSync(join(tmpdir(), 'cni-bin-'));
  t.teardown(() => rmSync(binDir, { recursive: true, force: true }));
  installCniPlugin({ binDir, type: 'netd-ipam', script: PLUGIN });
  await withCluster({ hosts: 1 }, async ({ cluster, runner, residue }) => {
    const d = cluster.description;
    const inv = { runner, hostNetns: cluster.host('h1').netns, binDir };
    const good = {
      cniVersion: '1.0.0',
      name: 'n',
      type: 'bridge',
      ipam: { type: 'netd-ipam', pool: 'p', host: 'h1', etcd: ipamEtcdConfig(d) },
    };
    const env = { CNI_CONTAINERID: 'c', CNI_NETNS: '/run/netns/none', CNI_IFNAME: 'eth0' };
    const cases: Array<[string, object, Record<string, string>, number]> = [
      ['missing CNI_COMMAND', good, { CNI_COMMAND: '' }, 4],
      ['bad container id', good, { ...env, CNI_CONTAINERID: '../x' }, 4],
      ['bad ifname', good, { ...env, CNI_IFNAME: 'x'.repeat(20) }, 4],
      ['unknown version', { ...good, cniVersion: '9.9.9' }, env, 1],
      ['no pool', { ...good, ipam: { type: 'netd-ipam' } }, env, 7],
      ['unknown pool', good, env, 7],
      ['bad endpoints', { ...good, ipam: { ...good.ipam, etcdEndpoints: ['ftp://x'] } }, env, 7],
      ['GC before 1.1.0', good, { CNI_COMMAND: 'GC' }, 1],
    ];
    for (const [what, config, extra, code] of cases) {
      const r = await cni(inv, 'netd-ipam', 'ADD', config, { ...env, ...extra }).catch((e: unknown) => ({
        ok: false,
        out: String(e),
      }));
      t.notOk(r.ok, `${what}: fails`);
      t.match(r.out, { code }, `${what}: CNI code ${code}`);
    }
    const badJson = await runner
      .run({
        argv: [join(binDir, 'netd-ipam')],
        stdin: '{not json',
        netns: { name: cluster.host('h1').netns },
        env: { CNI_COMMAND: 'ADD', ...env },
      })
      .then(
        () => undefined,
        (e: unknown) => (isCommandError(e) ? JSON.parse(e.stdout) : e),
      );
    t.match(badJson, { code: 6 }, 'bad JSON: decode failure');
    t.same(await residue(), [], 'nothing written');
  });
});
