import { FakeKernel } from '../../sys/fake-kernel.js';
import { IpBatch, IpClient } from '../../sys/ip.js';
import { silentLogger } from '../../sys/log.js';
import { MemoryStore } from '../../store/memory.js';
import { Ipam } from '../../ipam/allocator.js';
import { modelKeys } from '../../tenancy/keys.js';
import type { HostRecord, VpcRecord } from '../../tenancy/records.js';
import { Attacher } from '../attach/template.js';
import { DeferredStoreWork } from '../deferred.js';
import { PortClaims } from '../port-claims.js';

/**
 * One host of netd on a fake kernel and an in-memory etcd, for unit tests of the ADD path, the
 * reconciler and the CNI verbs without root: the host's namespace "h1" with an uplink, container
 * namespaces made on demand, a VPC "t.web" (10.20.0.0/24, VNI 42) and an external pool.
 */

export const SELF: HostRecord = { name: 'h1', underlayIp: '192.0.2.11', uplink: 'up0', underlayMtu: 1500 };
export const OTHER: HostRecord = { name: 'h2', underlayIp: '192.0.2.12', uplink: 'up0', underlayMtu: 1500 };
export const VPC: VpcRecord = { name: 't.web', tenant: 't', mode: 'vxlan', cidr: '10.20.0.0/24', vni: 42 };
export const EXTERNAL_POOL = { name: 'ext', cidr: '203.0.113.0/24' };
export const H1 = { name: 'h1' };

export async function fakeHost(opts: { vpcs?: VpcRecord[] } = {}) {
  const kernel = new FakeKernel().addNetns('h1');
  // The uplink: a veth whose peer stands for the underlay switch.
  await new IpClient(kernel, H1).apply(
    new IpBatch().linkAddVeth('up0', 'sw0').linkSet('up0', { up: true }).addrAdd('192.0.2.11/24', 'up0'),
  );
  const store = new MemoryStore();
  const admin = new Ipam({ store, host: 'admin' });
  for (const v of opts.vpcs ?? [VPC]) {
    await store.put(modelKeys.vpc(v.name), JSON.stringify(v));
    await admin.createPool({ name: v.name, cidr: v.cidr, kind: 'vpc' });
  }
  await admin.createPool({ ...EXTERNAL_POOL, kind: 'external' });
  const ipam = new Ipam({ store, host: SELF.name });
  const logger = silentLogger();
  const claims = new PortClaims();
  const deferred = new DeferredStoreWork(logger, 20);
  const attacher = new Attacher({ store, ipam, runner: kernel, self: SELF, hostNetns: H1, claims, deferred, logger });
  let containers = 0;
  return {
    kernel,
    store,
    ipam,
    claims,
    deferred,
    attacher,
    logger,
    /** A container's namespace (/run/netns/NAME). */
    container(name = `c${++containers}`): { name: string; netnsPath: string } {
      kernel.addNetns(name);
      return { name, netnsPath: `/run/netns/${name}` };
    },
    async close() {
      deferred.stop();
      await store.close();
    },
  };
}
