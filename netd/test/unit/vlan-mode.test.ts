import t from 'tap';
import { createVlanMode } from '../../modes/vlan.js';
import { OvsTransaction } from '../../../sys/ovs.js';
import type { HostSnapshot } from '../../model.js';
import type { EndpointRecord, VpcRecord } from '../../../tenancy/records.js';

const self = { name: 'h1', underlayIp: '10.77.0.11', uplink: 'uplink', underlayMtu: 1500 };
const vpc = (name: string, mode: VpcRecord['mode'], extra: Partial<VpcRecord> = {}): VpcRecord => ({
  name,
  tenant: 't',
  mode,
  cidr: '10.0.0.0/24',
  vni: 7,
  ...extra,
});
const ep = (id: string, vpcName: string, host: string): EndpointRecord => ({
  vpc: vpcName,
  id,
  host,
  ip: '10.0.0.2',
  mac: '02:00:00:00:00:02',
  hostIf: `ni${id}`,
});

t.test('vlan mode renders only local ports of vlan VPCs, each with its VPC tag, on no Linux bridge', async (t) => {
  const view = {
    self,
    vpcs: new Map([
      ['t.a', vpc('t.a', 'vlan', { vlan: 101, physnet: 'physnet0' })],
      ['t.b', vpc('t.b', 'vxlan')],
    ]),
    hosts: new Map(),
    endpoints: [ep('aa01', 't.a', 'h1'), ep('aa02', 't.a', 'h2'), ep('bb01', 't.b', 'h1')],
  } as unknown as HostSnapshot;
  let physnet: string | undefined = 'physnet0';
  const vlanMode = createVlanMode(() => physnet);
  const d = vlanMode.render(view);
  t.same([...d.ovsPorts], [['niaa01', 101]], "h1's port of t.a only; h2's and the vxlan VPC's are not vlan's");
  t.same([...d.ports], [['niaa01', '']], 'kept (not an orphan), on no bridge');
  t.equal(d.bridges.size + d.vxlans.size + d.fdb.size, 0, 'nothing per VPC or per remote endpoint');

  physnet = 'elsewhere';
  const moved = vlanMode.render(view);
  t.same([...moved.ovsPorts], [], 'on a trunk moved to another physical network, no port keeps its tag');
  t.same([...moved.ports], [['niaa01', '']], 'but the link stays (its record stands)');
  physnet = undefined;
  t.same([...vlanMode.render(view).ports], [['niaa01', '']], 'nor is it removed while vlan is not set up');
  physnet = 'physnet0';

  const bad = { ...view, vpcs: new Map([['t.a', vpc('t.a', 'vlan', { vlan: 5000 })]]) } as unknown as HostSnapshot;
  t.throws(() => vlanMode.render(bad), { code: 'E_INVALID_INPUT' }, 'a VLAN id outside 1..4094 is refused');
});

t.test('an OVS transaction is one ovs-vsctl: commands joined by --, names and tags checked', async (t) => {
  const tx = new OvsTransaction().addPort('br-netd', 'ni01', 101).setTag('ni02', 7).deletePort('br-netd', 'ni03');
  t.same(tx.args(), [
    '--may-exist',
    'add-port',
    'br-netd',
    'ni01',
    '--',
    'set',
    'port',
    'ni01',
    'tag=101',
    '--',
    'set',
    'port',
    'ni02',
    'tag=7',
    '--',
    '--if-exists',
    'del-port',
    'br-netd',
    'ni03',
  ]);
  t.throws(() => new OvsTransaction().setTag('ni01', 0), { code: 'E_INVALID_INPUT' });
  t.throws(() => new OvsTransaction().setTag('ni01', 4095), { code: 'E_INVALID_INPUT' });
  t.throws(() => new OvsTransaction().addPort('br-netd', 'x; rm -rf /'), { code: 'E_INVALID_INPUT' });
  t.ok(new OvsTransaction().empty);
});
