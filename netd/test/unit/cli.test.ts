import t from 'tap';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStore } from '../../../store/memory.js';
import { buildNetdApi } from '../../api-routes.js';
import { Ipam } from '../../../ipam/allocator.js';
import { NetdApiClient } from '../../../tenancy/api/client.js';
import { formatTable, parseCommand, parseRate, run, type Invocation } from '../../cli.js';

t.test('rates: bits per second with k/m/g', async (t) => {
  t.equal(parseRate('10mbit'), 10_000_000);
  t.equal(parseRate('1gbit'), 1_000_000_000);
  t.equal(parseRate('500kbit'), 500_000);
  t.equal(parseRate('2.5m'), 2_500_000);
  t.equal(parseRate('2500000'), 2_500_000);
  for (const bad of ['', 'fast', '10 tbit', '-5mbit', '0', '1000g'])
    t.throws(() => parseRate(bad), { code: 'E_INVALID_INPUT' }, bad);
});

t.test('parsing: commands, flags, environment defaults; bad usage is E_INVALID_INPUT before any call', async (t) => {
  const env = { NETD_API: 'http://127.0.0.1:9999', NETD_TOKEN: 'a.secret' };
  t.same(parseCommand(['vpc', 'list'], env), {
    api: 'http://127.0.0.1:9999',
    token: 'a.secret',
    json: false,
    command: { kind: 'vpc-list' },
  });
  t.same(parseCommand(['--api', 'unix:///x.sock', '--token', 't', '--json', 'tenant', 'create', 'acme'], env), {
    api: 'unix:///x.sock',
    token: 't',
    json: true,
    command: { kind: 'tenant-create', name: 'acme' },
  });
  t.same(
    parseCommand(['vpc', 'create', 'web', '--cidr', '10.0.0.0/24', '--mtu', '1400', '--ingress', '10mbit'], {}).command,
    {
      kind: 'vpc-create',
      name: 'web',
      cidr: '10.0.0.0/24',
      mtu: 1400,
      qos: { ingressBps: 10_000_000 },
    },
  );
  t.same(parseCommand(['endpoint', 'qos', 'web', 'c1:eth1', '--egress', '1g'], {}).command, {
    kind: 'endpoint-qos',
    vpc: 'web',
    endpoint: 'c1:eth1',
    qos: { egressBps: 1e9 },
    external: false,
  });
  t.same(parseCommand(['endpoint', 'qos', 'web', 'c1:eth1', '--external', '--ingress', '1m'], {}).command, {
    kind: 'endpoint-qos',
    vpc: 'web',
    endpoint: 'c1:eth1',
    qos: { ingressBps: 1e6 },
    external: true,
  });
  t.same(parseCommand(['tenant', 'caps', 'acme', '--eth0-egress', '20mbit', '--eth1-ingress', '1g'], {}).command, {
    kind: 'tenant-caps',
    name: 'acme',
    caps: { eth0: { egressBps: 20e6 }, eth1: { ingressBps: 1e9 } },
  });
  t.same(parseCommand(['tenant', 'caps', 'acme'], {}).command, { kind: 'tenant-caps', name: 'acme', caps: {} });
  t.throws(() => parseCommand(['tenant', 'caps', 'acme', '--ingress', '1m'], {}), { code: 'E_INVALID_INPUT' });
  t.same(parseCommand(['vpc', 'qos', 'web', '--ingress', '5mbit'], {}).command, {
    kind: 'vpc-qos',
    name: 'web',
    qos: { ingressBps: 5_000_000 },
  });
  t.same(parseCommand(['cni-config', '--external'], {}).command, { kind: 'cni-config' });
  t.same(parseCommand(['cni-config', 'web'], {}).command, { kind: 'cni-config', vpc: 'web' });
  t.equal(parseCommand(['health'], {}).api, 'unix:///run/netd/api.sock');
  const bad = [
    [],
    ['vpc'],
    ['vpc', 'create', 'web'],
    ['vpc', 'create', 'web', '--cidr'],
    ['vpc', 'list', '--cidr', 'x'],
    ['tenant', 'show'],
    ['tenant', 'show', 'a', 'b'],
    ['nope'],
    ['vpc', 'list', '--frobnicate'],
    ['cni-config'],
    ['cni-config', 'web', '--external'],
    ['vpc', 'create', 'w', '--cidr', '10.0.0.0/24', '--ingress', 'fast'],
    ['vpc', 'create', 'w', '--cidr', '10.0.0.0/24', '--mtu', '1.5'],
  ];
  for (const argv of bad)
    t.throws(() => parseCommand(argv, {}), { code: 'E_INVALID_INPUT' }, argv.join(' ') || '(nothing)');
});

t.test('parsing: vpc modes and the operator policy', async (t) => {
  t.same(
    parseCommand(['vpc', 'create', 'wire', '--cidr', '10.0.0.0/24', '--mode', 'vlan', '--physnet', 'dc2'], {}).command,
    { kind: 'vpc-create', name: 'wire', cidr: '10.0.0.0/24', mode: 'vlan', physnet: 'dc2' },
  );
  t.throws(() => parseCommand(['vpc', 'create', 'w', '--cidr', '10.0.0.0/24', '--mode', 'ovs'], {}), {
    code: 'E_INVALID_INPUT',
  });
  t.same(
    parseCommand(
      ['policy', 'set', '--routed-ranges', '10.8.0.0/16,172.20.0.0/14', '--vlan-ranges', 'physnet0:100:199'],
      {},
    ).command,
    {
      kind: 'policy-set',
      routedRanges: ['10.8.0.0/16', '172.20.0.0/14'],
      vlanRanges: [{ physnet: 'physnet0', min: 100, max: 199 }],
    },
  );
  t.throws(() => parseCommand(['policy', 'set', '--vlan-ranges', 'physnet0-100-199'], {}), { code: 'E_INVALID_INPUT' });
  t.same(parseCommand(['policy', 'show'], {}).command, { kind: 'policy-show' });
  t.same(
    parseCommand(['policy', 'set', '--infra-ranges', '192.168.0.0/16', '--infra-allow', '10.0.0.53:udp:53'], {})
      .command,
    {
      kind: 'policy-set',
      infraRanges: ['192.168.0.0/16'],
      infraAllow: [{ cidr: '10.0.0.53/32', proto: 'udp', port: 53 }],
    },
  );
  t.same(parseCommand(['policy', 'set', '--infra-allow', ''], {}).command, { kind: 'policy-set', infraAllow: [] });
  t.throws(() => parseCommand(['policy', 'set', '--infra-allow', '10.0.0.1:icmp:1'], {}), { code: 'E_INVALID_INPUT' });
});

t.test('tables: aligned columns, "-" for missing cells', async (t) => {
  const text = formatTable(
    [
      { name: 'web', cidr: '10.0.0.0/24' },
      { name: 'database', vni: 7 },
    ],
    [
      { key: 'name', title: 'NAME' },
      { key: 'cidr', title: 'CIDR' },
      { key: 'vni', title: 'VNI' },
    ],
  );
  t.equal(text, 'NAME      CIDR         VNI\nweb       10.0.0.0/24  -\ndatabase  -            7\n');
});

t.test('end to end against the API on a Unix socket: tenant → VPC → list → show → cni-config → delete', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netdctl-'));
  const store = new MemoryStore();
  const app = buildNetdApi({ store, pools: new Ipam({ store, host: 'api' }), adminToken: 'admin-secret-0123456789' });
  const socket = join(dir, 'api.sock');
  await app.listen({ path: socket });
  t.teardown(async () => {
    await app.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const api = `unix://${socket}`;
  const exec = async (argv: string[], token: string): Promise<string> => {
    const inv: Invocation = parseCommand(argv, { NETD_API: api, NETD_TOKEN: token });
    let text = '';
    await run(inv, new NetdApiClient(inv.api, inv.token), (s) => (text += s));
    return text;
  };
  const created = await exec(['tenant', 'create', 'acme'], 'admin-secret-0123456789');
  const token = /token \(shown once, store it now\): (\S+)/.exec(created)?.[1];
  t.ok(token, 'the token is printed once, clearly');
  t.match(await exec(['tenant', 'list'], 'admin-secret-0123456789'), /^NAME\s+TAG\s+ETH0 CAP.*\nacme\s+\d+\s+-\s+-\n$/);
  t.match(
    await exec(['tenant', 'caps', 'acme', '--eth1-ingress', '50mbit'], 'admin-secret-0123456789'),
    /acme\s+\d+\s+-\s+50mbit\/-\n$/,
  );
  await exec(['policy', 'set', '--routed-ranges', '10.8.0.0/16'], 'admin-secret-0123456789');
  const policy = await exec(['policy', 'set', '--infra-allow', '10.0.0.53:udp:53'], 'admin-secret-0123456789');
  t.match(policy, /routed ranges: 10\.8\.0\.0\/16\n/, 'a policy set keeps the fields it was not given');
  t.match(policy, /eth0 may reach: 10\.0\.0\.53\/32 udp\/53\n/);
  await t.rejects(
    exec(['vpc', 'create', 'big', '--cidr', '10.8.0.0/24', '--ingress', '60mbit'], token!),
    { code: 'E_OVER_CAP' },
    'above the plan: refused',
  );
  t.match(await exec(['whoami'], token!), /acme/);
  t.match(
    await exec(['vpc', 'create', 'web', '--cidr', '10.9.0.0/24', '--ingress', '20mbit'], token!),
    /web\s+10\.9\.0\.0\/24\s+vxlan\s+\d+\s+-\s+-\s+20mbit\s+-/,
  );
  const listed = JSON.parse(await exec(['--json', 'vpc', 'list'], token!)) as Array<{
    name: string;
    cidr: string;
    qos: unknown;
  }>;
  t.same(
    listed.map((v) => [v.name, v.cidr, v.qos]),
    [['web', '10.9.0.0/24', { ingressBps: 20_000_000 }]],
  );
  t.match(await exec(['vpc', 'show', 'web'], token!), /^NAME\s+CIDR\s+MODE\s+VNI\s+VLAN\s+MTU\s+INGRESS\s+EGRESS\n/);
  t.match(
    await exec(['vpc', 'qos', 'web', '--egress', '1gbit'], token!),
    /web\s+10\.9\.0\.0\/24\s+vxlan\s+\d+\s+-\s+-\s+-\s+1gbit\n/,
    'vpc qos replaces the defaults',
  );
  t.match(JSON.parse(await exec(['cni-config', 'web'], token!)), {
    cniVersion: '1.1.0',
    plugins: [{ type: 'netd', vpc: 'acme.web' }],
  });
  // The id the API returns ("acme.web") works wherever the name does.
  t.match(await exec(['vpc', 'show', 'acme.web'], token!), /web\s+10\.9\.0\.0\/24/, 'vpc show by id');
  t.match(JSON.parse(await exec(['cni-config', 'acme.web'], token!)), { name: 'vpc-acme.web' }, 'cni-config by id');
  t.match(JSON.parse(await exec(['cni-config', '--external'], token!)), {
    plugins: [{ type: 'netd', external: true }],
  });
  t.equal(
    await exec(['endpoint', 'list', 'web'], token!),
    'ENDPOINT  HOST  IP  MAC  INGRESS  EGRESS  EXTERNAL\n',
    'no endpoints yet: just the header',
  );
  await t.rejects(exec(['vpc', 'show', 'nope'], token!), { code: 'E_NOT_FOUND' });
  await t.rejects(
    exec(['tenant', 'delete', 'acme'], 'admin-secret-0123456789'),
    { code: 'E_CONFLICT' },
    'a tenant with VPCs stays',
  );
  t.equal(await exec(['vpc', 'delete', 'web'], token!), 'VPC web deleted\n');
  t.equal(await exec(['tenant', 'delete', 'acme'], 'admin-secret-0123456789'), 'tenant acme deleted\n');
  t.match(
    await exec(['tenant', 'list'], 'admin-secret-0123456789'),
    /^NAME\s+TAG\s+ETH0 CAP \(IN\/OUT\)\s+ETH1 CAP \(IN\/OUT\)\n$/,
  );
});
