import t from 'tap';
import { createRoutedMode, routedMode, routedTable, ROUTED_GATEWAY, ROUTED_RULE_PRIORITY } from '../../modes/routed.js';
import { linkNames } from '../../names.js';
import type { EndpointRecord, HostRecord, VpcRecord } from '../../../tenancy/records.js';
import type { BlockAffinity, HostSnapshot } from '../../model.js';

const hosts = new Map<string, HostRecord>([
  ['h1', { name: 'h1', underlayIp: '10.77.0.11', uplink: 'uplink', underlayMtu: 1500 }],
  ['h2', { name: 'h2', underlayIp: '10.77.0.12', uplink: 'uplink', underlayMtu: 1500 }],
  ['h3', { name: 'h3', underlayIp: '10.77.0.13', uplink: 'uplink', underlayMtu: 1500 }],
]);
const vpcs = new Map<string, VpcRecord>([
  ['r', { name: 'r', tenant: 't1', mode: 'routed', cidr: '10.60.0.0/24', vni: 7 }],
  ['q', { name: 'q', tenant: 't2', mode: 'routed', cidr: '10.61.0.0/24', vni: 8 }],
  ['v', { name: 'v', tenant: 't3', mode: 'vxlan', cidr: '10.60.0.0/24', vni: 9 }],
]);
const ep = (id: string, vpc: string, host: string, ip: string): EndpointRecord => ({
  id,
  vpc,
  host,
  ip,
  mac: '02:00:00:00:00:01',
  hostIf: linkNames.internalPort(id),
});
const blocks: BlockAffinity[] = [
  { host: 'h1', pool: 'r', cidr: '10.60.0.0/26' },
  { host: 'h2', pool: 'r', cidr: '10.60.0.64/26' },
  { host: 'h3', pool: 'r', cidr: '10.60.0.128/26' },
  { host: 'h2', pool: 'q', cidr: '10.61.0.0/26' },
];

function view(self: string, endpoints: EndpointRecord[], alive = hosts): HostSnapshot {
  return { self: hosts.get(self)!, hosts: alive, vpcs, endpoints, blocks };
}

t.test('routed render: a table per local routed VPC, local /32s, remote blocks, borrowed addresses', async (t) => {
  const endpoints = [
    ep('x', 'r', 'h1', '10.60.0.2'),
    ep('y', 'r', 'h2', '10.60.0.66'),
    // Borrowed: on h2, in h3's block.
    ep('z', 'r', 'h2', '10.60.0.130'),
    ep('w', 'q', 'h2', '10.61.0.2'),
    ep('v1', 'v', 'h1', '10.60.0.2'),
  ];
  const s = view('h1', endpoints);
  const l2 = routedMode.render(s);
  t.same(
    [...l2.ports],
    [[linkNames.internalPort('x'), '']],
    'the routed port, on no bridge (vxlan ports are not mine)',
  );
  const r = routedMode.renderRouting!(s);
  const table = routedTable(vpcs.get('r')!);
  t.same(
    [...r.rules.values()],
    [
      { from: '10.60.0.0/24', table, priority: ROUTED_RULE_PRIORITY },
      { from: `${ROUTED_GATEWAY}/32`, to: '10.60.0.0/24', table, priority: ROUTED_RULE_PRIORITY },
    ],
    'q has no endpoint here',
  );
  const routes = [...r.routes.values()].map((x) => ({ ...x }));
  t.same(
    routes.sort((a, b) => a.dst.localeCompare(b.dst)),
    [
      { table, dst: '10.60.0.128/26', via: '10.77.0.13', dev: 'uplink' },
      { table, dst: '10.60.0.130/32', via: '10.77.0.12', dev: 'uplink' },
      { table, dst: '10.60.0.2/32', dev: linkNames.internalPort('x'), scope: 'link' },
      { table, dst: '10.60.0.64/26', via: '10.77.0.12', dev: 'uplink' },
      { table, dst: `${ROUTED_GATEWAY}/32`, type: 'local', dev: 'lo' },
      { table, dst: 'default', type: 'prohibit' },
    ],
  );
});

t.test('routed render: a dead host loses its routes; a host without local endpoints has none', async (t) => {
  const endpoints = [ep('x', 'r', 'h1', '10.60.0.2'), ep('y', 'r', 'h2', '10.60.0.66')];
  const alive = new Map([...hosts].filter(([n]) => n !== 'h2'));
  const r = routedMode.renderRouting!(view('h1', endpoints, alive));
  t.notOk(
    [...r.routes.values()].some((x) => x.via === '10.77.0.12'),
    'nothing towards h2 once its registration is gone',
  );
  const none = routedMode.renderRouting!(view('h3', endpoints));
  t.equal(none.routes.size + none.rules.size, 0, 'h3 serves no routed container: no rule, no table');
});

t.test(
  'routed render, IPv6: /128s, no gateway route or rule, remote blocks via IPv6 underlays, guarded sources',
  async (t) => {
    const hosts6 = new Map<string, HostRecord>([
      ['h1', { ...hosts.get('h1')!, underlayIp6: 'fd00:10:77::11' }],
      ['h2', { ...hosts.get('h2')!, underlayIp6: 'fd00:10:77::12' }],
      // No IPv6 underlay address (or a malformed one): nothing can be routed to it.
      ['h3', { ...hosts.get('h3')!, underlayIp6: '10.77.0.13' }],
    ]);
    const vpc6: VpcRecord = { name: 's', tenant: 't1', mode: 'routed', cidr: 'fd10:60::/64', vni: 10 };
    const endpoints = [
      ep('x', 's', 'h1', 'fd10:60::2'),
      ep('y', 's', 'h2', 'fd10:60::42'),
      // Borrowed: on h2, in no block of h2's.
      ep('z', 's', 'h2', 'fd10:60::1:5'),
      ep('u', 's', 'h3', 'fd10:60::82'),
    ];
    const snapshot: HostSnapshot = {
      self: hosts6.get('h1')!,
      hosts: hosts6,
      vpcs: new Map([['s', vpc6]]),
      endpoints,
      blocks: [
        { host: 'h1', pool: 's', cidr: 'fd10:60::/122' },
        { host: 'h2', pool: 's', cidr: 'fd10:60::40/122' },
        { host: 'h3', pool: 's', cidr: 'fd10:60::80/122' },
      ],
    };
    const r = routedMode.renderRouting!(snapshot);
    const table = routedTable(vpc6);
    t.same([...r.rules.values()], [{ from: 'fd10:60::/64', table, priority: ROUTED_RULE_PRIORITY }], 'one rule');
    t.same(
      [...r.routes.values()].map((x) => ({ ...x })).sort((a, b) => a.dst.localeCompare(b.dst)),
      [
        { table, dst: '::/0', type: 'prohibit' },
        { table, dst: 'fd10:60::1:5/128', via: 'fd00:10:77::12', dev: 'uplink' },
        { table, dst: 'fd10:60::2/128', dev: linkNames.internalPort('x') },
        { table, dst: 'fd10:60::40/122', via: 'fd00:10:77::12', dev: 'uplink' },
      ],
      "h3's block and endpoint have no route: h3 has no IPv6 underlay address",
    );
    t.same(
      [...r.guards.values()],
      [{ port: linkNames.internalPort('x'), ip: 'fd10:60::2' }],
      "the local port may send only from its container's address",
    );
    const l3 = createRoutedMode({ fabricGateway: '10.80.1.1', fabricGateway6: 'fd00:80:1::1' }).renderRouting!(
      snapshot,
    );
    t.ok(
      [...l3.routes.values()].filter((x) => x.via !== undefined).every((x) => x.via === 'fd00:80:1::1'),
      "on an L3 fabric every remote IPv6 route goes to the router's IPv6 address",
    );
  },
);
