import { FakeKernelUnmodelled } from './errors.js';
import { sysctlDevice, type FakeNetns } from './state.js';

/**
 * `sysctl -w` in the fake: a value per key per namespace. Only keys the fake knows exist are
 * accepted (a per-device key needs its device); anything else is unmodelled rather than guessed.
 */

/** Per-device neighbour settings: the same in both families. */
const NEIGH_KEYS = [
  'proxy_delay',
  'proxy_qlen',
  'base_reachable_time_ms',
  'gc_stale_time',
  'ucast_solicit',
  'app_solicit',
];

const PER_DEVICE: Record<string, readonly string[]> = {
  'ipv4.neigh': NEIGH_KEYS,
  'ipv6.neigh': NEIGH_KEYS,
  'ipv4.conf': ['forwarding', 'proxy_arp', 'rp_filter', 'arp_ignore', 'arp_announce', 'accept_local', 'route_localnet'],
  'ipv6.conf': ['forwarding', 'disable_ipv6', 'accept_ra', 'autoconf', 'accept_dad', 'keep_addr_on_down'],
};
const GLOBAL = new Set(['net.ipv4.ip_forward', 'net.ipv4.ip_nonlocal_bind', 'net.ipv6.ip_nonlocal_bind']);

export function runSysctl(ns: FakeNetns, args: string[]): { stdout: string; stderr: string; exitCode: number } {
  const quiet = args[0] === '-q';
  const rest = quiet ? args.slice(1) : args;
  if (rest[0] !== '-w' || rest.length < 2)
    throw new FakeKernelUnmodelled(`sysctl ${args.join(' ')} (only "sysctl [-q] -w KEY=VALUE...")`);
  // Several assignments: applied in order, stopping at the first failure (as sysctl does).
  let stdout = '';
  for (const a of rest.slice(1)) {
    const one = assignOne(ns, a, args, quiet);
    stdout += one.stdout;
    if (one.exitCode !== 0) return { ...one, stdout };
  }
  return { stdout, stderr: '', exitCode: 0 };
}

function assignOne(
  ns: FakeNetns,
  text: string,
  args: string[],
  quiet: boolean,
): { stdout: string; stderr: string; exitCode: number } {
  const assignment = /^([^=]+)=(.*)$/.exec(text);
  if (!assignment) throw new FakeKernelUnmodelled(`sysctl ${args.join(' ')} (only "sysctl [-q] -w KEY=VALUE...")`);
  const [, key, value] = assignment as unknown as [string, string, string];
  const path = `/proc/sys/${key.replaceAll('.', '/')}`;
  const m = /^net\.(ipv[46]\.(?:neigh|conf))\.([^.]+)\.([a-z0-9_]+)$/.exec(key);
  if (m) {
    if (!PER_DEVICE[m[1]!]!.includes(m[3]!)) throw new FakeKernelUnmodelled(`the sysctl ${key}`);
    const dev = sysctlDevice(key);
    const allOrDefault = m[2] === 'default' || (m[2] === 'all' && m[1]!.endsWith('conf'));
    if (dev !== undefined ? !ns.link(dev) : !allOrDefault)
      return { stdout: '', stderr: `sysctl: cannot stat ${path}: No such file or directory\n`, exitCode: 1 };
  } else if (!GLOBAL.has(key)) throw new FakeKernelUnmodelled(`the sysctl ${key}`);
  if (!/^[A-Za-z0-9_ -]*$/.test(value))
    return { stdout: '', stderr: `sysctl: setting key "${key}": Invalid argument\n`, exitCode: 1 };
  ns.sysctls.set(key, value);
  return { stdout: quiet ? '' : `${key} = ${value}\n`, stderr: '', exitCode: 0 };
}
