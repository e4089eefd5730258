import t from 'tap';
import { IpBatch, IpClient } from '../../../sys/ip.js';
import { modelKeys } from '../../../tenancy/keys.js';
import { internalPlan } from '../../attach/internal.js';
import { Attacher } from '../../attach/template.js';
import { HostView } from '../../host-view.js';
import { recoverLocalAttachments } from '../../recovery.js';
import { fakeHost, H1, SELF, VPC } from '../fake-host.js';

/** What a restarted daemon settles before it serves CNI again, on a fake kernel and an in-memory etcd. */

t.test(
  'recovery keeps complete attachments, removes broken ones with record and address, releases addresses no record names',
  async (t) => {
    const h = await fakeHost();
    const view = new HostView(SELF, { store: h.store });
    await view.start();
    t.teardown(async () => {
      await view.stop();
      await h.close();
    });
    const attacher = new Attacher({
      store: h.store,
      ipam: h.ipam,
      runner: h.kernel,
      self: SELF,
      hostNetns: H1,
      claims: h.claims,
      deferred: h.deferred,
      records: view,
      logger: h.logger,
    });
    const attach = async (containerId: string) => {
      const c = h.container(containerId);
      const plan = internalPlan({ containerId, ifname: 'eth1', netnsPath: c.netnsPath, vpc: VPC }, SELF, undefined);
      return { c, plan, done: await attacher.attach(plan) };
    };
    const kept = await attach('k1');
    const gone = await attach('g1');
    const broken = await attach('b1');
    // g1's container went while netd was down: its namespace, and the veth with it.
    await h.kernel.run({ argv: ['ip', 'netns', 'del', gone.c.name] });
    // b1's wiring stopped halfway: its address never reached the container side.
    await new IpClient(h.kernel, { path: broken.c.netnsPath }).apply(
      new IpBatch().addrDel(broken.done.allocation.cidr, 'eth1'),
    );
    // An ADD that died between its address and its record.
    const orphan = await h.ipam.allocate({ pool: VPC.name, handle: 'h1:o1:eth1', owner: { containerId: 'o1' } });

    const report = await recoverLocalAttachments({ view, attacher, ipam: h.ipam, logger: h.logger });

    t.equal(report.kept, 1, 'one attachment was complete');
    t.same([...report.removed].sort(), [broken.plan.id, gone.plan.id].sort(), 'the two broken ones were removed');
    t.same(report.releasedAddresses, [`${VPC.name}/${orphan.ip}`], 'the address without a record was released');

    const host = h.kernel.dump(H1);
    t.ok(
      host.links.some((l) => l.startsWith(kept.plan.hostIf)),
      "the complete one's port stays",
    );
    t.notOk(
      host.links.some((l) => l.startsWith(broken.plan.hostIf) || l.startsWith(gone.plan.hostIf)),
      "the broken ones' ports are gone",
    );
    t.ok(await h.store.get(modelKeys.endpoint(VPC.name, kept.plan.id)), 'its record stays');
    for (const { plan } of [gone, broken]) {
      t.equal(await h.store.get(modelKeys.endpoint(VPC.name, plan.id)), undefined, `${plan.id}: record deleted`);
      t.same(await h.ipam.getHandle(plan.id), [], `${plan.id}: address released`);
    }
    t.same(await h.ipam.getHandle('h1:o1:eth1'), [], 'the orphan address is free');
    t.equal((await h.ipam.getHandle(kept.plan.id)).length, 1, 'the complete one keeps its address');

    const again = await recoverLocalAttachments({ view, attacher, ipam: h.ipam, logger: h.logger });
    t.same(again, { kept: 1, removed: [], releasedAddresses: [] }, 'a second pass finds nothing more to do');
  },
);
