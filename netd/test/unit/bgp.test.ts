import t from 'tap';
import { ErrorCodes } from '../../../core/errors.js';
import { announcedPrefixes, checkAsn, parseBgpPeer, renderBirdConfig } from '../../bgp.js';
import { createRoutedMode } from '../../modes/routed.js';
import { linkNames } from '../../names.js';
import type { EndpointRecord, HostRecord, VpcRecord } from '../../../tenancy/records.js';
import type { HostSnapshot } from '../../model.js';

const hosts = new Map<string, HostRecord>([
  ['h1', { name: 'h1', underlayIp: '10.80.1.2', uplink: 'tor0', underlayMtu: 1500 }],
  ['h2', { name: 'h2', underlayIp: '10.80.2.2', uplink: 'tor0', underlayMtu: 1500 }],
]);
const vpcs = new Map<string, VpcRecord>([
  ['r', { name: 'r', tenant: 't1', mode: 'routed', cidr: '10.60.0.0/24', vni: 7 }],
  ['v', { name: 'v', tenant: 't2', mode: 'vxlan', cidr: '10.70.0.0/24', vni: 8 }],
]);
const ep = (id: string, vpc: string, host: string, ip: string): EndpointRecord => ({
  id,
  vpc,
  host,
  ip,
  mac: '02:00:00:00:00:01',
  hostIf: linkNames.internalPort(id),
});
const view: HostSnapshot = {
  self: hosts.get('h1')!,
  hosts,
  vpcs,
  endpoints: [
    ep('a', 'r', 'h1', '10.60.0.2'),
    // Borrowed from h2's block.
    ep('b', 'r', 'h1', '10.60.0.70'),
    ep('c', 'r', 'h2', '10.60.0.66'),
    ep('d', 'v', 'h1', '10.70.0.2'),
  ],
  blocks: [
    { host: 'h1', pool: 'r', cidr: '10.60.0.0/26' },
    { host: 'h2', pool: 'r', cidr: '10.60.0.64/26' },
    { host: 'h1', pool: 'v', cidr: '10.70.0.0/26' },
  ],
};

t.test('BGP: a host announces its routed blocks and its borrowed addresses, nothing of vxlan VPCs', async (t) => {
  t.same(announcedPrefixes(view), ['10.60.0.0/26', '10.60.0.70/32']);
  const conf = renderBirdConfig(view, { asn: 64512, peers: [{ ip: '10.80.1.1', asn: 65000 }] });
  t.match(conf, /router id 10\.80\.1\.2;/);
  t.match(conf, /route 10\.60\.0\.0\/26 unreachable;/);
  t.match(conf, /route 10\.60\.0\.70\/32 unreachable;/);
  t.notMatch(conf, /10\.70\./, 'vxlan VPCs are not routed');
  t.notMatch(conf, /protocol kernel/, 'nothing reaches the kernel');
  t.match(conf, /local 10\.80\.1\.2 as 64512;\s+neighbor 10\.80\.1\.1 as 65000;/);
  t.match(conf, /import none; export filter netd_export;/);
});

t.test('BGP: only prefixes inside the operator export ranges are announced, and BIRD checks again', async (t) => {
  const conf = renderBirdConfig(
    view,
    { asn: 64512, peers: [{ ip: '10.80.1.1', asn: 65000 }], exportCidrs: ['10.60.0.0/26'] },
    ['100.64.0.7'],
  );
  t.match(conf, /route 10\.60\.0\.0\/26 unreachable;/);
  t.notMatch(conf, /10\.60\.0\.70\/32/, 'a borrowed /32 outside the range is left out');
  t.notMatch(conf, /100\.64\.0\.7/, 'so is an eth0 address outside it');
  t.match(
    conf,
    /if \(proto = "netd_routes" \|\| proto = "netd_routes6"\) && \(\(net.type = NET_IP4 && net ~ \[ 10\.60\.0\.0\/26\+ \]\)\) then accept;/,
  );
});

t.test('routed on an L3 fabric: remote blocks and borrowed addresses go through the fabric gateway', async (t) => {
  const r = createRoutedMode({ fabricGateway: '10.80.1.1' }).renderRouting!(view);
  const via = [...r.routes.values()].filter((x) => x.via !== undefined);
  t.same(
    via.map((x) => [x.dst, x.via, x.dev]),
    [['10.60.0.64/26', '10.80.1.1', 'tor0']],
    "h2's block via the gateway (the borrowed address is local here)",
  );
});

t.test('BGP flags: peers and AS numbers are validated', async (t) => {
  t.same(parseBgpPeer('10.80.1.1:65000'), { ip: '10.80.1.1', asn: 65000 });
  for (const bad of ['10.80.1.1', '10.80.1.1:0', '10.80.1.1:4294967296', 'x:1', '10.80.1.1:65000;', ':1', '1.2.3:5'])
    t.throws(() => parseBgpPeer(bad), { code: ErrorCodes.INVALID_INPUT }, bad);
  t.equal(checkAsn(4_200_000_000), 4_200_000_000);
  t.throws(() => checkAsn(1.5), { code: ErrorCodes.INVALID_INPUT });
});
