import t from 'tap';
import { NetdDaemon } from '../../daemon.js';
import { Ipam } from '../../../ipam/allocator.js';
import { modelKeys } from '../../../tenancy/keys.js';
import type { HostRecord } from '../../../tenancy/records.js';
import { fakeHost, H1, SELF } from '../fake-host.js';

t.test(
  "a host whose underlay address lies inside a routed VPC's CIDR starts but serves no routed VPC, and says why",
  async (t) => {
    const host = await fakeHost({
      vpcs: [{ name: 't.r', tenant: 't', mode: 'routed', cidr: '192.0.2.0/25', vni: 9 }],
    });
    const daemon = new NetdDaemon(
      { host: SELF, netns: H1 },
      { store: host.store, runner: host.kernel, ipam: new Ipam({ store: host.store, host: SELF.name }) },
    );
    t.teardown(() => daemon.stop());
    await daemon.start();
    const caps = daemon.capabilities();
    t.same(caps.modes, ['vxlan'], 'vxlan only: no routed, no vlan (no trunk)');
    t.match(caps.refused?.routed, /host h1's underlay address 192\.0\.2\.11 lies inside routed VPC t\.r/);
    const record = JSON.parse((await host.store.get(modelKeys.host('h1')))!.value) as HostRecord;
    t.same(record.modes, ['vxlan'], 'its record says so');
  },
);
