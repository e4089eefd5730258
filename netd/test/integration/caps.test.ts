import t from 'tap';
import { withCluster } from '../../../test-netns/harness.js';
import { eventually, requireRoot } from '../../../test-netns/testing.js';
import { TcClient } from '../../../sys/tc.js';
import { attachInternal } from '../direct-attach.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { TenantDirectory } from '../../../tenancy/tenants.js';
import { EndpointDirectory } from '../../../tenancy/endpoints.js';
import type { VpcRecord } from '../../../tenancy/records.js';
import { linkNames } from '../../names.js';
import { netdTestbed } from '../netd-hosts.js';
import { iperf } from '../iperf.js';

/**
 * The operator's cap on a tenant, measured with iperf3 at the receiver: it lowers a running
 * interface's higher limit at once, a tenant's request above it is refused (the same directory the
 * API calls), and removing the tenant's own limits leaves the cap in force. Lifting the cap frees it.
 */
t.test("a tenant's cap holds on a running flow whatever the tenant asks (iperf3)", async (t) => {
  if (!requireRoot(t)) return;
  await withCluster({ hosts: 1 }, async (s) => {
    const vpc: VpcRecord = { name: 'capped.a', tenant: 'capped', mode: 'vxlan', cidr: '10.91.0.0/24', vni: 910 };
    const tb = await netdTestbed(t, s, { label: 'caps', vpcs: [vpc], start: false });
    const { store } = tb;
    const tenants = new TenantDirectory(store);
    await tenants.create('capped');
    const deps = tb.attachDeps('h1');
    const src = await s.containers.add({ host: 'h1', name: 'src' });
    const dst = await s.containers.add({ host: 'h1', name: 'dst' });
    const a = await attachInternal(
      { containerId: 'src', ifname: 'eth1', netnsPath: src.netnsPath, vpc: 'capped.a' },
      deps,
    );
    const b = await attachInternal(
      { containerId: 'dst', ifname: 'eth1', netnsPath: dst.netnsPath, vpc: 'capped.a' },
      deps,
    );
    await tb.start();
    t.ok(await eventually(() => s.probe.ping(src.netns, b.allocation.ip, 500), 20_000), 'the two containers talk');

    // Out of the container is shaped on the port's ifb.
    const tc = new TcClient(s.runner, { name: s.cluster.host('h1').netns });
    const ifb = linkNames.ifbFor(linkNames.internalPort(a.endpoint.id));
    const outRate = async () => (await tc.qdiscs(ifb).catch(() => [])).find((q) => q.kind === 'tbf')?.options?.rate;
    const outIs = (mbit: number | undefined) =>
      eventually(async () => (await outRate()) === (mbit === undefined ? undefined : (mbit * 1e6) / 8), 10_000);
    let port = 5301;
    const measureOut = async () =>
      (await iperf(s, src.netns, dst.netns, b.allocation.ip, 3, false, port++)).received / 1e6;
    // Goodput of a shaped direction: 1448/1514 of the rate (segments counted with headers) up to all of it.
    const near = (measured: number, mbit: number) => measured >= mbit * (1448 / 1514) * 0.95 && measured <= mbit * 1.05;

    const endpoints = new EndpointDirectory(store);
    const fullVpc = { ...vpc };
    await endpoints.setQos(fullVpc, a.endpoint.id, { egressBps: 80e6 });
    t.ok(await outIs(80), "the tenant's own 80 Mbit/s out, before any cap");

    await tenants.setCaps('capped', { eth1: { egressBps: 20e6 } });
    t.ok(await outIs(20), 'the cap of 20 Mbit/s lowers the running interface at once');
    const capped = await measureOut();
    t.ok(near(capped, 20), `measured ${capped.toFixed(1)} Mbit/s out under the cap of 20`);

    const cap = (await tenants.get('capped')).caps?.eth1;
    await t.rejects(endpoints.setQos(fullVpc, a.endpoint.id, { egressBps: 30e6 }, cap), { code: 'E_OVER_CAP' });
    await endpoints.setQos(fullVpc, a.endpoint.id, undefined, cap);
    const rec = JSON.parse((await store.get(modelKeys.endpoint(vpc.name, a.endpoint.id)))!.value) as { qos?: object };
    t.equal(rec.qos, undefined, 'the tenant removed its own limits');
    t.ok(await outIs(20), 'the cap stays on the port');
    const stillCapped = await measureOut();
    t.ok(near(stillCapped, 20), `measured ${stillCapped.toFixed(1)} Mbit/s out: still the cap of 20`);

    await tenants.setCaps('capped', {});
    t.ok(await outIs(undefined), 'the operator lifts the cap: unshaped');
    const free = await measureOut();
    t.ok(free > 100, `measured ${free.toFixed(1)} Mbit/s out without a cap`);

    await tb.stopAll();
    await store.deletePrefix('/netd/v1/');
    await s.containers.remove(src);
    await s.containers.remove(dst);
  });
});
