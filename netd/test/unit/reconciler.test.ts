import t from 'tap';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { EndpointRecord } from '../../../tenancy/records.js';
import { eventually } from '../../../test-netns/testing.js';
import { internalPlan } from '../../attach/internal.js';
import { Attacher } from '../../attach/template.js';
import { HostView } from '../../host-view.js';
import { vxlanMode } from '../../modes/vxlan.js';
import { linkNames } from '../../names.js';
import { Reconciler } from '../../reconciler.js';
import { infrastructurePolicy } from '../../daemon.js';
import { PortGuard } from '../../../tagqueue/port-guard.js';
import { NftClient } from '../../../sys/nft.js';
import { fakeHost, H1, OTHER, SELF, VPC } from '../fake-host.js';

/** The reconciler on a fake kernel, fed by a real HostView over an in-memory etcd. */

const REMOTE: EndpointRecord = {
  vpc: VPC.name,
  id: 'h2:r1:eth1',
  host: 'h2',
  ip: '10.20.0.9',
  mac: '02:2a:0a:14:00:09',
  hostIf: linkNames.internalPort('h2:r1:eth1'),
};

async function setup(t: { teardown(fn: () => unknown): void }) {
  const h = await fakeHost();
  await h.store.put(modelKeys.host('h2'), JSON.stringify(OTHER));
  await h.store.put(modelKeys.endpoint(VPC.name, REMOTE.id), JSON.stringify(REMOTE));
  const view = new HostView(SELF, { store: h.store });
  await view.start();
  const reconciler = new Reconciler({ view, runner: h.kernel, netns: H1, modes: [vxlanMode], logger: h.logger });
  t.teardown(async () => {
    await reconciler.stop();
    await view.stop();
    await h.close();
  });
  // A local container attached the way the daemon does it (the view learns of the record).
  const c = h.container();
  const plan = internalPlan({ containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
  const attacher = new Attacher({
    store: h.store,
    ipam: h.ipam,
    runner: h.kernel,
    self: SELF,
    hostNetns: H1,
    claims: reconciler.claims,
    deferred: h.deferred,
    records: view,
    logger: h.logger,
  });
  const done = await attacher.attach(plan);
  return { h, view, reconciler, plan, done, attacher };
}

const mutations = (lines: string[]) => lines.filter((l) => / (add|del|replace|append|set) /.test(l));

t.test('a run builds the VPC on the host from the view; the next run sends nothing', async (t) => {
  const { h, reconciler, plan } = await setup(t);
  await reconciler.converge();
  const host = h.kernel.dump(H1);
  const br = linkNames.bridge(42);
  const vx = linkNames.vxlan(42);
  t.ok(
    host.links.some((l) => l.startsWith(`${br} bridge up`)),
    'the VPC bridge',
  );
  t.ok(
    host.links.some((l) => l.startsWith(`${vx} vxlan up mtu 1450`) && l.includes(`master ${br}`)),
    'its VXLAN device on it',
  );
  t.ok(
    host.links.some((l) => l.startsWith(plan.hostIf) && l.includes(`master ${br}`)),
    'the local port joined it',
  );
  t.same(
    host.fdb.filter((f) => f.includes(vx)).sort(),
    [`00:00:00:00:00:00 dev ${vx} dst 192.0.2.12`, `${REMOTE.mac} dev ${vx} dst 192.0.2.12`].sort(),
    'flood entry and the remote MAC, towards h2',
  );
  t.same(
    host.neighbours.filter((n) => n.includes(vx)),
    [`10.20.0.9 dev ${vx} lladdr ${REMOTE.mac} PERMANENT`],
    'ARP suppression entry',
  );
  const before = h.kernel.commandLines().length;
  await reconciler.converge();
  t.same(mutations(h.kernel.commandLines().slice(before)), [], 'converged: a second run changes nothing');
  t.equal(reconciler.runs, 2);
});

t.test('orphans of ours go, claimed names and other links stay', async (t) => {
  const { h, reconciler } = await setup(t);
  const ip = new IpClient(h.kernel, H1);
  await ip.apply(
    new IpBatch().linkAddVeth('ni0000000001', 'x1').linkAddVeth('ni0000000002', 'x2').linkAddBridge('keepme'),
  );
  const release = reconciler.claims.claim('ni0000000002');
  await reconciler.converge();
  t.equal(await ip.link('ni0000000001'), undefined, 'an unrecorded, unclaimed port is removed');
  t.ok(await ip.link('ni0000000002'), 'a port an ADD has claimed stays');
  t.ok(await ip.link('keepme'), "a link that is not netd's stays");
  release();
  await reconciler.converge();
  t.equal(await ip.link('ni0000000002'), undefined, 'once released, it is an orphan like any other');
});

t.test('rate limits: applied on change only, re-applied after a restart without piling up filters', async (t) => {
  const { h, view, reconciler, plan } = await setup(t);
  const key = modelKeys.endpoint(VPC.name, plan.id);
  const record = JSON.parse((await h.store.get(key))!.value) as EndpointRecord;
  await h.store.put(key, JSON.stringify({ ...record, qos: { ingressBps: 8_000_000, egressBps: 16_000_000 } }));
  t.ok(await eventually(async () => view.localEndpoints()[0]?.qos !== undefined, 2000), 'the view follows the change');
  await reconciler.converge();
  const qdiscs = () => h.kernel.dump(H1).qdiscs;
  const port = plan.hostIf;
  const ifb = linkNames.ifbFor(port);
  t.ok(
    qdiscs().some((q) => q.startsWith(`${port} root stab overhead -14 tbf rate 8000000bit`)),
    'into the container: 8 Mbit/s on the port',
  );
  t.ok(
    qdiscs().some((q) => q.startsWith(`${ifb} root stab overhead -14 tbf rate 16000000bit`)),
    'out of it: 16 Mbit/s on its ifb',
  );
  const before = h.kernel.commandLines().length;
  await reconciler.converge();
  t.notOk(
    h.kernel
      .commandLines()
      .slice(before)
      .some((l) => l.startsWith('tc ')),
    'unchanged limits send no tc command',
  );

  // A restarted daemon does not know what it applied: it applies again, which must be idempotent.
  const restarted = new Reconciler({ view, runner: h.kernel, netns: H1, modes: [vxlanMode], logger: h.logger });
  t.teardown(() => restarted.stop());
  const beforeRestart = h.kernel.commandLines().length;
  await restarted.converge();
  t.equal(qdiscs().filter((q) => q.startsWith(`${port} ingress filter`)).length, 1, 'still one redirect filter');
  t.notOk(
    h.kernel
      .commandLines()
      .slice(beforeRestart)
      .some((l) => l.startsWith('tc qdisc replace') || l.startsWith('tc filter')),
    'it read what the kernel holds and re-sent nothing unchanged',
  );
  await h.store.put(key, JSON.stringify(record));
  t.ok(await eventually(async () => view.localEndpoints()[0]?.qos === undefined, 2000));
  await restarted.converge();
  t.notOk(
    qdiscs().some((q) => q.startsWith(port)),
    'limits removed: the port is unshaped',
  );
});

t.test("wireBridge: one VPC's bridge, VXLAN device, entries and the new port, reading only those links", async (t) => {
  const { h, reconciler, plan } = await setup(t);
  const br = linkNames.bridge(42);
  const vx = linkNames.vxlan(42);
  const before = h.kernel.commandLines().length;
  t.equal(await reconciler.wireBridge(br, plan.hostIf), true, 'the port is on its bridge');
  const ran = h.kernel.commandLines().slice(before);
  t.notOk(
    ran.some((l) => / link show$/.test(l)),
    'no listing of every link',
  );
  t.notOk(
    ran.some((l) => / neigh show$/.test(l)),
    'no listing of every neighbour',
  );
  t.notOk(
    ran.some((l) => / show /.test(l)),
    'an absent bridge is created without reading first',
  );
  const host = h.kernel.dump(H1);
  t.ok(
    host.links.some((l) => l.startsWith(`${vx} vxlan up mtu 1450`) && l.includes(`master ${br}`)),
    'the VXLAN device on the bridge',
  );
  t.ok(
    host.links.some((l) => l.startsWith(plan.hostIf) && l.includes(`master ${br}`)),
    'the port on it',
  );
  t.same(
    host.fdb.filter((f) => f.includes(vx)).sort(),
    [`00:00:00:00:00:00 dev ${vx} dst 192.0.2.12`, `${REMOTE.mac} dev ${vx} dst 192.0.2.12`].sort(),
    'flood entry and the remote MAC',
  );
  t.same(
    host.neighbours.filter((n) => n.includes(vx)),
    [`10.20.0.9 dev ${vx} lladdr ${REMOTE.mac} PERMANENT`],
    'ARP suppression entry',
  );
  t.equal(reconciler.bridgeUp(42), br, 'later ports join the bridge as they are created');

  const again = h.kernel.commandLines().length;
  t.equal(await reconciler.wireBridge(br, plan.hostIf), true);
  await reconciler.converge();
  t.same(mutations(h.kernel.commandLines().slice(again)), [], 'a second wiring and a full run change nothing');
});

t.test('wireBridge: a bridge already there (left by a crash) is read and completed instead', async (t) => {
  const { h, reconciler, plan } = await setup(t);
  const br = linkNames.bridge(42);
  const vx = linkNames.vxlan(42);
  await new IpClient(h.kernel, H1).apply(new IpBatch().linkAddBridge(br, { mtu: 1450, mcastSnooping: false }));
  const before = h.kernel.commandLines().length;
  t.equal(await reconciler.wireBridge(br, plan.hostIf), true, 'the port is on its bridge');
  const ran = h.kernel.commandLines().slice(before);
  t.ok(
    ran.some((l) => l.includes(`link show dev ${br}`)),
    'the refused creation made it read the links',
  );
  const host = h.kernel.dump(H1);
  t.equal(host.links.filter((l) => l.startsWith(`${br} bridge up`)).length, 1, 'one bridge, up');
  t.ok(
    host.links.some((l) => l.startsWith(`${vx} vxlan up mtu 1450`) && l.includes(`master ${br}`)),
    'the VXLAN device on it',
  );
  t.ok(
    host.links.some((l) => l.startsWith(plan.hostIf) && l.includes(`master ${br}`)),
    'the port on it',
  );
  t.equal(host.fdb.filter((f) => f.includes(vx)).length, 2, 'its FDB entries');
  const again = h.kernel.commandLines().length;
  await reconciler.converge();
  t.same(mutations(h.kernel.commandLines().slice(again)), [], 'a full run finds nothing to change');
});

t.test('wireBridge: a bridge the view does not want is left alone; full runs and wirings take turns', async (t) => {
  const { h, reconciler, plan } = await setup(t);
  const before = h.kernel.commandLines().length;
  t.equal(await reconciler.wireBridge(linkNames.bridge(43), plan.hostIf), false, 'no VPC 43 here');
  t.same(mutations(h.kernel.commandLines().slice(before)), [], 'nothing sent');
  // Started together: were they to plan from the same read, both would create the bridge and one fail.
  const [, wired] = await Promise.all([
    reconciler.converge(),
    reconciler.wireBridge(linkNames.bridge(42), plan.hostIf),
  ]);
  t.equal(wired, true);
  t.equal(reconciler.lastError, undefined, 'the full run did not fail');
  t.equal(
    h.kernel.dump(H1).links.filter((l) => l.startsWith(`${linkNames.bridge(42)} bridge`)).length,
    1,
    'one bridge',
  );
});

t.test(
  "the tenant's cap lowers an interface's limits, stays when the tenant removes them, and goes with the cap",
  async (t) => {
    const { h, view, reconciler, plan } = await setup(t);
    const key = modelKeys.endpoint(VPC.name, plan.id);
    const record = JSON.parse((await h.store.get(key))!.value) as EndpointRecord;
    const tenant = (caps?: object) =>
      h.store.put(
        modelKeys.tenant(VPC.tenant),
        JSON.stringify({ name: VPC.tenant, tag: 7, tokenHash: 'x', ...(caps && { caps }) }),
      );
    const port = plan.hostIf;
    const rates = () => {
      const q = h.kernel.dump(H1).qdiscs;
      const rate = (dev: string) => /tbf rate (\d+)bit/.exec(q.find((l) => l.startsWith(`${dev} root`)) ?? '')?.[1];
      return [rate(port), rate(linkNames.ifbFor(port))];
    };
    const settled = async (want: Array<string | undefined>) =>
      eventually(async () => {
        await reconciler.converge();
        return JSON.stringify(rates()) === JSON.stringify(want);
      }, 3000);

    await tenant({ eth1: { ingressBps: 30_000_000, egressBps: 20_000_000 } });
    await h.store.put(key, JSON.stringify({ ...record, qos: { ingressBps: 10_000_000, egressBps: 90_000_000 } }));
    t.ok(await settled(['10000000', '20000000']), 'in: its own 10 (under the cap); out: 90 lowered to the cap of 20');
    await h.store.put(key, JSON.stringify(record));
    t.ok(await settled(['30000000', '20000000']), 'its limits removed: the cap stays in force both ways');
    await tenant({ eth1: { egressBps: 5_000_000 } });
    t.ok(await settled([undefined, '5000000']), 'a new cap applies to the running interface at once');
    await tenant();
    t.ok(await settled([undefined, undefined]), 'no cap, no limits: unshaped');
    t.ok(view.synced);
  },
);

t.test("tagqueue: a run guards this host's eth0 ports from their records and lets go of those gone", async (t) => {
  const h = await fakeHost();
  await h.store.put(modelKeys.host('h2'), JSON.stringify(OTHER));
  const view = new HostView(SELF, { store: h.store });
  await view.start();
  const nft = new NftClient(h.kernel, H1);
  const ports = new PortGuard(nft, h.logger, () => infrastructurePolicy(view, ['192.0.2.1']));
  const reconciler = new Reconciler({ view, runner: h.kernel, netns: H1, modes: [vxlanMode], logger: h.logger, ports });
  t.teardown(async () => {
    await reconciler.stop();
    await view.stop();
    await h.close();
  });
  const set = (name: string) => {
    const line = h.kernel.dump(H1).nft.find((l) => l.startsWith(`set inet tagqueue ${name} `)) ?? '';
    return (/\{ (.*) \}$/.exec(line)?.[1] ?? '').split(', ').filter((x) => x !== '');
  };
  await reconciler.converge();
  t.notOk(
    h.kernel.dump(H1).nft.some((l) => l.startsWith('table inet tagqueue')),
    'no guarded port: no table',
  );

  const id = `${SELF.name}:x1:eth0`;
  const record = {
    id,
    host: SELF.name,
    pool: 'ext',
    ip: '203.0.113.7',
    mac: '02:00:00:00:00:07',
    hostIf: linkNames.externalPort(id),
    containerId: 'x1',
    ifname: 'eth0',
    netns: '/run/netns/x1',
  };
  await h.store.put(modelKeys.external(SELF.name, id), JSON.stringify(record));
  t.ok(await eventually(async () => view.localExternals().length === 1, 2000));
  await reconciler.converge();
  t.same(set('own4'), [`"${record.hostIf}" . 203.0.113.7`], "the port's own address");
  t.same(set('own_mac'), [`"${record.hostIf}" . 02:00:00:00:00:07`]);
  t.same(set('infra4').sort(), ['192.0.2.1/32', '192.0.2.11/32', '192.0.2.12/32'], 'etcd and both hosts');

  await h.store.delete(modelKeys.external(SELF.name, id));
  t.ok(await eventually(async () => view.localExternals().length === 0, 2000));
  await reconciler.converge();
  t.same(set('ports'), [], 'its record gone: its elements too');
});
