import t from 'tap';
import { FakeRunner } from '../../fake-runner.js';
import { IpBatch, IpBatchLane, IpClient } from '../../ip.js';
import { SysctlClient } from '../../sysctl.js';
import { TcBatch, TcClient } from '../../tc.js';
import { BridgeBatch, BridgeClient } from '../../bridge.js';
import { NftTransaction, NftClient, parseNftJson } from '../../nft.js';
import { OvsClient } from '../../ovs.js';
import { GlusterClient, parseCliOutput } from '../../gluster.js';
import { ErrorCodes } from '../../../core/errors.js';
import { CommandError, isCommandError } from '../../runner.js';

t.test('ip: batches render exactly what is sent, reads parse JSON', async (t) => {
  const fake = new FakeRunner().on(['ip', '-n', 'h1', '-j', '-d', 'link', 'show', 'dev', 'br0'], {
    stdout:
      '[{"ifindex":3,"ifname":"br0","flags":["UP"],"mtu":1450,"operstate":"UP","linkinfo":{"info_kind":"bridge"}}]',
    stderr: '',
  });
  const ip = new IpClient(fake, { name: 'h1' });
  const b = new IpBatch()
    .linkAddBridge('br0', { mtu: 1450 })
    .linkAddVxlan({ name: 'vx0', vni: 42, local: '10.77.0.11', dev: 'uplink', gbp: true, learning: false, mtu: 1450 })
    .linkAddVeth('c-1', 'eth1', { peerNetns: 'tn-x-c1', mtu: 1450, group: 7 })
    .linkSet('c-1', { master: 'br0', up: true })
    .addrReplace('10.1.0.1/24', 'br0')
    .routeReplace('10.1.0.0/24', { dev: 'br0', table: 100 })
    .neighReplace('10.1.0.7', '02:00:00:00:00:07', 'vx0')
    .linkDelGroup(7);
  await ip.apply(b);
  t.same(fake.calls[0], {
    argv: ['ip', '-n', 'h1', '-batch', '-'],
    stdin: [
      'link add br0 mtu 1450 type bridge',
      'link add vx0 mtu 1450 type vxlan id 42 local 10.77.0.11 dev uplink dstport 4789 gbp nolearning',
      'link add c-1 mtu 1450 group 7 type veth peer name eth1 mtu 1450 netns tn-x-c1',
      'link set dev c-1 master br0 up',
      'addr replace 10.1.0.1/24 dev br0',
      'route replace 10.1.0.0/24 dev br0 table 100',
      'neigh replace 10.1.0.7 lladdr 02:00:00:00:00:07 dev vx0 nud permanent',
      'link del group 7',
      '',
    ].join('\n'),
  });
  const link = await ip.link('br0');
  t.equal(link?.linkinfo?.info_kind, 'bridge');
  await ip.apply(new IpBatch()); // empty: nothing sent
  t.equal(fake.calls.length, 2);
});

t.test('ip: unsafe tokens never reach a batch', async (t) => {
  const b = new IpBatch();
  t.throws(() => b.addrAdd('10.0.0.1/24\nlink del uplink', 'eth0'), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => b.linkDel('this-name-is-way-too-long'), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => b.linkDel('a b'), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => b.add('link', ''), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => b.add('x#comment'), { code: ErrorCodes.INVALID_INPUT });
  t.same(b.lines, []);
});

t.test('ip: a missing link is undefined; deleting it is success', async (t) => {
  const fake = new FakeRunner()
    .failOn(['ip', '-j'], 'Device "nope" does not exist.', 1)
    .failOn(['ip', 'link', 'del'], 'Cannot find device "nope"', 1);
  const ip = new IpClient(fake);
  t.equal(await ip.link('nope'), undefined);
  t.equal(await ip.deleteLinkIfExists('nope'), false);
  const other = new FakeRunner().failOn(['ip', 'link', 'del'], 'RTNETLINK answers: Operation not permitted', 2);
  await t.rejects(new IpClient(other).deleteLinkIfExists('x'), { code: ErrorCodes.COMMAND_FAILED });
});

t.test('ip: deleting several links in one process; only missing links are forgiven', async (t) => {
  const fake = new FakeRunner().failOn(['ip', '-force', '-batch'], 'Cannot find device "nq1"\nCommand failed -:2\n', 1);
  await new IpClient(fake).deleteLinksIfExist(['ni1', 'nq1']);
  t.same(fake.commandLines(), ['ip -force -batch -']);
  t.equal(fake.calls[0]!.stdin, 'link del ni1\nlink del nq1\n');
  const other = new FakeRunner().failOn(
    ['ip', '-force', '-batch'],
    'Cannot find device "nq1"\nCommand failed -:2\nRTNETLINK answers: Operation not permitted\nCommand failed -:1\n',
    1,
  );
  await t.rejects(new IpClient(other).deleteLinksIfExist(['ni1', 'nq1']), { code: ErrorCodes.COMMAND_FAILED });
});

t.test('ip: proxy neighbour entries (answering ARP for an address on a link)', async (t) => {
  t.equal(
    new IpBatch().proxyNeighReplace('100.64.0.5', 'uplink').proxyNeighDel('fd00::5', 'uplink').render(),
    'neigh replace proxy 100.64.0.5 dev uplink\nneigh replace proxy fd00::5 dev uplink\nneigh del proxy fd00::5 dev uplink\n',
  );
  t.throws(() => new IpBatch().proxyNeighReplace('100.64.0.5\nlink del x', 'uplink'), {
    code: ErrorCodes.INVALID_INPUT,
  });
  const fake = new FakeRunner().on(['ip', '-j', '-d', 'neigh', 'show', 'proxy'], {
    stdout: '[{"dst":"100.64.0.5","dev":"uplink","proxy":null}]',
    stderr: '',
  });
  t.same(await new IpClient(fake).proxyNeighbours('uplink'), ['100.64.0.5']);
  // "No such file or directory" is what the kernel says for a missing proxy entry.
  const missing = new FakeRunner().failOn(
    ['ip', '-force', '-batch'],
    'RTNETLINK answers: No such file or directory\nCommand failed -:1\n',
    2,
  );
  await new IpClient(missing).applyForgivingMissing(new IpBatch().proxyNeighDel('100.64.0.5', 'uplink'));
});

t.test(
  'ip lane: batches that arrive while ip runs share the next process; failures go to their own batch',
  async (t) => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const fake = new FakeRunner()
      .on(
        ['ip', '-n', 'h1', '-force', '-batch'],
        async () => {
          await gate; // the first process is still running while three more batches arrive
          return { stdout: '', stderr: '' };
        },
        1,
      )
      .failOn(['ip', '-n', 'h1', '-force', '-batch'], 'RTNETLINK answers: File exists\nCommand failed -:2\n', 1);
    const lane = new IpBatchLane(fake, { name: 'h1' });
    const first = lane.submit(new IpBatch().linkAddIfb('nq0'));
    const a = lane.submit(new IpBatch().linkAddIfb('nq1'));
    const b = lane.submit(new IpBatch().linkAddIfb('nq2').linkSet('nq2', { up: true }));
    const c = lane.submit(new IpBatch().linkAddIfb('nq3'));
    release();
    await first;
    await a;
    const err = await b.catch((e: unknown) => e);
    await c;
    t.ok(isCommandError(err, 'exists'), 'line 2 (the first line of b) failed: only b is rejected, with its own stderr');
    t.same(
      fake.commandLines(),
      ['ip -n h1 -force -batch -', 'ip -n h1 -force -batch -'],
      'four batches, two processes',
    );
    t.equal(
      fake.calls[1]!.stdin,
      'link add nq1 type ifb\nlink add nq2 type ifb\nlink set dev nq2 up\nlink add nq3 type ifb\n',
    );
  },
);

t.test(
  'ip lane: a line ip cannot parse stops the process; every batch then runs on its own and gets its own answer',
  async (t) => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const fake = new FakeRunner()
      .on(
        ['ip', '-force', '-batch'],
        async () => {
          await gate;
          return { stdout: '', stderr: '' };
        },
        1,
      )
      // The group: line 1 ran, line 2 names a bridge that is gone (a parse error: no line number).
      .failOn(['ip', '-force', '-batch'], 'Error: argument "nb33" is wrong: Device does not exist\n', 255, 1)
      .failOn(['ip', '-force', '-batch'], 'RTNETLINK answers: File exists\nCommand failed -:1\n', 2, 1)
      .failOn(['ip', '-force', '-batch'], 'Error: argument "nb33" is wrong: Device does not exist\n', 255, 1);
    const lane = new IpBatchLane(fake);
    const first = lane.submit(new IpBatch().linkAddIfb('nq0'));
    const ran = lane.submit(new IpBatch().linkAddIfb('nq1'));
    const broken = lane.submit(new IpBatch().linkSet('nq2', { master: 'nb33' }));
    const never = lane.submit(new IpBatch().linkAddIfb('nq3'));
    release();
    await first;
    const results = await Promise.allSettled([ran, broken, never]);
    t.ok(
      results[0].status === 'rejected' && isCommandError(results[0].reason, 'exists'),
      'the batch that ran before the stop answers "exists" (its caller clears and retries)',
    );
    t.ok(
      results[1].status === 'rejected' && isCommandError(results[1].reason, 'not-found'),
      'the broken batch gets its own error',
    );
    t.equal(results[2].status, 'fulfilled', 'the batch after the stop ran on its own and succeeded');
    t.equal(fake.calls.length, 5, 'one group, then three single runs');
  },
);

t.test('tc: shaping both directions renders one batch', async (t) => {
  const fake = new FakeRunner();
  await new TcClient(fake, { name: 'h1' }).apply(
    new TcBatch()
      .rootTbf('c-1', { rateBps: 10_000_000, burstBytes: 20_000 })
      .ingress('c-1')
      .redirectIngressTo('c-1', 'ifb-c1')
      .rootTbf('ifb-c1', { rateBps: 5_000_000, burstBytes: 10_000, latencyMs: 20 }),
  );
  t.same(fake.calls[0]?.argv, ['tc', '-n', 'h1', '-batch', '-']);
  t.equal(
    fake.calls[0]?.stdin,
    [
      'qdisc replace dev c-1 root tbf rate 10000000bit burst 20000 latency 50ms',
      'qdisc replace dev c-1 handle ffff: ingress',
      'filter replace dev c-1 parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev ifb-c1',
      'qdisc replace dev ifb-c1 root tbf rate 5000000bit burst 10000 latency 20ms',
      '',
    ].join('\n'),
  );
  t.throws(() => new TcBatch().rootTbf('x', { rateBps: -1, burstBytes: 1 }));
});

t.test('bridge: fdb batches', async (t) => {
  const fake = new FakeRunner().on(['bridge', '-j', 'fdb'], {
    stdout: '[{"mac":"00:00:00:00:00:00","dst":"10.77.0.12","flags":["self"],"state":"permanent","ifname":"vx0"}]',
    stderr: '',
  });
  const br = new BridgeClient(fake);
  await br.apply(
    new BridgeBatch()
      .fdbAppend('00:00:00:00:00:00', 'vx0', { dst: '10.77.0.12' })
      .fdbDel('02:00:00:00:00:09', 'vx0', { dst: '10.77.0.13' }),
  );
  t.equal(
    fake.calls[0]?.stdin,
    'fdb append 00:00:00:00:00:00 dev vx0 dst 10.77.0.12 self permanent\nfdb del 02:00:00:00:00:09 dev vx0 dst 10.77.0.13 self\n',
  );
  t.same((await br.fdb({ dev: 'vx0' }))[0]?.dst, '10.77.0.12');
});

t.test('nft: one script per transaction; names and statements are checked', async (t) => {
  const fake = new FakeRunner();
  const tx = new NftTransaction()
    .addTable('bridge', 'tagqueue')
    .addMap('bridge', 'tagqueue', 'port_tenant', { type: 'ifname : mark' })
    .addChain('bridge', 'tagqueue', 'pre', { type: 'filter', hook: 'prerouting', priority: -200 })
    .addRule('bridge', 'tagqueue', 'pre', 'meta mark set iifname map @port_tenant')
    .addElements('bridge', 'tagqueue', 'port_tenant', ['"c-1" : 0x12']);
  await new NftClient(fake, { name: 'h1' }).apply(tx);
  t.same(fake.calls[0]?.argv, ['nsenter', '--net=/run/netns/h1', '--', 'nft', '-f', '-']);
  t.equal(
    fake.calls[0]?.stdin,
    [
      'add table bridge tagqueue',
      'add map bridge tagqueue port_tenant { type ifname : mark; }',
      'add chain bridge tagqueue pre { type filter hook prerouting priority -200; policy accept; }',
      'add rule bridge tagqueue pre meta mark set iifname map @port_tenant',
      'add element bridge tagqueue port_tenant { "c-1" : 0x12 }',
      '',
    ].join('\n'),
  );
  t.same(
    new NftTransaction().deleteTable('inet', 'x').commands,
    ['add table inet x', 'delete table inet x'],
    'idempotent delete',
  );
  t.throws(
    () => new NftTransaction().addChain('inet', 't', 'fwd'),
    { code: ErrorCodes.INVALID_INPUT },
    '"fwd" is a keyword',
  );
  t.throws(() => new NftTransaction().addRule('inet', 't', 'c', 'accept; flush ruleset'), {
    code: ErrorCodes.INVALID_INPUT,
  });
  t.throws(() => new NftTransaction().addElements('inet', 't', 's', ['1 }\nflush ruleset']), {
    code: ErrorCodes.INVALID_INPUT,
  });
  const parsed = parseNftJson(
    '{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"t","handle":1}},{"set":{"family":"inet","table":"t","name":"s","type":"ipv4_addr","handle":2,"elem":["10.0.0.1"]}}]}',
  );
  t.equal(parsed.table?.name, 't');
  t.same(parsed.sets[0]?.elem, ['10.0.0.1']);
});

t.test('ovs: idempotent verbs', async (t) => {
  const fake = new FakeRunner().on(['ovs-vsctl', '--timeout=5', '--format=json'], {
    stdout: '{"headings":["name","tag"],"data":[["p1",100],["up",["set",[]]]]}',
    stderr: '',
  });
  const ovs = new OvsClient(fake);
  await ovs.addBridge('br-vlan', { datapathType: 'netdev' });
  await ovs.addPort('br-vlan', 'p1', { tag: 100 });
  await ovs.deleteBridge('br-vlan');
  t.same(fake.commandLines().slice(0, 3), [
    'ovs-vsctl --timeout=5 --may-exist add-br br-vlan -- set bridge br-vlan datapath_type=netdev',
    'ovs-vsctl --timeout=5 --may-exist add-port br-vlan p1 -- set port p1 tag=100',
    'ovs-vsctl --timeout=5 --if-exists del-br br-vlan',
  ]);
  t.same(
    [...(await ovs.portTags())],
    [
      ['p1', 100],
      ['up', undefined],
    ],
  );
  await t.rejects(ovs.addPort('b', 'p', { tag: 5000 }), { code: ErrorCodes.INVALID_INPUT });
});

const VOLINFO = `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><volInfo><volumes><volume><name>gv0</name><id>5b4c</id><status>1</status><statusStr>Started</statusStr><snapshotCount>0</snapshotCount><brickCount>4</brickCount><distCount>2</distCount><replicaCount>2</replicaCount><typeStr>Distributed-Replicate</typeStr><bricks><brick uuid="u1">10.77.0.21:/b/1<name>10.77.0.21:/b/1</name><hostUuid>u1</hostUuid><isArbiter>0</isArbiter></brick><brick uuid="u2">10.77.0.22:/b/1<name>10.77.0.22:/b/1</name><hostUuid>u2</hostUuid><isArbiter>0</isArbiter></brick></bricks><optCount>1</optCount><options><option><name>features.quota</name><value>on</value></option></options></volume><count>1</count></volumes></volInfo></cliOutput>`;

t.test('gluster: XML answers and errors', async (t) => {
  const fake = new FakeRunner()
    .on(['gluster', '--mode=script', '--xml', 'volume', 'info'], { stdout: VOLINFO, stderr: '' })
    .on(['gluster', '--mode=script', '--xml', 'peer', 'status'], {
      stdout:
        '<cliOutput><opRet>0</opRet><opErrno>0</opErrno><opErrstr/><peerStatus><peer><uuid>u2</uuid><hostname>10.77.0.22</hostname><connected>1</connected><state>3</state><stateStr>Peer in Cluster</stateStr></peer></peerStatus></cliOutput>',
      stderr: '',
    })
    .failOn(['gluster', '--mode=script', '--xml', 'volume', 'create'], '', 1);
  const g = new GlusterClient(fake);
  const [v] = await g.volumeInfo('gv0');
  t.same(v, {
    name: 'gv0',
    id: '5b4c',
    status: 'Started',
    type: 'Distributed-Replicate',
    replicaCount: 2,
    brickCount: 4,
    bricks: [
      { name: '10.77.0.21:/b/1', hostUuid: 'u1' },
      { name: '10.77.0.22:/b/1', hostUuid: 'u2' },
    ],
    options: { 'features.quota': 'on' },
  });
  t.same(await g.peerStatus(), [{ uuid: 'u2', hostname: '10.77.0.22', connected: true, state: 'Peer in Cluster' }]);
  t.throws(
    () =>
      parseCliOutput(
        '<cliOutput><opRet>-1</opRet><opErrno>30806</opErrno><opErrstr>Another transaction is in progress for gv0. Please try again after some time.</opErrstr></cliOutput>',
      ),
    { code: ErrorCodes.GLUSTER_BUSY },
  );
  t.throws(
    () =>
      parseCliOutput(
        '<cliOutput><opRet>-1</opRet><opErrno>2</opErrno><opErrstr>Volume gv9 does not exist</opErrstr></cliOutput>',
      ),
    { code: ErrorCodes.GLUSTER_FAILED, message: /gv9 does not exist/ },
  );
  await g.volumeCreate({ name: 'gv1', replica: 2, bricks: ['a:/b', 'b:/b'] }).catch(() => undefined);
  t.equal(
    fake.commandLines().at(-1),
    'gluster --mode=script --xml volume create gv1 replica 2 transport tcp a:/b b:/b',
  );
  // gluster exits non-zero and puts the reason in the XML on stdout:
  const failing = new FakeRunner().on(['gluster'], (call) => {
    throw new CommandError({
      argv: call.argv,
      exitCode: 1,
      stderr: '',
      stdout:
        '<cliOutput><opRet>-1</opRet><opErrno>0</opErrno><opErrstr>volume start: gv1: failed: Volume gv1 already started</opErrstr></cliOutput>',
    });
  });
  await t.rejects(new GlusterClient(failing).volumeStart('gv1'), {
    code: ErrorCodes.GLUSTER_FAILED,
    message: /already started/,
  });
});

t.test('sysctl: another namespace goes through sysctl -w; keys and values are checked', async (t) => {
  const fake = new FakeRunner();
  await new SysctlClient(fake, { name: 'h1' }).set('net.ipv4.neigh.ne1a2b.proxy_delay', 0);
  t.same(fake.calls[0]?.argv, [
    'nsenter',
    '--net=/run/netns/h1',
    '--',
    'sysctl',
    '-q',
    '-w',
    'net.ipv4.neigh.ne1a2b.proxy_delay=0',
  ]);
  await t.rejects(new SysctlClient(fake, { name: 'h1' }).set('kernel.core_pattern', '|/bin/sh'), {
    code: ErrorCodes.INVALID_INPUT,
  });
  await t.rejects(new SysctlClient(fake, { name: 'h1' }).set('net.ipv4.ip_forward', '1\nnet.x=1'), {
    code: ErrorCodes.INVALID_INPUT,
  });
});
