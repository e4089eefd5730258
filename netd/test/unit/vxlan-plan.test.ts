import t from 'tap';
import { vxlanMode } from '../../modes/vxlan.js';
import { plan, isEmptyPlan } from '../../dataplane.js';
import { emptyDesired } from '../../modes/mode.js';
import { linkNames, OWNED_LINK_RE } from '../../names.js';
import type { EndpointRecord, HostRecord, VpcRecord } from '../../../tenancy/records.js';
import { ErrorCodes } from '../../../core/errors.js';

const hosts = new Map<string, HostRecord>([
  ['h1', { name: 'h1', underlayIp: '10.77.0.11', uplink: 'uplink', underlayMtu: 1500 }],
  ['h2', { name: 'h2', underlayIp: '10.77.0.12', uplink: 'uplink', underlayMtu: 1500 }],
  ['h3', { name: 'h3', underlayIp: '10.77.0.13', uplink: 'uplink', underlayMtu: 1500 }],
]);
const vpcs = new Map<string, VpcRecord>([
  ['a', { name: 'a', tenant: 't1', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 100 }],
  ['b', { name: 'b', tenant: 't2', mode: 'vxlan', cidr: '10.0.0.0/24', vni: 200, mtu: 1400 }],
]);
const ep = (id: string, vpc: string, host: string, mac: string): EndpointRecord => ({
  id,
  vpc,
  host,
  mac,
  ip: `10.0.0.${parseInt(mac.slice(-2), 16) + 10}`,
  hostIf: linkNames.internalPort(id),
});

t.test('render: devices only for VPCs with local endpoints, FDB towards remote ones', async (t) => {
  const endpoints = [
    ep('x', 'a', 'h1', '02:00:00:00:00:01'),
    ep('y', 'a', 'h2', '02:00:00:00:00:02'),
    ep('z', 'a', 'h3', '02:00:00:00:00:03'),
    ep('w', 'b', 'h2', '02:00:00:00:00:04'),
  ];
  const d = vxlanMode.render({ self: hosts.get('h1')!, hosts, vpcs, endpoints });
  t.same([...d.bridges.keys()], ['nb64'], 'VPC b has no endpoint here: no devices');
  t.same(d.vxlans.get('nx64'), {
    name: 'nx64',
    vni: 100,
    local: '10.77.0.11',
    dev: 'uplink',
    mtu: 1450,
    master: 'nb64',
    proxy: true,
  });
  t.same([...d.ports], [[linkNames.internalPort('x'), 'nb64']]);
  t.same([...d.fdb.values()].map((f) => `${f.mac}>${f.dst}`).sort(), [
    '00:00:00:00:00:00>10.77.0.12',
    '00:00:00:00:00:00>10.77.0.13',
    '02:00:00:00:00:02>10.77.0.12',
    '02:00:00:00:00:03>10.77.0.13',
  ]);
  t.same(
    [...d.neighbours.values()].map((n) => `${n.dev} ${n.ip} ${n.mac}`).sort(),
    ['nx64 10.0.0.12 02:00:00:00:00:02', 'nx64 10.0.0.13 02:00:00:00:00:03'],
    'remote endpoints are answered from neighbour entries',
  );
  const onH2 = vxlanMode.render({ self: hosts.get('h2')!, hosts, vpcs, endpoints });
  t.equal(onH2.bridges.get('nbc8')?.mtu, 1400, "a VPC's own MTU wins");
  const gone = vxlanMode.render({
    self: hosts.get('h1')!,
    hosts: new Map([['h1', hosts.get('h1')!]]),
    vpcs,
    endpoints,
  });
  t.equal(gone.fdb.size, 0, 'endpoints of hosts that are gone get no entries');
  t.throws(
    () =>
      vxlanMode.render({
        self: hosts.get('h1')!,
        hosts,
        vpcs: new Map([['a', { ...vpcs.get('a')!, vni: 0 }]]),
        endpoints,
      }),
    { code: ErrorCodes.INVALID_INPUT },
  );
  for (const n of [linkNames.bridge(0xffffff), linkNames.vxlan(1), linkNames.internalPort('c'.repeat(64) + ':eth1')]) {
    t.ok(n.length <= 15 && OWNED_LINK_RE.test(n), `${n} is a valid, recognisable name`);
  }
});

t.test('plan: create in order, nothing when converged, remove orphans', async (t) => {
  const endpoints = [ep('x', 'a', 'h1', '02:00:00:00:00:01'), ep('y', 'a', 'h2', '02:00:00:00:00:02')];
  const desired = vxlanMode.render({ self: hosts.get('h1')!, hosts, vpcs, endpoints });
  const actual = emptyDesired();
  actual.ports.set(linkNames.internalPort('x'), ''); // created by the CNI ADD, not yet on a bridge
  actual.bridges.set('nb99', { name: 'nb99', mtu: 1450 }); // an orphan
  const p = plan(desired, actual);
  t.same(p.create.lines, [
    'link add nb64 mtu 1450 type bridge mcast_snooping 0',
    'link set dev nb64 up',
    'link add nx64 mtu 1450 type vxlan id 100 local 10.77.0.11 dev uplink dstport 4789 gbp nolearning proxy',
    'link set dev nx64 master nb64 up',
    `link set dev ${linkNames.internalPort('x')} master nb64 up`,
  ]);
  t.same(p.fdb.lines, [
    'fdb append 00:00:00:00:00:00 dev nx64 dst 10.77.0.12 self permanent',
    'fdb append 02:00:00:00:00:02 dev nx64 dst 10.77.0.12 self permanent',
  ]);
  t.same(
    p.neighbours.lines,
    ['neigh replace 10.0.0.12 lladdr 02:00:00:00:00:02 dev nx64 nud permanent'],
    'the remote endpoint is answered locally (ARP suppression)',
  );
  t.same(p.remove.lines, ['link del nb99']);
  // Converged: the actual state equals the desired one.
  t.ok(isEmptyPlan(plan(desired, structuredClone(desired))));
  // A changed VNI recreates the device and re-adds its FDB.
  const changed = structuredClone(desired);
  changed.vxlans.get('nx64')!.vni = 101;
  const re = plan(desired, changed);
  t.same(re.create.lines.slice(0, 2), [
    'link del nx64',
    'link add nx64 mtu 1450 type vxlan id 100 local 10.77.0.11 dev uplink dstport 4789 gbp nolearning proxy',
  ]);
  t.equal(re.fdb.lines.length, 2);
  t.equal(re.neighbours.lines.length, 1, 'and its neighbour entries');
  // A device made before ARP suppression (no proxy flag) is recreated with it.
  const old = structuredClone(desired);
  old.vxlans.get('nx64')!.proxy = false;
  t.equal(plan(desired, old).create.lines[0], 'link del nx64');
  // A neighbour entry of an endpoint that left goes; one whose MAC changed is replaced.
  const stale = structuredClone(desired);
  stale.neighbours.set('nx64|10.0.0.77', { ip: '10.0.0.77', mac: '02:00:00:00:00:77', dev: 'nx64' });
  stale.neighbours.get('nx64|10.0.0.12')!.mac = '02:00:00:00:00:99';
  t.same(plan(desired, stale).neighbours.lines, [
    'neigh replace 10.0.0.12 lladdr 02:00:00:00:00:02 dev nx64 nud permanent',
    // (put in place with its own MAC first, so the delete cannot fail: see IpBatch.neighDel)
    'neigh replace 10.0.0.77 lladdr 02:00:00:00:00:77 dev nx64 nud permanent',
    'neigh del 10.0.0.77 dev nx64',
  ]);
});
