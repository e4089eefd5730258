import t from 'tap';
import { FakeKernel, FakeKernelUnmodelled } from '../../fake-kernel.js';
import { BridgeBatch, BridgeClient } from '../../bridge.js';
import { IpBatch, IpBatchLane, IpClient } from '../../ip.js';
import { NftClient, NftTransaction } from '../../nft.js';
import { CommandError, isCommandError } from '../../runner.js';
import { SysctlClient } from '../../sysctl.js';
import { TcBatch, TcClient } from '../../tc.js';
import { ErrorCodes } from '../../../core/errors.js';
import { clients, phases, readState, type Scene } from '../fake-kernel-scenario.js';

const H = { name: 'h1' };
const C_PATH = '/proc/4242/ns/net';
const C = { path: C_PATH };

/** A host namespace with an uplink, and a container namespace known by a path only (as CNI gives it). */
function kernel(): { k: FakeKernel; ip: IpClient; inside: IpClient } {
  const k = new FakeKernel().addNetns('h1').addNetnsAt(C_PATH);
  return { k, ip: new IpClient(k, H), inside: new IpClient(k, C) };
}

async function failure(p: Promise<unknown>): Promise<CommandError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof CommandError)) throw new Error(`expected a CommandError, got ${String(err)}`);
  return err;
}

t.test('a new namespace has lo, down; scratchNetns-style setup brings it up with its addresses', async (t) => {
  const k = new FakeKernel();
  await k.run({ argv: ['ip', 'netns', 'add', 'n1'] });
  t.same(k.dump('n1').links, ['lo loopback down mtu 65536']);
  await k.run({ argv: ['ip', 'link', 'set', 'lo', 'up'], netns: { name: 'n1' } });
  t.same(k.dump('n1').addresses, ['lo 127.0.0.1/8', 'lo ::1/128']);
  const dup = await failure(k.run({ argv: ['ip', 'netns', 'add', 'n1'] }));
  t.match(dup.stderr, /Cannot create namespace file "\/run\/netns\/n1": File exists/);
  t.equal(dup.kind, 'exists');
  t.same(k.commandLines(), ['ip netns add n1', 'ip -n n1 link set lo up', 'ip netns add n1']);
});

t.test('veth with its peer created in another namespace (by path: commands go through nsenter)', async (t) => {
  const { k, ip, inside } = kernel();
  await ip.apply(
    new IpBatch()
      .linkAddVeth('ni1', 'eth1', { mtu: 1450, peerNetns: C_PATH, peerAddress: '02:00:00:00:00:01', group: 7 })
      .linkSet('ni1', { addrGenMode: 'none' })
      .linkSet('ni1', { up: true }),
  );
  await inside.apply(new IpBatch().linkSet('eth1', { up: true }).addrAdd('10.20.0.5/24', 'eth1'));
  t.same(k.commandLines().slice(-1), [`nsenter --net=${C_PATH} -- ip -batch -`]);

  const host = await ip.link('ni1');
  t.equal(host?.link_netnsid, 0, 'the peer is in another namespace');
  t.equal(host?.group, '7');
  t.same(host?.flags, ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP'], 'both ends up: carrier');
  const peer = (await inside.links()).find((l) => l.ifname === 'eth1');
  t.equal(peer?.address, '02:00:00:00:00:01');
  t.equal(peer?.mtu, 1450);
  t.same(
    (await inside.addresses('eth1'))[0]?.addr_info.map((a) => `${a.local}/${a.prefixlen}`),
    ['10.20.0.5/24'],
  );
  t.same(await inside.routes({ family: 4 }), [
    {
      type: 'unicast',
      dst: '10.20.0.0/24',
      dev: 'eth1',
      protocol: 'kernel',
      scope: 'link',
      prefsrc: '10.20.0.5',
      flags: [],
    },
  ]);
  t.same(k.dump(H).links, [
    'lo loopback down mtu 65536',
    `ni1 veth up mtu 1450 group 7 addrgenmode none peer eth1@${C_PATH}`,
  ]);

  // Deleting one end deletes both.
  t.equal(await ip.deleteLinkIfExists('ni1'), true);
  t.same(k.dump(C).links, ['lo loopback down mtu 65536']);
  t.equal(await ip.deleteLinkIfExists('ni1'), false, 'deleting what is gone is success');
});

t.test('the peer end alone: carrier, M-DOWN and routes flagged linkdown follow the other end', async (t) => {
  const { ip } = kernel();
  await ip.apply(new IpBatch().linkAddVeth('a1', 'a2').linkSet('a1', { up: true }).addrAdd('10.5.0.1/24', 'a1'));
  t.same((await ip.link('a1'))?.flags, ['NO-CARRIER', 'BROADCAST', 'MULTICAST', 'UP', 'M-DOWN']);
  t.equal((await ip.link('a1'))?.operstate, 'LOWERLAYERDOWN');
  t.same((await ip.routes())[0]?.flags, ['linkdown']);
  await ip.apply(new IpBatch().linkSet('a2', { up: true }));
  t.same((await ip.link('a1'))?.flags, ['BROADCAST', 'MULTICAST', 'UP', 'LOWER_UP']);
  t.same((await ip.routes())[0]?.flags, []);
});

t.test('bridge, vxlan, FDB and neighbours as the reconciler sets and reads them', async (t) => {
  const { k, ip } = kernel();
  const bridge = new BridgeClient(k, H);
  await ip.apply(
    new IpBatch()
      .linkAddVeth('up0', 'up1')
      .addrAdd('192.0.2.11/24', 'up0')
      .linkSet('up0', { up: true })
      .linkAddBridge('nb2a', { mtu: 1450, mcastSnooping: false })
      .linkSet('nb2a', { up: true })
      .linkAddVxlan({ name: 'nx2a', vni: 42, local: '192.0.2.11', dev: 'up0', gbp: true, learning: false, proxy: true })
      .linkSet('nx2a', { master: 'nb2a', up: true }),
  );
  const vx = await ip.link('nx2a');
  t.equal(vx?.mtu, 1450, 'a vxlan takes its lower device MTU minus 50');
  t.same(vx?.linkinfo?.info_data, {
    id: 42,
    local: '192.0.2.11',
    link: 'up0',
    port_range: { low: 0, high: 0 },
    port: 4789,
    learning: false,
    proxy: true,
    ttl: 0,
    df: 'unset',
    ageing: 300,
    udp_csum: true,
    udp_zero_csum6_tx: false,
    udp_zero_csum6_rx: false,
    gbp: true,
  });
  t.equal(vx?.master, 'nb2a');
  t.equal((await ip.link('nb2a'))?.address, vx?.address, 'the bridge takes its smallest port MAC');
  t.same(
    (await ip.links({ type: 'vxlan' })).map((l) => l.ifname),
    ['nx2a'],
  );

  await bridge.apply(
    new BridgeBatch()
      .fdbAppend('00:00:00:00:00:00', 'nx2a', { dst: '192.0.2.12' })
      .fdbAppend('00:00:00:00:00:00', 'nx2a', { dst: '192.0.2.13' })
      .fdbAppend('00:00:00:00:00:00', 'nx2a', { dst: '192.0.2.13' })
      .fdbAppend('02:00:00:00:00:07', 'nx2a', { dst: '192.0.2.12' })
      // The kernel appends remotes only to flood entries: a unicast entry keeps its one remote.
      .fdbAppend('02:00:00:00:00:07', 'nx2a', { dst: '192.0.2.99' }),
  );
  const fdb = await bridge.fdb({ dev: 'nx2a' });
  t.same(fdb, [
    { mac: vx?.address, flags: [], master: 'nb2a', state: 'permanent' },
    { mac: '00:00:00:00:00:00', dst: '192.0.2.12', flags: ['self'], state: 'permanent' },
    { mac: '00:00:00:00:00:00', dst: '192.0.2.13', flags: ['self'], state: 'permanent' },
    { mac: '02:00:00:00:00:07', dst: '192.0.2.12', flags: ['self'], state: 'permanent' },
  ]);
  t.ok(
    (await bridge.fdb()).every((e) => e.ifname === 'nx2a'),
    'the full listing names the device',
  );
  await bridge.apply(new BridgeBatch().fdbDel('00:00:00:00:00:00', 'nx2a', { dst: '192.0.2.12' }));
  t.same(k.dump(H).fdb, ['00:00:00:00:00:00 dev nx2a dst 192.0.2.13', '02:00:00:00:00:07 dev nx2a dst 192.0.2.12']);

  await ip.applyForgivingMissing(
    new IpBatch()
      .neighReplace('10.20.0.7', '02:00:00:00:00:07', 'nx2a')
      .neighReplace('10.20.0.8', '02:00:00:00:00:08', 'nx2a'),
  );
  t.same(await ip.neighbours('nx2a'), [
    { dst: '10.20.0.7', lladdr: '02:00:00:00:00:07', state: ['PERMANENT'] },
    { dst: '10.20.0.8', lladdr: '02:00:00:00:00:08', state: ['PERMANENT'] },
  ]);

  const clash = await failure(
    ip.apply(new IpBatch().linkAddVxlan({ name: 'nx2b', vni: 42, local: '192.0.2.11', dev: 'up0', gbp: true })),
  );
  t.match(clash.stderr, /A VXLAN device with the specified VNI already exists/);

  // The VXLAN goes with its lower device; the bridge loses its last port (MTU back to 1500, MAC zero).
  await ip.deleteLinksIfExist(['up0']);
  t.same(
    (await ip.links()).map((l) => `${l.ifname} ${l.mtu} ${l.address}`),
    ['lo 65536 00:00:00:00:00:00', 'nb2a 1500 00:00:00:00:00:00'],
  );
  t.same(k.dump(H).neighbours, [], 'neighbour entries went with their device');
});

t.test('tc: tbf and ingress + mirred to an ifb, read back as tc -j prints them', async (t) => {
  const { k, ip } = kernel();
  const tc = new TcClient(k, H);
  await ip.apply(
    new IpBatch()
      .linkAddVeth('ne1', 'eth0')
      .linkAddIfb('nqe1')
      .linkSet('ne1', { up: true })
      .linkSet('nqe1', { up: true }),
  );
  t.same(await tc.qdiscs('nqe1'), [
    {
      kind: 'pfifo_fast',
      handle: '0:',
      root: true,
      refcnt: 2,
      options: { bands: 3, priomap: [1, 2, 2, 2, 1, 2, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1], multiqueue: false },
    },
  ]);
  const shape = (rateBps: number) => ({ rateBps, burstBytes: 32768, latencyMs: 50, overheadBytes: -14 });
  await tc.apply(
    new TcBatch()
      .rootTbf('ne1', shape(10_000_000))
      .ingress('ne1')
      .redirectIngressTo('ne1', 'nqe1')
      .rootTbf('nqe1', shape(5_000_000)),
  );
  const q = await tc.qdiscs('ne1');
  t.same(q, [
    { kind: 'tbf', handle: '8001:', root: true, refcnt: 3, options: { rate: 1250000, burst: 32767, lat: 50000 } },
    { kind: 'ingress', handle: 'ffff:', parent: 'ffff:fff1', options: {} },
  ]);
  t.equal(((await ip.link('ne1')) as unknown as { qdisc: string }).qdisc, 'tbf', 'ip link shows the root qdisc');
  await tc.apply(new TcBatch().rootTbf('ne1', shape(20_000_000)));
  t.equal((await tc.qdiscs('ne1'))[0]?.handle, '8001:', 'a replace changes the tbf in place');
  t.equal((await tc.qdiscs('ne1'))[0]?.options?.rate, 2_500_000);
  const filters = await tc.filters('ne1', 'ffff:');
  t.equal(filters.length, 3, 'u32 head, hash table, one key');
  t.match(filters[2]?.options, { fh: '800::800', actions: [{ kind: 'mirred', to_dev: 'nqe1', index: 1 }] });
  t.same(k.dump(H).qdiscs, [
    'ne1 ingress',
    'ne1 ingress filter prio 1 u32 match-all action mirred egress redirect dev nqe1',
    'ne1 root stab overhead -14 tbf rate 20000000bit burst 32768 latency 50000us',
    'nqe1 root stab overhead -14 tbf rate 5000000bit burst 32768 latency 50000us',
  ]);

  await tc.deleteRootIfExists('ne1');
  await tc.deleteRootIfExists('ne1');
  t.same(await tc.qdiscs('ne1'), [
    { kind: 'noqueue', handle: '0:', root: true, refcnt: 2, options: {} },
    { kind: 'ingress', handle: 'ffff:', parent: 'ffff:fff1', options: {} },
  ]);
  const noIngress = await failure(tc.apply(new TcBatch().deleteIngress('ne1').deleteIngress('ne1')));
  t.equal(noIngress.stderr, 'Error: Cannot find specified qdisc on specified device.\nCommand failed -:2\n');
  t.same(await tc.filters('ne1', 'ffff:'), [], 'the filters went with the ingress qdisc');
  t.equal(
    (await failure(tc.apply(new TcBatch().rootTbf('nosuch', shape(8000))))).kind,
    'not-found',
    'a missing device',
  );
  t.equal((await tc.classes('nqe1')).length, 0, 'no htb: no classes');
});

t.test('tbf numbers follow the kernel round trip (values measured on kernel 6.18 / tc 6.1)', async (t) => {
  const { k, ip } = kernel();
  const tc = new TcClient(k, H);
  await ip.apply(new IpBatch().linkAddIfb('q1'));
  const measured: Array<[number, number, number, number]> = [
    // rate bit/s, burst given, burst shown, latency shown (µs)
    [10_000_000, 32768, 32767, 50000],
    [8000, 32768, 32768, 49999],
    [1_000_000_000, 32768, 32750, 50000],
    [123_456_789, 1000, 987, 50000],
    [100_000_000_000, 32768, 25000, 50000],
    [100_000_000_000, 125_000_000, 124_987_500, 50001],
  ];
  for (const [rateBps, burstBytes, burst, lat] of measured) {
    await tc.apply(new TcBatch().rootTbf('q1', { rateBps, burstBytes, latencyMs: 50, overheadBytes: -14 }));
    t.same((await tc.qdiscs('q1'))[0]?.options, { rate: Math.floor(rateBps / 8), burst, lat }, `${rateBps} bit/s`);
  }
});

t.test('a batch stops at its first failing line; -force goes on; some errors end ip at once', async (t) => {
  const { k, ip } = kernel();
  await ip.apply(new IpBatch().linkAddBridge('b0'));

  const stopped = await failure(ip.apply(new IpBatch().linkAddBridge('b1').linkAddBridge('b0').linkAddBridge('b2')));
  t.equal(stopped.stderr, 'RTNETLINK answers: File exists\nCommand failed -:2\n');
  t.equal(stopped.exitCode, 1);
  t.equal(stopped.kind, 'exists');
  t.same(
    (await ip.links()).map((l) => l.ifname),
    ['lo', 'b0', 'b1'],
    'lines before the failure stay applied, lines after never ran',
  );

  const forced = await failure(
    ip.apply(new IpBatch().linkDel('nosuch1').linkAddBridge('b2').linkDel('nosuch2'), { force: true }),
  );
  t.equal(
    forced.stderr,
    'Cannot find device "nosuch1"\nCommand failed -:1\nCannot find device "nosuch2"\nCommand failed -:3\n',
  );
  t.ok(await ip.link('b2'), '-force ran the line in between');
  await ip.applyForgivingMissing(new IpBatch().linkDel('nosuch').linkDel('b2'));
  t.equal(await ip.link('b2'), undefined, 'forgiving: missing links are success');

  // A master that does not exist is an argument error: ip exits before running anything more.
  const fatal = await failure(
    ip.apply(new IpBatch().linkSet('b1', { master: 'nosuch' }).linkDel('b1'), { force: true }),
  );
  t.equal(fatal.exitCode, 255);
  t.equal(fatal.stderr, 'Error: argument "nosuch" is wrong: Device does not exist\n\n');
  t.ok(await ip.link('b1'), 'the line after it never ran');

  // So does any kernel error of `ip neigh` (it calls exit(2)): raw removals stop at the first entry
  // already gone, and the lines after it do not run...
  await ip.apply(new IpBatch().neighReplace('10.0.0.7', '02:00:00:00:00:07', 'b1'));
  await failure(
    k.run({
      argv: ['ip', '-force', '-batch', '-'],
      netns: H,
      stdin: 'neigh del 10.0.0.99 dev b1\nneigh del 10.0.0.7 dev b1\n',
    }),
  );
  t.same(k.dump(H).neighbours, ['10.0.0.7 dev b1 lladdr 02:00:00:00:00:07 PERMANENT'], 'raw: the second never ran');
  // ...which is why IpBatch's neighbour removals put the entry in place first: they always find it.
  await ip.applyForgivingMissing(new IpBatch().neighDel('10.0.0.99', 'b1').neighDel('10.0.0.7', 'b1'));
  t.same(k.dump(H).neighbours, [], 'IpBatch: both removed');
});

t.test('IpBatchLane: coalesced batches get their own failures', async (t) => {
  const { k } = kernel();
  const lane = new IpBatchLane(k, H);
  const results = await Promise.allSettled([
    lane.submit(new IpBatch().linkAddBridge('x1')),
    lane.submit(new IpBatch().linkAddBridge('x2').linkAddBridge('x1')),
    lane.submit(new IpBatch().linkAddBridge('x3')),
  ]);
  t.same(
    results.map((r) => r.status),
    ['fulfilled', 'rejected', 'fulfilled'],
  );
  const second = (results[1] as PromiseRejectedResult).reason as CommandError;
  t.ok(isCommandError(second, 'exists'));
  t.equal(
    second.stderr,
    'RTNETLINK answers: File exists\nCommand failed -:2\n',
    'only its own line (numbered in the shared process)',
  );
  t.same(
    k.calls.map((c) => [c.argv.join(' '), c.stdin]),
    [
      ['ip -n h1 -force -batch -', 'link add x1 type bridge\n'],
      ['ip -n h1 -force -batch -', 'link add x2 type bridge\nlink add x1 type bridge\nlink add x3 type bridge\n'],
    ],
    'the first went alone (the lane was idle), the two that queued meanwhile shared one process',
  );
  t.same(
    k.dump(H).links.map((l) => l.split(' ')[0]),
    ['lo', 'x1', 'x2', 'x3'],
  );
});

t.test('routes: gateways must be on a connected route; a link going down takes its routes', async (t) => {
  const { k, ip } = kernel();
  await ip.apply(
    new IpBatch()
      .linkAddVeth('a1', 'a2')
      .linkSet('a1', { up: true })
      .linkSet('a2', { up: true })
      .addrAdd('10.5.0.1/24', 'a1'),
  );
  const bad = await failure(ip.apply(new IpBatch().routeReplace('198.51.100.0/24', { via: '10.9.9.9', dev: 'a1' })));
  t.equal(bad.stderr, 'Error: Nexthop has invalid gateway.\nCommand failed -:1\n');
  await ip.apply(
    new IpBatch()
      .routeReplace('198.51.100.0/24', { via: '10.5.0.9', dev: 'a1' })
      .routeReplace('default', { via: '169.254.1.1', dev: 'a1', onlink: true })
      .routeReplace('10.9.0.0/16', { dev: 'a1', table: 100 }),
  );
  t.same(k.dump(H).routes, [
    'default via 169.254.1.1 dev a1 onlink',
    '10.5.0.0/24 dev a1 proto kernel scope link src 10.5.0.1',
    '198.51.100.0/24 via 10.5.0.9 dev a1',
    'table 100 10.9.0.0/16 dev a1 scope link',
  ]);
  t.same(
    (await ip.routes({ table: 100 })).map((r) => r.dst),
    ['10.9.0.0/16'],
  );
  t.match((await failure(ip.routes({ table: 101 }))).stderr, /FIB table does not exist/);
  t.equal((await failure(ip.apply(new IpBatch().routeDel('203.0.113.0/24')))).kind, 'not-found');
  await ip.apply(new IpBatch().linkSet('a1', { up: false }));
  t.same(k.dump(H).routes, [], 'down: every route through it is gone');
  await ip.apply(new IpBatch().linkSet('a1', { up: true }));
  t.same(k.dump(H).routes, ['10.5.0.0/24 dev a1 proto kernel scope link src 10.5.0.1'], 'up: the prefix route is back');
});

t.test('addresses: IPv4 and IPv6 errors as ip prints them; moving a link to another namespace', async (t) => {
  const { k, ip, inside } = kernel();
  await ip.apply(new IpBatch().linkAddVeth('a1', 'a2').addrAdd('fd00::1/64', 'a1').addrAdd('10.1.1.1/24', 'a1'));
  t.equal(
    (await failure(ip.apply(new IpBatch().addrAdd('fd00::1/64', 'a1')))).stderr,
    'Error: ipv6: address already assigned.\nCommand failed -:1\n',
  );
  t.equal(
    (await failure(ip.apply(new IpBatch().addrDel('fd00::2/64', 'a1')))).stderr,
    'Error: ipv6: address not found.\nCommand failed -:1\n',
  );
  await ip.apply(new IpBatch().addrReplace('10.1.1.1/24', 'a1').addrAdd('10.1.1.1/32', 'a1'));
  t.same(k.dump(H).addresses, ['a1 10.1.1.1/24', 'a1 10.1.1.1/32', 'a1 fd00::1/64'], 'one address per prefix length');
  const before = (await ip.link('a1'))?.ifindex;
  await ip.apply(new IpBatch().linkSet('a1', { up: true }).linkSet('a1', { netns: C_PATH }));
  const moved = (await inside.links()).find((l) => l.ifname === 'a1');
  t.equal(moved?.ifindex, before, 'the ifindex is kept when it is free there');
  t.same(moved?.flags, ['BROADCAST', 'MULTICAST'], 'it arrives down');
  t.same((await inside.addresses('a1'))[0]?.addr_info, [], 'without its addresses');
  t.equal((await ip.link('a2'))?.link_netnsid, 0, 'its peer now points to another namespace');
});

t.test('deleting a namespace takes its links and their peers; commands into it fail as the tools do', async (t) => {
  const { k, ip, inside } = kernel();
  await ip.apply(
    new IpBatch().linkAddVeth('ni1', 'eth1', { peerNetns: C_PATH }).linkAddVeth('ne1', 'eth0', { peerNetns: C_PATH }),
  );
  k.removeNetns(C);
  t.same(
    (await ip.links()).map((l) => l.ifname),
    ['lo'],
  );
  const gone = await failure(inside.links());
  t.equal(gone.stderr, `nsenter: cannot open ${C_PATH}: No such file or directory\n`);
  t.equal(gone.kind, 'not-found');

  await k.run({ argv: ['ip', 'netns', 'add', 'c2'] });
  await ip.apply(new IpBatch().linkAddVeth('ni2', 'eth1', { peerNetns: 'c2' }));
  await k.run({ argv: ['ip', 'netns', 'del', 'c2'] });
  t.equal(await ip.link('ni2'), undefined);
  const named = await failure(new IpClient(k, { name: 'c2' }).links());
  t.equal(named.stderr, 'Cannot open network namespace "c2": No such file or directory\n');
  t.equal(named.exitCode, 255);
  const peerGone = await failure(ip.apply(new IpBatch().linkAddVeth('ni3', 'eth1', { peerNetns: '/run/netns/c2' })));
  t.equal(peerGone.stderr, 'Error: argument "/run/netns/c2" is wrong: Invalid "netns" value\n\n');
  t.notOk(k.hasNetns('c2'));
});

t.test('fault injection: a failing command, a failing line, something happening just before a command', async (t) => {
  const { k, ip } = kernel();
  k.failNext(/ip -n h1 -batch -\nlink add nb1/, { stderr: 'RTNETLINK answers: Device or resource busy' });
  const busy = await failure(ip.apply(new IpBatch().linkAddBridge('nb1')));
  t.equal(busy.kind, 'busy');
  t.equal(await ip.link('nb1'), undefined, 'nothing of it applied');
  await ip.apply(new IpBatch().linkAddBridge('nb1'));
  t.ok(await ip.link('nb1'), 'only the next one failed');

  k.failLine('ip link add b2', { stderr: 'RTNETLINK answers: No buffer space available' });
  const line = await failure(
    ip.apply(new IpBatch().linkAddBridge('b1').linkAddBridge('b2').linkAddBridge('b3'), { force: true }),
  );
  t.equal(line.stderr, 'RTNETLINK answers: No buffer space available\nCommand failed -:2\n');
  t.same(
    (await ip.links()).map((l) => l.ifname),
    ['lo', 'nb1', 'b1', 'b3'],
  );

  // The bridge goes away between netd's read and its ADD (attach.ts falls back to no master).
  k.beforeNext(/link add ni1/, (kernel) => kernel.deleteLink(H, 'nb1'));
  const raced = await failure(ip.apply(new IpBatch().linkAddVeth('ni1', 'eth1', { master: 'nb1' })));
  t.equal(raced.exitCode, 255);
  t.match(raced.stderr, /argument "nb1" is wrong: Device does not exist/);

  await k.tamper({ argv: ['ip', 'link', 'set', 'b1', 'up'], netns: H });
  t.equal((await ip.link('b1'))?.flags.includes('UP'), true, 'tamper changes the state');
  t.notOk(
    k.commandLines().some((l) => l.includes('set b1')),
    'without being recorded',
  );
});

t.test('what the fake does not model is an error, never a silent success', async (t) => {
  const { k, ip } = kernel();
  for (const argv of [
    ['ip', 'rule', 'show'],
    ['ip', 'link', 'add', 'd0', 'type', 'dummy'],
    ['ip', '-j', 'link', 'show', 'dev', 'lo', 'up'],
    ['ovs-vsctl', 'show'],
    ['tc', 'qdisc', 'replace', 'dev', 'lo', 'root', 'handle', '1:', 'htb', 'default', '10'],
    ['sysctl', '-w', 'kernel.pid_max=10'],
  ]) {
    await t.rejects(k.run({ argv, netns: H }), FakeKernelUnmodelled, argv.join(' '));
  }
  const err = await ip.apply(new IpBatch().add('link', 'add', 'x', 'type', 'macvlan')).catch((e: unknown) => e);
  t.ok(err instanceof FakeKernelUnmodelled);
  t.notOk(isCommandError(err), 'not something a caller could take for a kernel answer');
  t.equal((err as FakeKernelUnmodelled).code, ErrorCodes.INTERNAL);
});

t.test('sysctl: the seam records own-namespace writes; per-device keys need the device', async (t) => {
  const { k, ip } = kernel();
  await ip.apply(new IpBatch().linkAddVeth('ne1', 'eth0'));
  await new SysctlClient(k).set('net.ipv4.ip_forward', 1);
  await new SysctlClient(k, H).set('net.ipv4.neigh.ne1.proxy_delay', 0);
  t.same(k.commandLines(), [
    'ip -n h1 -batch -',
    'sysctl -q -w net.ipv4.ip_forward=1',
    'nsenter --net=/run/netns/h1 -- sysctl -q -w net.ipv4.neigh.ne1.proxy_delay=0',
  ]);
  t.equal(k.sysctl('net.ipv4.ip_forward'), '1');
  t.same(k.dump(H).sysctls, ['net.ipv4.neigh.ne1.proxy_delay = 0']);
  await ip.deleteLinkIfExists('ne1');
  t.same(k.dump(H).sysctls, [], 'per-device keys go with their device');
  const missing = await failure(new SysctlClient(k, H).set('net.ipv4.neigh.ne1.proxy_delay', 0));
  t.equal(missing.stderr, 'sysctl: cannot stat /proc/sys/net/ipv4/neigh/ne1/proxy_delay: No such file or directory\n');
  t.equal(missing.kind, 'not-found');
});

t.test('nft: transactions are atomic; tables and sets list as nft -j; rules are in the dump', async (t) => {
  const { k } = kernel();
  const nft = new NftClient(k, H);
  await nft.apply(
    new NftTransaction()
      .addTable('inet', 'tq')
      .addSet('inet', 'tq', 'allowed', { type: 'ipv4_addr' })
      .addMap('inet', 'tq', 'port_tenant', { type: 'ifname : mark' })
      .addChain('inet', 'tq', 'fwd_filter', { type: 'filter', hook: 'forward', priority: 0 })
      .addElements('inet', 'tq', 'allowed', ['10.0.0.1', '10.0.0.2'])
      .addElements('inet', 'tq', 'port_tenant', ['"c-1" : 0x12']),
  );
  const table = await nft.table('inet', 'tq');
  t.same(table?.sets, [
    { family: 'inet', name: 'allowed', table: 'tq', type: 'ipv4_addr', handle: 1, elem: ['10.0.0.1', '10.0.0.2'] },
  ]);
  t.same(table?.maps[0]?.elem, [['c-1', 18]]);
  t.match(table?.chains[0], { name: 'fwd_filter', type: 'filter', hook: 'forward', prio: 0, policy: 'accept' });

  const bad = new NftTransaction()
    .addElements('inet', 'tq', 'allowed', ['10.0.0.9'])
    .deleteElements('inet', 'tq', 'allowed', ['10.0.0.77']);
  const err = await failure(nft.apply(bad));
  t.match(err.stderr, /^\/dev\/stdin:2:\d+-\d+: Error: Could not process rule: No such file or directory\n/);
  t.same((await nft.table('inet', 'tq'))?.sets[0]?.elem, ['10.0.0.1', '10.0.0.2'], 'nothing of it applied');

  await nft.apply(new NftTransaction().addRule('inet', 'tq', 'fwd_filter', 'ip saddr @allowed accept'));
  t.same(k.dump(H).nft, [
    'table inet tq',
    'set inet tq allowed type ipv4_addr { 10.0.0.1, 10.0.0.2 }',
    'map inet tq port_tenant type ifname : mark { "c-1" : 0x12 }',
    'chain inet tq fwd_filter type filter hook forward priority 0 policy accept',
    'rule inet tq fwd_filter ip saddr @allowed accept',
  ]);
  t.same(
    (await nft.table('inet', 'tq'))!.rules.map((r) => [r.chain, r.expr]),
    [['fwd_filter', []]],
    'rules list with their counters only (no other expression is modelled)',
  );
  // external.ts's NAT table, rewritten atomically on every start.
  const nat = () =>
    new NftTransaction()
      .addTable('ip', 'netd_nat')
      .addChain('ip', 'netd_nat', 'outbound', { type: 'nat', hook: 'postrouting', priority: 100 })
      .flushChain('ip', 'netd_nat', 'outbound')
      .addRule('ip', 'netd_nat', 'outbound', 'ip saddr 203.0.113.0/24 oifname "up0" masquerade');
  await nft.apply(nat());
  await nft.apply(nat());
  t.same(
    k.dump(H).nft.filter((l) => l.includes('netd_nat')),
    [
      'table ip netd_nat',
      'chain ip netd_nat outbound type nat hook postrouting priority 100 policy accept',
      'rule ip netd_nat outbound ip saddr 203.0.113.0/24 oifname "up0" masquerade',
    ],
    'flushed and rewritten: one rule',
  );
  await nft.apply(new NftTransaction().deleteTable('inet', 'tq'));
  await nft.apply(new NftTransaction().deleteTable('inet', 'tq').deleteTable('ip', 'netd_nat'));
  t.equal(await nft.table('inet', 'tq'), undefined);
  t.same(await nft.tables(), []);
});

t.test("netd's whole sequence runs on the fake; the dump is plain, sorted and stable", async (t) => {
  const k = new FakeKernel().addNetns('h1').addNetns('c1');
  await k.run({ argv: ['ip', 'link', 'set', 'lo', 'up'], netns: H });
  const scene: Scene = { runner: k, host: H, container: { path: '/var/run/netns/c1' } };
  for (const phase of phases.slice(0, 4)) await phase.run(scene);
  const dump = k.dump(H);
  t.same(dump.links, [
    'lo loopback up mtu 65536',
    'nb2a bridge up mtu 1450 mcast_snooping 0',
    'ne1 veth up mtu 1500 addrgenmode none peer eth0@c1',
    'ni1 veth up mtu 1450 master nb2a addrgenmode none peer eth1@c1',
    'nqe1 ifb up mtu 1500',
    'nx2a vxlan up mtu 1450 master nb2a id 42 local 192.0.2.11 dev up0 dstport 4789 nolearning gbp proxy',
    'up0 veth up mtu 1500 peer up1',
    'up1 veth up mtu 1500 peer up0',
  ]);
  t.same(dump.proxies, ['169.254.1.1 dev ne1', '203.0.113.5 dev up0']);
  t.same(dump.sysctls, ['net.ipv4.neigh.ne1.proxy_delay = 0']);
  t.same(k.dump('c1').routes, [
    'default via 169.254.1.1 dev eth0 onlink',
    '10.20.0.0/24 dev eth1 proto kernel scope link src 10.20.0.5',
    '169.254.1.1 dev eth0 scope link',
  ]);
  t.same(k.dump('c1').links, [
    'eth0 veth up mtu 1500 address 02:7f:00:00:00:02 addrgenmode none peer ne1@(root)'.replace('(root)', 'h1'),
    'eth1 veth up mtu 1450 address 02:2a:0a:14:00:05 addrgenmode none peer ni1@h1',
    'lo loopback down mtu 65536',
  ]);
  t.ok(
    k
      .batchLines()
      .includes(
        'tc filter replace dev ne1 parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev nqe1',
      ),
    'batch lines are recorded for assertions',
  );
  const state = await readState(scene);
  t.equal((state['host links'] as unknown[]).length, 8);
  const { ip } = clients(scene);
  t.same(await ip.proxyNeighbours('up0'), ['203.0.113.5']);
  t.same(k.dump(H), k.dump(H), 'stable');
});
