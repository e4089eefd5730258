import t from 'tap';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { EndpointRecord, ExternalEndpointRecord } from '../../../tenancy/records.js';
import { internalPlan, macForAddress } from '../../attach/internal.js';
import { externalPlan } from '../../attach/external.js';
import { linkNames } from '../../names.js';
import { proxyClaim } from '../../port-claims.js';
import { fakeHost, EXTERNAL_POOL, H1, SELF, VPC } from '../fake-host.js';

/** The attachment template on a fake kernel: what an ADD leaves, what a failure takes back. */

t.test('eth1: one ADD wires the pair, the address, the MAC that follows it, the record and the handle', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const c = h.container();
  const plan = internalPlan({ containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
  const done = await h.attacher.attach(plan);
  t.equal(plan.id, 'h1:c1:eth1', 'the endpoint id names the host');
  t.match(done.allocation.cidr, /^10\.20\.0\.\d+\/24$/);
  const mac = macForAddress(42, done.allocation.ip);
  const host = h.kernel.dump(H1);
  t.ok(
    host.links.some(
      (l) =>
        l.startsWith(`${plan.hostIf} veth up mtu 1450`) &&
        l.includes('addrgenmode none') &&
        l.endsWith(`peer eth1@${c.name}`),
    ),
    'host end up, MTU 1500 - 50, no IPv6 link-local',
  );
  const inside = h.kernel.dump(c.name);
  t.ok(
    inside.links.some((l) => l === `eth1 veth up mtu 1450 address ${mac} addrgenmode none peer ${plan.hostIf}@h1`),
    `container end: its final MAC ${mac} before it came up`,
  );
  t.same(inside.addresses, [`eth1 ${done.allocation.cidr}`]);
  const record = JSON.parse((await h.store.get(modelKeys.endpoint(VPC.name, plan.id)))!.value) as EndpointRecord;
  t.match(record, {
    id: 'h1:c1:eth1',
    host: 'h1',
    vpc: VPC.name,
    ip: done.allocation.ip,
    mac,
    hostIf: plan.hostIf,
    netns: c.netnsPath,
  });
  t.equal((await h.ipam.getHandle(plan.id)).length, 1, 'the address is held by the endpoint id');
  t.notOk(done.joinedBridge, 'no bridge was up: the reconciler puts the port on it');
  t.equal(await h.attacher.whyNotWired(record), undefined, 'the one wired-check says complete');

  // ADD again (a runtime retry): the attachment is returned as it is, and nothing is created.
  const before = h.kernel.commandLines().length;
  const again = await h.attacher.attach(plan);
  t.ok(again.existing);
  t.equal(again.allocation.ip, done.allocation.ip);
  t.notOk(
    h.kernel
      .commandLines()
      .slice(before)
      .some((l) => / (add|del|replace) /.test(l)),
    'a repeated ADD changes nothing in the kernel',
  );
});

t.test('a failing container side takes back everything this ADD did: port, ifb, record, address', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const c = h.container();
  h.kernel.failLine(/^ip addr add 10\.20\.0\./, { stderr: 'RTNETLINK answers: Permission denied' });
  const plan = internalPlan(
    { containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC, qos: { egressBps: 10_000_000 } },
    SELF,
    undefined,
  );
  await t.rejects(h.attacher.attach(plan), { code: 'E_COMMAND_FAILED' });
  t.notOk(
    h.kernel.dump(H1).links.some((l) => /^n[iq]/.test(l)),
    'no port and no ifb left',
  );
  t.same(h.kernel.dump(c.name).links, ['lo loopback down mtu 65536'], 'nothing in the container');
  t.equal(await h.store.get(modelKeys.endpoint(VPC.name, plan.id)), undefined, 'no record');
  t.same(await h.ipam.getHandle(plan.id), [], 'no address held');
  t.same([...h.claims.names()], [], 'no claim left');
});

t.test('detach is idempotent; while etcd is away the kernel side goes at once and etcd follows later', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const c = h.container();
  const plan = internalPlan({ containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
  const done = await h.attacher.attach(plan);
  const spec = { id: plan.id, recordKey: plan.recordKey, hostIf: plan.hostIf, pool: VPC.name };

  h.store.setAvailable(false);
  await h.attacher.detach(spec);
  t.notOk(
    h.kernel.dump(H1).links.some((l) => l.startsWith(plan.hostIf)),
    'the port is gone at once',
  );
  t.same(h.deferred.pending(), [plan.id], 'its etcd side waits');
  h.store.setAvailable(true);
  t.ok(await h.store.get(plan.recordKey), 'the record is still there while it waits');
  t.same(
    (await h.ipam.getHandle(plan.id)).map((x) => x.ip),
    [done.allocation.ip],
    'and so is the address',
  );

  // An ADD of the same endpoint settles the wait first (so a late release cannot free its address).
  const again = await h.attacher.attach(plan);
  t.same(h.deferred.pending(), []);
  t.notOk(again.existing, 'a fresh attachment');
  t.same((await h.ipam.getHandle(plan.id)).length, 1);
  await h.attacher.detach(spec);
  await h.attacher.detach(spec);
  t.equal(await h.store.get(plan.recordKey), undefined, 'DEL twice: no record');
  t.same(await h.ipam.getHandle(plan.id), [], 'no address');
});

t.test('eth0 routed: the uplink answers for the address; a failure takes the proxy entry back', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const hostIp = new IpClient(h.kernel, H1);
  const plan = (name: string, netnsPath: string) =>
    externalPlan(
      { containerId: name, ifname: 'eth0', netnsPath },
      { self: SELF, pool: EXTERNAL_POOL.name, mode: 'routed', runner: h.kernel, hostNetns: H1, hostIp },
    );
  const c = h.container();
  const p = plan('c1', c.netnsPath);
  const done = await h.attacher.attach(p);
  const ip = done.allocation.ip;
  t.same(await hostIp.proxyNeighbours('up0'), [ip], 'proxy entry for the address on the uplink');
  t.ok(h.kernel.dump(H1).routes.includes(`${ip} dev ${p.hostIf} scope link`), '/32 host route');
  t.ok(
    h.kernel.dump(c.name).routes.some((r) => r.startsWith('default via 169.254.1.1 dev eth0')),
    'default via the link-local gateway',
  );
  t.equal(h.kernel.sysctl(`net.ipv4.neigh.${p.hostIf}.proxy_delay`, H1), '0', 'the gateway answers ARP at once');
  const record = JSON.parse((await h.store.get(p.recordKey))!.value) as ExternalEndpointRecord;
  t.equal(record.id, 'h1:c1:eth0');

  const c2 = h.container();
  h.kernel.failLine(/^ip route replace default/, { stderr: 'RTNETLINK answers: Network is unreachable' });
  await t.rejects(h.attacher.attach(plan('c2', c2.netnsPath)));
  t.same(await hostIp.proxyNeighbours('up0'), [ip], "the failed ADD's proxy entry is gone, the first one stays");
  t.notOk(h.claims.has(proxyClaim(ip)), 'no claim left');
});

t.test('whyNotWired names what is missing', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const c = h.container();
  const plan = internalPlan({ containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
  const { record } = await h.attacher.attach(plan);
  await new IpClient(h.kernel, { name: c.name }).apply(new IpBatch().addrDel(`${record.ip}/24`, 'eth1'));
  t.equal(await h.attacher.whyNotWired(record), 'container interface incomplete');
  h.kernel.removeNetns(c.name);
  t.equal(await h.attacher.whyNotWired(record), 'no host port', 'the netns took the pair with it');
  t.equal(await h.attacher.whyNotWired({ ...record, hostIf: linkNames.internalPort('nope') }), 'no host port');
  t.equal(await h.attacher.whyNotWired({ ...record, netns: undefined }), 'no netns recorded');
});

t.test('an interface name the container already uses: a plain error, nothing left behind', async (t) => {
  const h = await fakeHost();
  t.teardown(() => h.close());
  const c = h.container();
  await new IpClient(h.kernel, { path: c.netnsPath }).apply(new IpBatch().linkAddVeth('eth1', 'theirs', {}));
  const plan = internalPlan({ containerId: 'c1', ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
  await t.rejects(h.attacher.attach(plan), {
    code: 'E_ALREADY_EXISTS',
    message: /already has an interface named eth1/,
  });
  t.notOk(
    h.kernel.dump(H1).links.some((l) => l.startsWith(plan.hostIf)),
    'no host port left',
  );
  t.same(await h.ipam.getHandle(plan.id), [], 'no address held');
  t.notOk(await h.store.get(modelKeys.endpoint(VPC.name, plan.id)), 'no record');
  t.ok(
    h.kernel.dump(c.name).links.some((l) => l.startsWith('eth1 veth')),
    "the container's own eth1 is untouched",
  );
});
