import t from 'tap';
import { FakeKernel } from '../../../sys/fake-kernel.js';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { HostRecord } from '../../../tenancy/records.js';
import { eventually } from '../../../test-netns/testing.js';
import { Attacher } from '../../attach/template.js';
import { CniService } from '../../cni/service.js';
import { DeferredStoreWork } from '../../deferred.js';
import { HostView } from '../../host-view.js';
import { vxlanMode } from '../../modes/vxlan.js';
import { linkNames } from '../../names.js';
import { Reconciler } from '../../reconciler.js';
import { SourceGuard } from '../../source-guard.js';
import { NftClient } from '../../../sys/nft.js';
import { Ipam } from '../../../ipam/allocator.js';
import { fakeHost, EXTERNAL_POOL, OTHER, SELF, VPC } from '../fake-host.js';

/** The CNI verbs as the daemon serves them, on fake kernels and an in-memory etcd (two hosts share it). */

async function daemonOn(
  t: { teardown(fn: () => unknown): void },
  h: Awaited<ReturnType<typeof fakeHost>>,
  self: HostRecord,
  kernel: FakeKernel,
) {
  const netns = { name: 'h1' };
  const view = new HostView(self, { store: h.store });
  await view.start();
  const reconciler = new Reconciler({ view, runner: kernel, netns, modes: [vxlanMode], logger: h.logger });
  const attacher = new Attacher({
    store: h.store,
    ipam: new Ipam({ store: h.store, host: self.name }),
    runner: kernel,
    self,
    hostNetns: netns,
    claims: reconciler.claims,
    deferred: new DeferredStoreWork(h.logger, 20),
    records: view,
    logger: h.logger,
  });
  const service = new CniService({
    self,
    store: h.store,
    runner: kernel,
    hostNetns: netns,
    view,
    reconciler,
    attacher,
    external: { pool: EXTERNAL_POOL.name, mode: 'nat' },
    guard: new SourceGuard(new NftClient(kernel, netns), h.logger),
    logger: h.logger,
  });
  t.teardown(async () => {
    await reconciler.stop();
    await view.stop();
  });
  view.onChange(() => reconciler.schedule());
  const call = async (command: string, containerId: string, config: object, extra: Record<string, string> = {}) => {
    const reply = await service.handle(
      {
        CNI_COMMAND: command,
        CNI_CONTAINERID: containerId,
        CNI_IFNAME: 'eth1',
        CNI_NETNS: `/run/netns/${containerId}`,
        ...extra,
      },
      JSON.stringify(config),
    );
    return {
      ok: reply.exitCode === 0,
      out: (reply.stdout.trim() ? JSON.parse(reply.stdout) : {}) as Record<string, unknown>,
    };
  };
  return { view, reconciler, attacher, service, call };
}

const conf = { cniVersion: '1.1.0', name: 'vpc-t.web', type: 'netd', vpc: VPC.name };

t.test('ADD answers with every interface it made; GC needs the list and keeps what it lists', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const d = await daemonOn(t, h, SELF, h.kernel);
  for (const c of ['a1', 'a2', 'a3']) h.container(c);
  const add = await d.call('ADD', 'a1', { ...conf, cniVersion: '1.0.0' });
  t.ok(add.ok, JSON.stringify(add.out));
  t.equal(add.out.cniVersion, '1.0.0', "the request's version");
  t.same(add.out.interfaces, [
    { name: linkNames.internalPort('h1:a1:eth1') },
    { name: 'eth1', mac: (add.out.interfaces as Array<{ mac: string }>)[1]!.mac, sandbox: '/run/netns/a1' },
  ]);
  t.match(add.out.ips, [{ address: /^10\.20\.0\.\d+\/24$/, interface: 1 }]);
  const legacy = await d.call('ADD', 'a2', { ...conf, cniVersion: '0.3.1' });
  t.match(legacy.out.ips, [{ version: '4', interface: 1 }], '0.3.x results carry the IP version');
  t.ok((await d.call('ADD', 'a3', conf)).ok);

  const records = async () => (await h.store.list(modelKeys.vpcEndpoints(VPC.name))).kvs.length;
  for (const bad of [
    {},
    { 'cni.dev/valid-attachments': {} },
    { 'cni.dev/valid-attachments': [{ containerID: 'a1' }] },
  ]) {
    const gc = await d.call('GC', '', { ...conf, ...bad });
    t.equal(gc.out.code, 7, `GC with ${JSON.stringify(bad)}: refused (${String(gc.out.msg)})`);
  }
  t.equal(await records(), 3, 'and nothing was detached');
  const gc = await d.call('GC', '', { ...conf, 'cni.dev/valid-attachments': [{ containerID: 'a1', ifname: 'eth1' }] });
  t.ok(gc.ok, 'GC with a list');
  t.same(
    (await h.store.list(modelKeys.vpcEndpoints(VPC.name))).kvs.map((kv) => kv.key),
    [modelKeys.endpoint(VPC.name, 'h1:a1:eth1')],
    'keeps what it lists, detaches the rest',
  );
});

t.test('two hosts given the same container id: two endpoints, and a DEL on one leaves the other', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const k2 = new FakeKernel().addNetns('h1').addNetns('twin');
  await new IpClient(k2, { name: 'h1' }).apply(new IpBatch().linkAddVeth('up0', 'sw0'));
  const d1 = await daemonOn(t, h, SELF, h.kernel);
  const d2 = await daemonOn(t, h, OTHER, k2);
  h.container('twin');
  const a = await d1.call('ADD', 'twin', conf);
  const b = await d2.call('ADD', 'twin', conf);
  t.ok(a.ok && b.ok);
  const ipOf = (r: { out: Record<string, unknown> }) => (r.out.ips as Array<{ address: string }>)[0]!.address;
  t.not(ipOf(a), ipOf(b), `two addresses: ${ipOf(a)} on h1, ${ipOf(b)} on h2`);
  t.ok((await d2.call('DEL', 'twin', conf)).ok, 'DEL on h2');
  t.ok(await h.store.get(modelKeys.endpoint(VPC.name, 'h1:twin:eth1')), "h1's record stays");
  t.equal(await h.store.get(modelKeys.endpoint(VPC.name, 'h2:twin:eth1')), undefined, "h2's is gone");
  t.ok((await d1.call('CHECK', 'twin', conf)).ok, "and h1's container still checks out");
});

t.test(
  'etcd away: STATUS 50, ADD 11 at once, CHECK and DEL from the view; DEL completes when etcd returns',
  async (t) => {
    const h = await fakeHost();
    t.teardown(() => h.close());
    const d = await daemonOn(t, h, SELF, h.kernel);
    for (const c of ['a1', 'a2', 'a3']) h.container(c);
    t.ok((await d.call('ADD', 'a1', conf)).ok);
    t.ok((await d.call('ADD', 'a2', conf)).ok);
    t.ok((await d.call('STATUS', '', conf)).ok, 'STATUS: ready');
    h.store.setAvailable(false);
    t.ok(await eventually(async () => !d.view.synced, 2000), 'the view notices');
    t.equal((await d.call('STATUS', '', conf)).out.code, 50, 'STATUS: not available');
    const add = await d.call('ADD', 'a3', conf);
    t.equal(add.out.code, 11, 'ADD: try again later');
    t.ok((await d.call('CHECK', 'a1', conf)).ok, 'CHECK from the last known view');
    t.ok((await d.call('DEL', 'a2', conf)).ok, 'DEL succeeds');
    t.notOk(
      h.kernel.dump({ name: 'h1' }).links.some((l) => l.startsWith(linkNames.internalPort('h1:a2:eth1'))),
      'its port is gone',
    );
    h.store.setAvailable(true);
    t.ok(
      await eventually(async () => (await h.store.get(modelKeys.endpoint(VPC.name, 'h1:a2:eth1'))) === undefined, 3000),
      'once etcd is back, its record goes',
    );
    t.ok(await eventually(async () => (await h.ipam.getHandle('h1:a2:eth1')).length === 0, 3000), 'and its address');
    t.ok(await eventually(async () => d.view.synced, 3000));
    t.ok((await d.call('ADD', 'a3', conf)).ok, 'ADD works again');
  },
);

t.test('records an older netd wrote (ids without the host) are still found by DEL, CHECK and GC', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const d = await daemonOn(t, h, SELF, h.kernel);
  h.container('old1');
  h.container('old2');
  // What the previous netd left: a record under "<containerId>:<ifname>" and its port, wired.
  const legacy = async (c: string) => {
    const id = `${c}:eth1`;
    const ip = c === 'old1' ? '10.20.0.50' : '10.20.0.51';
    await h.ipam.allocate({ pool: VPC.name, handle: id, ip, owner: { containerId: c, ifname: 'eth1' } });
    const hostIf = linkNames.internalPort(id);
    await new IpClient(h.kernel, { name: 'h1' }).apply(
      new IpBatch().linkAddVeth(hostIf, 'eth1', { peerNetns: `/run/netns/${c}` }).linkSet(hostIf, { up: true }),
    );
    await new IpClient(h.kernel, { name: c }).apply(
      new IpBatch().linkSet('eth1', { up: true }).addrAdd(`${ip}/24`, 'eth1'),
    );
    const record = {
      vpc: VPC.name,
      id,
      host: 'h1',
      ip,
      mac: '02:00:00:00:00:50',
      hostIf,
      containerId: c,
      ifname: 'eth1',
      netns: `/run/netns/${c}`,
    };
    await h.store.put(modelKeys.endpoint(VPC.name, id), JSON.stringify(record));
    return record;
  };
  const one = await legacy('old1');
  await legacy('old2');
  t.ok(await eventually(async () => d.view.localEndpoints().length === 2, 2000));
  t.ok((await d.call('CHECK', 'old1', conf)).ok, 'CHECK finds the old record');
  const gc = await d.call('GC', '', {
    ...conf,
    'cni.dev/valid-attachments': [
      { containerID: 'old1', ifname: 'eth1' },
      { containerID: 'old2', ifname: 'eth1' },
    ],
  });
  t.ok(gc.ok);
  t.equal((await h.store.list(modelKeys.vpcEndpoints(VPC.name))).kvs.length, 2, 'GC keeps the listed old attachments');
  t.ok((await d.call('DEL', 'old1', conf)).ok, 'DEL');
  t.equal(await h.store.get(modelKeys.endpoint(VPC.name, one.id)), undefined, 'its old record is gone');
  t.same(await h.ipam.getHandle(one.id), [], 'its address released');
  t.notOk(
    h.kernel.dump({ name: 'h1' }).links.some((l) => l.startsWith(one.hostIf)),
    'its port removed',
  );
});

t.test(
  "the first ADD into a VPC on a host wires that VPC's bridge alone; the next joins it as it is made",
  async (t) => {
    const h = await fakeHost();
    t.teardown(() => h.close());
    const d = await daemonOn(t, h, SELF, h.kernel);
    for (const c of ['f1', 'f2', 'f3', 'f4']) h.container(c);
    const br = linkNames.bridge(VPC.vni);
    const onBridge = (id: string) =>
      h.kernel
        .dump({ name: 'h1' })
        .links.some((l) => l.startsWith(linkNames.internalPort(`h1:${id}:eth1`)) && l.includes(`master ${br}`));
    const before = h.kernel.commandLines().length;
    t.ok((await d.call('ADD', 'f1', conf)).ok);
    t.ok(onBridge('f1'), 'on its bridge when the ADD answers');
    t.notOk(
      h.kernel
        .commandLines()
        .slice(before)
        .some((l) => / link show$/.test(l)),
      'without listing every link of the host',
    );
    t.ok((await d.call('ADD', 'f2', conf)).ok);
    t.ok(onBridge('f2'), 'the second port joined the bridge as it was created');

    // Wiring the bridge alone fails: the ADD falls back to a full run and is judged by its own port.
    await d.call('DEL', 'f1', conf);
    await d.call('DEL', 'f2', conf);
    await d.reconciler.converge();
    t.notOk(d.reconciler.bridgeUp(VPC.vni), 'the bridge went with its last port');
    h.kernel.failNext(/ link show dev nb/, {
      stderr: 'RTNETLINK answers: Resource temporarily unavailable',
      exitCode: 2,
    });
    t.ok((await d.call('ADD', 'f3', conf)).ok, 'the ADD still succeeds');
    t.ok(onBridge('f3'), 'on its bridge through the full run');
  },
);
