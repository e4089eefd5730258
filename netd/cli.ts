import { AppError, ErrorCodes, describeError, invalidInput, isAppError } from '../core/errors.js';
import { NetdApiClient } from '../tenancy/api/client.js';

/**
 * `netdctl`: netd's API for people. Tables by default, `--json` for scripts.
 *
 *   netdctl [--api URL] [--token T] [--json] COMMAND
 *     health
 *     tenant create NAME | list | show NAME | delete NAME          (admin token)
 *     tenant caps NAME [--eth0-ingress R] [--eth0-egress R] [--eth1-ingress R] [--eth1-egress R]   (admin; none: remove)
 *     whoami                                                      (tenant token)
 *     vpc create NAME --cidr CIDR [--mode vxlan|routed|vlan] [--physnet NAME] [--mtu N] [--ingress RATE] [--egress RATE] | list | show NAME | delete NAME
 *     vpc qos NAME [--ingress RATE] [--egress RATE]             (the VPC's defaults; none: remove them)
 *     endpoint list VPC | endpoint qos VPC ENDPOINT [--external] [--ingress RATE] [--egress RATE]
 *     cni-config VPC | cni-config --external                      (always JSON)
 *
 * RATE: bits per second, with an optional k/m/g suffix and "bit" or "bps" (10mbit, 1g, 500kbit).
 * --api defaults to $NETD_API or unix:///run/netd/api.sock; --token to $NETD_TOKEN.
 * Exit status: 0 ok, 1 the API refused or failed, 2 bad usage (nothing was sent).
 */

export type Command =
  | { kind: 'health' }
  | { kind: 'whoami' }
  | { kind: 'tenant-create' | 'tenant-show' | 'tenant-delete'; name: string }
  | { kind: 'tenant-list' }
  | { kind: 'tenant-caps'; name: string; caps: { eth0?: Qos; eth1?: Qos } }
  | { kind: 'vpc-create'; name: string; cidr: string; mode?: string; physnet?: string; mtu?: number; qos?: Qos }
  | { kind: 'policy-show' }
  | ({ kind: 'policy-set' } & PolicyView)
  | { kind: 'vpc-list' }
  | { kind: 'vpc-show' | 'vpc-delete'; name: string }
  | { kind: 'vpc-qos'; name: string; qos: Qos }
  | { kind: 'endpoint-list'; vpc: string }
  | { kind: 'endpoint-qos'; vpc: string; endpoint: string; qos: Qos; external: boolean }
  | { kind: 'cni-config'; vpc?: string };

interface PolicyView {
  routedRanges?: string[];
  vlanRanges?: Array<{ physnet: string; min: number; max: number }>;
  infraRanges?: string[];
  infraAllow?: Array<{ cidr: string; proto: 'tcp' | 'udp'; port: number }>;
}

export interface Qos {
  ingressBps?: number;
  egressBps?: number;
}

export interface Invocation {
  api: string;
  token: string | undefined;
  json: boolean;
  command: Command;
}

const DEFAULT_API = 'unix:///run/netd/api.sock';
const VALUE_FLAGS = new Set([
  '--api',
  '--token',
  '--cidr',
  '--mode',
  '--physnet',
  '--mtu',
  '--ingress',
  '--egress',
  '--eth0-ingress',
  '--eth0-egress',
  '--eth1-ingress',
  '--eth1-egress',
  '--routed-ranges',
  '--vlan-ranges',
  '--infra-ranges',
  '--infra-allow',
]);
const BOOL_FLAGS = new Set(['--json', '--external', '--help']);

export const USAGE = `usage: netdctl [--api URL] [--token T] [--json] COMMAND
  health
  tenant create NAME | tenant list | tenant show NAME | tenant delete NAME
  tenant caps NAME [--eth0-ingress RATE] [--eth0-egress RATE] [--eth1-ingress RATE] [--eth1-egress RATE]   (admin; none: remove)
  whoami
  vpc create NAME --cidr CIDR [--mode vxlan|routed|vlan] [--physnet NAME] [--mtu N] [--ingress RATE] [--egress RATE]
  vpc list | vpc show NAME | vpc delete NAME
  vpc qos NAME [--ingress RATE] [--egress RATE]
  endpoint list VPC
  endpoint qos VPC ENDPOINT [--ingress RATE] [--egress RATE]
  cni-config VPC | cni-config --external
  policy show | policy set [--routed-ranges CIDR,...] [--vlan-ranges PHYSNET:MIN:MAX,...]   (admin)
                [--infra-ranges CIDR,...] [--infra-allow CIDR:tcp|udp:PORT,...]   (given fields replaced; "" empties one)
RATE: bits/s, e.g. 10mbit, 1gbit, 500kbit, 2500000`;

/** "10mbit" → 10_000_000 bits/s. */
export function parseRate(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kmg]?)(?:bit|bps|b)?(?:\/s)?$/i.exec(text.trim());
  if (!m) throw invalidInput(`"${text}" is not a rate (e.g. 10mbit, 1gbit, 500kbit, 2500000)`);
  const scale = { '': 1, k: 1e3, m: 1e6, g: 1e9 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g'];
  const bps = Math.round(Number(m[1]) * scale);
  if (bps < 1 || bps > 100e9) throw invalidInput(`rate ${text} is out of range (1 bit/s .. 100 Gbit/s)`);
  return bps;
}

/** argv (without node and script) and environment → what to do. Pure; throws E_INVALID_INPUT. */
export function parseCommand(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): Invocation {
  const flags = new Map<string, string>();
  const words: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (VALUE_FLAGS.has(a)) {
      const v = argv[++i];
      if (v === undefined) throw invalidInput(`${a} needs a value`);
      flags.set(a, v);
    } else if (BOOL_FLAGS.has(a)) flags.set(a, 'true');
    else if (a.startsWith('--')) throw invalidInput(`unknown option ${a}`);
    else words.push(a);
  }
  const allowed = (cmd: string, ...names: string[]) => {
    for (const f of flags.keys())
      if (!['--api', '--token', '--json', ...names].includes(f)) throw invalidInput(`${f} does not apply to "${cmd}"`);
  };
  const arity = (cmd: string, n: number) => {
    if (words.length !== n) throw invalidInput(`"${cmd}" takes ${n - (cmd.includes(' ') ? 2 : 1)} argument(s)`);
  };
  const qos = (prefix = '--'): Qos | undefined => {
    const q: Qos = {};
    if (flags.has(`${prefix}ingress`)) q.ingressBps = parseRate(flags.get(`${prefix}ingress`)!);
    if (flags.has(`${prefix}egress`)) q.egressBps = parseRate(flags.get(`${prefix}egress`)!);
    return Object.keys(q).length ? q : undefined;
  };
  const [noun, verb] = words;
  let command: Command;
  switch (`${noun ?? ''} ${verb ?? ''}`.trim()) {
    case 'health':
      arity('health', 1);
      allowed('health');
      command = { kind: 'health' };
      break;
    case 'whoami':
      arity('whoami', 1);
      allowed('whoami');
      command = { kind: 'whoami' };
      break;
    case 'tenant list':
    case 'vpc list':
      arity(`${noun} list`, 2);
      allowed(`${noun} list`);
      command = { kind: noun === 'tenant' ? 'tenant-list' : 'vpc-list' };
      break;
    case 'tenant create':
    case 'tenant show':
    case 'tenant delete':
      arity(`tenant ${verb}`, 3);
      allowed(`tenant ${verb}`);
      command = { kind: `tenant-${verb}` as 'tenant-create', name: words[2]! };
      break;
    case 'tenant caps': {
      arity('tenant caps', 3);
      allowed('tenant caps', '--eth0-ingress', '--eth0-egress', '--eth1-ingress', '--eth1-egress');
      const [eth0, eth1] = [qos('--eth0-'), qos('--eth1-')];
      command = { kind: 'tenant-caps', name: words[2]!, caps: { ...(eth0 && { eth0 }), ...(eth1 && { eth1 }) } };
      break;
    }
    case 'vpc show':
    case 'vpc delete':
      arity(`vpc ${verb}`, 3);
      allowed(`vpc ${verb}`);
      command = { kind: `vpc-${verb}` as 'vpc-show', name: words[2]! };
      break;
    case 'vpc create': {
      arity('vpc create', 3);
      allowed('vpc create', '--cidr', '--mode', '--physnet', '--mtu', '--ingress', '--egress');
      const cidr = flags.get('--cidr');
      if (!cidr) throw invalidInput('vpc create needs --cidr');
      const mtu = flags.has('--mtu') ? Number(flags.get('--mtu')) : undefined;
      if (mtu !== undefined && !Number.isInteger(mtu)) throw invalidInput('--mtu must be an integer');
      const mode = flags.get('--mode');
      if (mode !== undefined && !['vxlan', 'routed', 'vlan'].includes(mode))
        throw invalidInput('--mode must be vxlan, routed or vlan');
      const physnet = flags.get('--physnet');
      const q = qos();
      command = {
        kind: 'vpc-create',
        name: words[2]!,
        cidr,
        ...(mode !== undefined && { mode }),
        ...(physnet !== undefined && { physnet }),
        ...(mtu !== undefined && { mtu }),
        ...(q && { qos: q }),
      };
      break;
    }
    case 'policy show':
      arity('policy show', 2);
      allowed('policy show');
      command = { kind: 'policy-show' };
      break;
    case 'policy set': {
      arity('policy set', 2);
      allowed('policy set', '--routed-ranges', '--vlan-ranges', '--infra-ranges', '--infra-allow');
      const list = (flag: string) => flags.get(flag)?.split(',').filter(Boolean);
      const routedRanges = list('--routed-ranges');
      const vlanRanges = list('--vlan-ranges')?.map((r) => {
        const m = /^([a-z][a-z0-9-]{0,30}):(\d{1,4}):(\d{1,4})$/.exec(r);
        if (!m) throw invalidInput(`VLAN range "${r}" must be physnet:min:max`);
        return { physnet: m[1]!, min: Number(m[2]), max: Number(m[3]) };
      });
      const infraRanges = list('--infra-ranges');
      const infraAllow = list('--infra-allow')?.map((r) => {
        const m = /^([0-9.]+(?:\/\d{1,2})?):(tcp|udp):(\d{1,5})$/.exec(r);
        if (!m) throw invalidInput(`allow-list entry "${r}" must be cidr:tcp|udp:port`);
        const cidr = m[1]!.includes('/') ? m[1]! : `${m[1]!}/32`;
        return { cidr, proto: m[2] as 'tcp' | 'udp', port: Number(m[3]) };
      });
      command = {
        kind: 'policy-set',
        ...(routedRanges && { routedRanges }),
        ...(vlanRanges && { vlanRanges }),
        ...(infraRanges && { infraRanges }),
        ...(infraAllow && { infraAllow }),
      };
      break;
    }
    case 'vpc qos':
      arity('vpc qos', 3);
      allowed('vpc qos', '--ingress', '--egress');
      command = { kind: 'vpc-qos', name: words[2]!, qos: qos() ?? {} };
      break;
    case 'endpoint list':
      arity('endpoint list', 3);
      allowed('endpoint list');
      command = { kind: 'endpoint-list', vpc: words[2]! };
      break;
    case 'endpoint qos': {
      arity('endpoint qos', 4);
      allowed('endpoint qos', '--ingress', '--egress', '--external');
      command = {
        kind: 'endpoint-qos',
        vpc: words[2]!,
        endpoint: words[3]!,
        qos: qos() ?? {},
        external: flags.has('--external'),
      };
      break;
    }
    default:
      if (noun === 'cni-config') {
        allowed('cni-config', '--external');
        const external = flags.has('--external');
        if (external ? words.length !== 1 : words.length !== 2)
          throw invalidInput('cni-config takes a VPC name, or --external');
        command = external ? { kind: 'cni-config' } : { kind: 'cni-config', vpc: words[1]! };
        break;
      }
      throw invalidInput(words.length ? `unknown command "${words.join(' ')}"` : 'no command given');
  }
  return {
    api: flags.get('--api') ?? env.NETD_API ?? DEFAULT_API,
    token: flags.get('--token') ?? env.NETD_TOKEN,
    json: flags.has('--json'),
    command,
  };
}

/** Rows as an aligned text table; missing cells print as "-". */
export function formatTable(
  rows: ReadonlyArray<Record<string, unknown>>,
  columns: ReadonlyArray<{ key: string; title: string }>,
): string {
  const cell = (v: unknown) =>
    v === undefined || v === null || v === '' ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v);
  const body = rows.map((r) => columns.map((c) => cell(r[c.key])));
  const widths = columns.map((c, i) => Math.max(c.title.length, ...body.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((x, i) => (i === cells.length - 1 ? x : x.padEnd(widths[i]!))).join('  ');
  return [line(columns.map((c) => c.title)), ...body.map(line)].join('\n') + '\n';
}

const rate = (bps: unknown) => {
  if (typeof bps !== 'number') return undefined;
  if (bps >= 1e9 && bps % 1e7 === 0) return `${bps / 1e9}gbit`;
  if (bps >= 1e6 && bps % 1e4 === 0) return `${bps / 1e6}mbit`;
  if (bps >= 1e3) return `${bps / 1e3}kbit`;
  return `${bps}bit`;
};
const withRates = (r: Record<string, unknown>) => {
  const q = (r.qos ?? {}) as Qos;
  const x = r.external as { ip: string; qos?: Qos } | undefined;
  const xq = x?.qos ?? {};
  const eth0 =
    x &&
    [
      x.ip,
      ...(xq.ingressBps !== undefined || xq.egressBps !== undefined
        ? [`${rate(xq.ingressBps) ?? '-'}/${rate(xq.egressBps) ?? '-'}`]
        : []),
    ].join(' ');
  return { ...r, ingress: rate(q.ingressBps), egress: rate(q.egressBps), eth0 };
};

const VPC_COLUMNS = [
  { key: 'name', title: 'NAME' },
  { key: 'cidr', title: 'CIDR' },
  { key: 'mode', title: 'MODE' },
  { key: 'vni', title: 'VNI' },
  { key: 'vlan', title: 'VLAN' },
  { key: 'mtu', title: 'MTU' },
  { key: 'ingress', title: 'INGRESS' },
  { key: 'egress', title: 'EGRESS' },
];
const ENDPOINT_COLUMNS = [
  { key: 'id', title: 'ENDPOINT' },
  { key: 'host', title: 'HOST' },
  { key: 'ip', title: 'IP' },
  { key: 'mac', title: 'MAC' },
  { key: 'ingress', title: 'INGRESS' },
  { key: 'egress', title: 'EGRESS' },
  { key: 'eth0', title: 'EXTERNAL' },
];
const TENANT_COLUMNS = [
  { key: 'name', title: 'NAME' },
  { key: 'tag', title: 'TAG' },
  { key: 'eth0Cap', title: 'ETH0 CAP (IN/OUT)' },
  { key: 'eth1Cap', title: 'ETH1 CAP (IN/OUT)' },
];
const capText = (q: Qos | undefined) => q && `${rate(q.ingressBps) ?? '-'}/${rate(q.egressBps) ?? '-'}`;
const withCaps = (t: Record<string, unknown>) => {
  const caps = (t.caps ?? {}) as { eth0?: Qos; eth1?: Qos };
  return { ...t, eth0Cap: capText(caps.eth0), eth1Cap: capText(caps.eth1) };
};

/** Carries out one command; writes what people (or `--json` scripts) read to `out`. */
export async function run(inv: Invocation, client: NetdApiClient, out: (text: string) => void): Promise<void> {
  const c = inv.command;
  const show = (data: unknown, table: () => string) => out(inv.json ? JSON.stringify(data, null, 2) + '\n' : table());
  const enc = encodeURIComponent;
  switch (c.kind) {
    case 'health': {
      const ready = await client.call<{ ready: boolean }>('GET', '/readyz');
      return show(ready, () => `netd API at ${inv.api}: ${ready.ready ? 'ready' : 'not ready'}\n`);
    }
    case 'whoami': {
      const me = await client.call<Record<string, unknown>>('GET', '/v1/tenant');
      return show(me, () => formatTable([withCaps(me)], TENANT_COLUMNS));
    }
    case 'tenant-create': {
      const t = await client.call<{ name: string; tag: number; token: string }>('POST', '/v1/tenants', {
        name: c.name,
      });
      return show(t, () => `tenant ${t.name} created (tag ${t.tag})\ntoken (shown once, store it now): ${t.token}\n`);
    }
    case 'tenant-list': {
      const list = await client.call<Array<Record<string, unknown>>>('GET', '/v1/tenants');
      return show(list, () => formatTable(list.map(withCaps), TENANT_COLUMNS));
    }
    case 'tenant-show': {
      const t = await client.call<Record<string, unknown>>('GET', `/v1/tenants/${enc(c.name)}`);
      return show(t, () => formatTable([withCaps(t)], TENANT_COLUMNS));
    }
    case 'tenant-caps': {
      const t = await client.call<Record<string, unknown>>('PUT', `/v1/tenants/${enc(c.name)}/caps`, c.caps);
      return show(t, () => formatTable([withCaps(t)], TENANT_COLUMNS));
    }
    case 'tenant-delete':
      await client.call('DELETE', `/v1/tenants/${enc(c.name)}`);
      return show({ deleted: c.name }, () => `tenant ${c.name} deleted\n`);
    case 'vpc-create': {
      const v = await client.call<Record<string, unknown>>('POST', '/v1/vpcs', {
        name: c.name,
        cidr: c.cidr,
        ...(c.mode !== undefined && { mode: c.mode }),
        ...(c.physnet !== undefined && { physnet: c.physnet }),
        ...(c.mtu !== undefined && { mtu: c.mtu }),
        ...(c.qos && { qos: c.qos }),
      });
      return show(v, () => formatTable([withRates(v)], VPC_COLUMNS));
    }
    case 'vpc-list': {
      const list = await client.call<Array<Record<string, unknown>>>('GET', '/v1/vpcs');
      return show(list, () => formatTable(list.map(withRates), VPC_COLUMNS));
    }
    case 'vpc-show': {
      const v = await client.call<Record<string, unknown>>('GET', `/v1/vpcs/${enc(c.name)}`);
      return show(v, () => formatTable([withRates(v)], VPC_COLUMNS));
    }
    case 'vpc-qos': {
      const v = await client.call<Record<string, unknown>>('PATCH', `/v1/vpcs/${enc(c.name)}`, { qos: c.qos });
      return show(v, () => formatTable([withRates(v)], VPC_COLUMNS));
    }
    case 'vpc-delete':
      await client.call('DELETE', `/v1/vpcs/${enc(c.name)}`);
      return show({ deleted: c.name }, () => `VPC ${c.name} deleted\n`);
    case 'endpoint-list': {
      const list = await client.call<Array<Record<string, unknown>>>('GET', `/v1/vpcs/${enc(c.vpc)}/endpoints`);
      return show(list, () => formatTable(list.map(withRates), ENDPOINT_COLUMNS));
    }
    case 'endpoint-qos': {
      const e = await client.call<Record<string, unknown>>(
        'PATCH',
        `/v1/vpcs/${enc(c.vpc)}/endpoints/${enc(c.endpoint)}${c.external ? '/external' : ''}`,
        { qos: c.qos },
      );
      return show(e, () => formatTable([withRates(e)], ENDPOINT_COLUMNS));
    }
    case 'policy-show':
    case 'policy-set': {
      // set: the fields given replace the current ones, the others stay (the API replaces the whole).
      let p = await client.call<PolicyView>('GET', '/v1/policy');
      if (c.kind === 'policy-set') {
        const { kind: _kind, ...given } = c;
        p = await client.call<PolicyView>('PUT', '/v1/policy', { ...p, ...given });
      }
      return show(
        p,
        () =>
          `routed ranges: ${p.routedRanges?.join(', ') || 'any (not restricted)'}\n` +
          `VLAN ranges:   ${p.vlanRanges?.map((r) => `${r.physnet} ${r.min}-${r.max}`).join(', ') || 'physnet0 100-4094 (default)'}\n` +
          `infrastructure: every host, the etcd members${p.infraRanges?.length ? `, ${p.infraRanges.join(', ')}` : ''}\n` +
          `eth0 may reach: ${p.infraAllow?.map((r) => `${r.cidr} ${r.proto}/${r.port}`).join(', ') || 'none of it'}\n`,
      );
    }
    case 'cni-config': {
      const conf = await client.call<unknown>(
        'GET',
        c.vpc === undefined ? '/v1/external/cni-config' : `/v1/vpcs/${enc(c.vpc)}/cni-config`,
      );
      return out(JSON.stringify(conf, null, 2) + '\n');
    }
  }
}

/** The whole CLI; resolves to the exit status. */
export async function main(): Promise<number> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.length === 0) {
    process.stdout.write(`${USAGE}\n`);
    return argv.length === 0 ? 2 : 0;
  }
  let inv: Invocation;
  try {
    inv = parseCommand(argv, process.env);
  } catch (err) {
    process.stderr.write(`netdctl: ${describeError(err)}\n${USAGE}\n`);
    return 2;
  }
  try {
    await run(inv, new NetdApiClient(inv.api, inv.token), (text) => process.stdout.write(text));
    return 0;
  } catch (err) {
    const code = isAppError(err) ? err.code : ErrorCodes.INTERNAL;
    const message = err instanceof AppError ? err.message : describeError(err);
    process.stderr.write(`netdctl: ${code}: ${message}\n`);
    return 1;
  }
}
