import t from 'tap';
import { ExecRunner, isCommandError, CommandError } from '../../runner.js';
import { IpBatch, IpClient } from '../../ip.js';
import { TcBatch, TcClient } from '../../tc.js';
import { BridgeBatch, BridgeClient } from '../../bridge.js';
import { NftTransaction, NftClient } from '../../nft.js';
import { requireRoot, scratchNetns } from '../../../test-netns/testing.js';

const runner = new ExecRunner();

t.test('ip: links, addresses, routes, neighbours and vxlan, read back as JSON', async (t) => {
  if (!requireRoot(t)) return;
  const ns = { name: await scratchNetns(t, runner) };
  const ip = new IpClient(runner, ns);
  await ip.apply(
    new IpBatch()
      .linkAddVeth('up0', 'up1', { mtu: 1500 })
      .addrAdd('192.0.2.11/24', 'up0')
      .linkSet('up0', { up: true })
      .linkSet('up1', { up: true })
      .linkAddBridge('br0', { mtu: 1450 })
      .linkAddVxlan({ name: 'vx0', vni: 4242, local: '192.0.2.11', dev: 'up0', gbp: true, learning: false, mtu: 1450 })
      .linkSet('vx0', { master: 'br0', up: true })
      .linkSet('br0', { up: true })
      .addrReplace('10.20.0.1/24', 'br0')
      .routeReplace('198.51.100.0/24', { via: '192.0.2.12', dev: 'up0' })
      .neighReplace('10.20.0.7', '02:00:00:00:00:07', 'br0'),
  );
  const vx = await ip.link('vx0');
  t.equal(vx?.linkinfo?.info_kind, 'vxlan');
  t.equal(vx?.linkinfo?.info_data?.id, 4242);
  t.equal(vx?.linkinfo?.info_data?.gbp, true, 'gbp on');
  t.equal(vx?.linkinfo?.info_data?.learning, false, 'learning off');
  t.equal(vx?.master, 'br0');
  t.equal(vx?.mtu, 1450);
  const addrs = await ip.addresses('br0');
  t.same(
    addrs[0]?.addr_info.filter((a) => a.family === 'inet').map((a) => `${a.local}/${a.prefixlen}`),
    ['10.20.0.1/24'],
  );
  const routes = await ip.routes({ family: 4 });
  t.ok(
    routes.some((r) => r.dst === '198.51.100.0/24' && r.gateway === '192.0.2.12'),
    'route read back',
  );
  const neigh = await ip.neighbours('br0');
  t.ok(neigh.some((n) => n.dst === '10.20.0.7' && n.lladdr === '02:00:00:00:00:07' && n.state?.includes('PERMANENT')));
  // Replace is idempotent; a second identical batch of replaces succeeds.
  await ip.apply(
    new IpBatch().addrReplace('10.20.0.1/24', 'br0').routeReplace('198.51.100.0/24', { via: '192.0.2.12', dev: 'up0' }),
  );
  t.equal(await ip.deleteLinkIfExists('vx0'), true);
  t.equal(await ip.deleteLinkIfExists('vx0'), false, 'deleting twice is success');
  t.equal(await ip.link('vx0'), undefined);
});

t.test('a failing command surfaces the kernel message in a typed error', async (t) => {
  if (!requireRoot(t)) return;
  const netns = await scratchNetns(t, runner);
  const ip = new IpClient(runner, { name: netns });
  const err = await ip.apply(new IpBatch().addrAdd('10.0.0.1/24', 'nosuchdev')).catch((e: unknown) => e);
  t.ok(err instanceof CommandError);
  const e = err as CommandError;
  t.equal(e.kind, 'not-found');
  t.equal(e.netns, netns);
  t.match(e.stderr, /Cannot find device "nosuchdev"/);
  t.same(e.argv, ['ip', '-n', netns, '-batch', '-']);
  const dup = await ip.apply(new IpBatch().linkAddBridge('b1').linkAddBridge('b1')).catch((x: unknown) => x);
  t.ok(isCommandError(dup, 'exists'), 'File exists is classified');
});

t.test('tc: both directions shaped, read back', async (t) => {
  if (!requireRoot(t)) return;
  const ns = { name: await scratchNetns(t, runner) };
  await new IpClient(runner, ns).apply(
    new IpBatch()
      .linkAddVeth('c-1', 'eth0')
      .linkAddIfb('ifb-c1')
      .linkSet('c-1', { up: true })
      .linkSet('ifb-c1', { up: true }),
  );
  const tc = new TcClient(runner, ns);
  await tc.apply(
    new TcBatch()
      .rootTbf('c-1', { rateBps: 10_000_000, burstBytes: 20_000 })
      .ingress('c-1')
      .redirectIngressTo('c-1', 'ifb-c1')
      .rootHtb('ifb-c1')
      .htbClass('ifb-c1', '1:', '1:10', 5_000_000),
  );
  const q = await tc.qdiscs('c-1');
  const tbf = q.find((x) => x.kind === 'tbf');
  t.equal(tbf?.options?.rate, 1_250_000, 'tc -j reports rates in bytes/s');
  t.ok(q.some((x) => x.kind === 'ingress'));
  const filters = await tc.filters('c-1', 'ffff:');
  t.ok(
    filters.some((f) => f.kind === 'u32'),
    'the redirect filter',
  );
  const classes = await tc.classes('ifb-c1');
  t.ok(
    classes.some((c) => c.handle === '1:10' && c.rate === 5_000_000),
    'htb class with its rate',
  );
  await tc.deleteRootIfExists('c-1');
  await tc.deleteRootIfExists('c-1');
  t.notOk(
    (await tc.qdiscs('c-1')).some((x) => x.kind === 'tbf'),
    'gone, and deleting twice was fine',
  );
});

t.test('bridge: fdb entries on a vxlan device', async (t) => {
  if (!requireRoot(t)) return;
  const ns = { name: await scratchNetns(t, runner) };
  await new IpClient(runner, ns).apply(
    new IpBatch()
      .linkAddVeth('up0', 'up1')
      .addrAdd('192.0.2.11/24', 'up0')
      .linkAddVxlan({ name: 'vx0', vni: 7, local: '192.0.2.11', dev: 'up0', learning: false }),
  );
  const br = new BridgeClient(runner, ns);
  await br.apply(
    new BridgeBatch()
      .fdbAppend('00:00:00:00:00:00', 'vx0', { dst: '192.0.2.12' })
      .fdbAppend('00:00:00:00:00:00', 'vx0', { dst: '192.0.2.13' })
      .fdbReplace('02:00:00:00:00:09', 'vx0', { dst: '192.0.2.12' }),
  );
  let fdb = await br.fdb({ dev: 'vx0' });
  t.same(
    fdb
      .filter((e) => e.mac === '00:00:00:00:00:00')
      .map((e) => e.dst)
      .sort(),
    ['192.0.2.12', '192.0.2.13'],
    'flood list',
  );
  t.ok(fdb.some((e) => e.mac === '02:00:00:00:00:09' && e.dst === '192.0.2.12'));
  await br.apply(new BridgeBatch().fdbDel('02:00:00:00:00:09', 'vx0', { dst: '192.0.2.12' }));
  fdb = await br.fdb({ dev: 'vx0' });
  t.notOk(fdb.some((e) => e.mac === '02:00:00:00:00:09'));
});

t.test('nft: atomic transactions, element deltas, JSON listing', async (t) => {
  if (!requireRoot(t)) return;
  const ns = { name: await scratchNetns(t, runner) };
  const nft = new NftClient(runner, ns);
  await nft.apply(
    new NftTransaction()
      .addTable('inet', 'tn_test')
      .addSet('inet', 'tn_test', 'allowed', { type: 'ipv4_addr' })
      .addMap('inet', 'tn_test', 'port_tenant', { type: 'ifname : mark' })
      .addChain('inet', 'tn_test', 'fwd_filter', { type: 'filter', hook: 'forward', priority: 0, policy: 'accept' })
      .addRule('inet', 'tn_test', 'fwd_filter', 'ip saddr @allowed counter accept')
      .addElements('inet', 'tn_test', 'allowed', ['10.0.0.1', '10.0.0.2'])
      .addElements('inet', 'tn_test', 'port_tenant', ['"c-1" : 0x12']),
  );
  let table = await nft.table('inet', 'tn_test');
  t.same(table?.sets.find((s) => s.name === 'allowed')?.elem, ['10.0.0.1', '10.0.0.2']);
  t.equal(table?.maps.length, 1);
  t.equal(table?.chains[0]?.hook, 'forward');
  t.equal(table?.rules.length, 1);
  await nft.apply(
    new NftTransaction()
      .deleteElements('inet', 'tn_test', 'allowed', ['10.0.0.1'])
      .addElements('inet', 'tn_test', 'allowed', ['10.0.0.3']),
  );
  table = await nft.table('inet', 'tn_test');
  t.same(
    table?.sets.find((s) => s.name === 'allowed')?.elem,
    ['10.0.0.2', '10.0.0.3'],
    'element deltas without a reload',
  );
  // An error in the middle of a transaction leaves nothing of it applied.
  const bad = new NftTransaction()
    .addElements('inet', 'tn_test', 'allowed', ['10.0.0.9'])
    .addElements('inet', 'tn_test', 'nosuchset', ['10.0.0.10']);
  await t.rejects(nft.apply(bad), { code: 'E_COMMAND_FAILED' });
  table = await nft.table('inet', 'tn_test');
  t.same(
    table?.sets.find((s) => s.name === 'allowed')?.elem,
    ['10.0.0.2', '10.0.0.3'],
    'atomic: 10.0.0.9 was not added',
  );
  await nft.apply(new NftTransaction().deleteTable('inet', 'tn_test'));
  await nft.apply(new NftTransaction().deleteTable('inet', 'tn_test'));
  t.equal(await nft.table('inet', 'tn_test'), undefined, 'deleted, twice');
  t.notOk((await nft.tables()).some((x) => x.name === 'tn_test'));
});
