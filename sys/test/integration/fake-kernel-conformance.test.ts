import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';
import t from 'tap';
import { FakeKernel } from '../../fake-kernel.js';
import { ExecRunner, isCommandError, SpawnerRunner } from '../../runner.js';
import { requireRoot, scratchNetns } from '../../../test-netns/testing.js';
import { describe, failures, phases, readState, type Scene } from '../fake-kernel-scenario.js';

/**
 * Keeps the FakeKernel honest: netd's sequence of sys/ calls (fake-kernel-scenario.ts) runs
 * against the real kernel in scratch namespaces and against the fake; after every phase the
 * states read back through the same sys/ read calls must be equal, and failing commands must fail
 * with the same exit code, stderr and kind.
 *
 * Normalisations, each for something the fake cannot know:
 * 1. MACs the kernel drew at random (links the scenario gave no address) become "<mac of NAME>";
 *    a bridge's MAC, which the kernel takes from its smallest port MAC, becomes "<smallest port
 *    mac>" when it is that. MACs the scenario set are compared as they are.
 * 2. Automatic qdisc handles (a kernel-global counter: 800a:, 800b:, ...) become "auto:".
 * 3. Entries the kernel makes by itself and the fake does not model are dropped from the real
 *    side: IPv6 link-local addresses (addrgenmode eui64, with their DAD flags), the "self" FDB
 *    entries of devices' multicast address lists (33:33:..., 01:00:5e:...), and neighbour entries
 *    without a link-layer address (INCOMPLETE/FAILED resolutions the kernel's own traffic causes).
 * 4. Fields the fake does not render are dropped from the real side, by name (UNRENDERED): GSO/TSO
 *    limits, bridge and bridge-port timers and options netd never sets. Any other field the real
 *    tools print and the fake lacks is a difference.
 * 5. Lists whose order is the kernel's hash order (neighbours, FDB) are sorted on both sides.
 * 6. The fake's veths get one queue per possible CPU, read from /sys.
 * Carrier and operstate are compared as they are, but the kernel settles them asynchronously
 * (linkwatch), as it deletes a namespace: the real side is read until it matches, for up to 5 s.
 */

/** Fields the fake does not render, by where they appear. */
const UNRENDERED: Record<'link' | 'info_data' | 'info_slave_data', ReadonlySet<string>> = {
  link: new Set([
    'gso_max_size',
    'gso_max_segs',
    'tso_max_size',
    'tso_max_segs',
    'gro_max_size',
    'gso_ipv4_max_size',
    'gro_ipv4_max_size',
    'parentbus',
    'parentdev',
  ]),
  // bridge options and timers netd never sets
  info_data: new Set([
    'bridge_id',
    'root_id',
    'root_port',
    'root_path_cost',
    'topology_change',
    'topology_change_detected',
    'hello_timer',
    'tcn_timer',
    'topology_change_timer',
    'gc_timer',
    'group_fwd_mask',
    'group_addr',
    'no_linklocal_learn',
    'mcast_vlan_snooping',
    'mcast_router',
    'mcast_query_use_ifaddr',
    'mcast_querier',
    'mcast_hash_elasticity',
    'mcast_hash_max',
    'mcast_last_member_cnt',
    'mcast_startup_query_cnt',
    'mcast_last_member_intvl',
    'mcast_membership_intvl',
    'mcast_querier_intvl',
    'mcast_query_intvl',
    'mcast_query_response_intvl',
    'mcast_startup_query_intvl',
    'mcast_stats_enabled',
    'mcast_igmp_version',
    'mcast_mld_version',
    'nf_call_iptables',
    'nf_call_ip6tables',
    'nf_call_arptables',
  ]),
  // bridge port options and timers netd never sets
  info_slave_data: new Set([
    'cost',
    'id',
    'no',
    'designated_port',
    'designated_cost',
    'bridge_id',
    'root_id',
    'hold_timer',
    'message_age_timer',
    'forward_delay_timer',
    'topology_change_ack',
    'config_pending',
    'proxy_arp_wifi',
    'multicast_router',
    'mcast_to_unicast',
    'group_fwd_mask',
    'group_fwd_mask_str',
    'vlan_tunnel',
    'locked',
    'mab',
    'mcast_n_groups',
    'mcast_max_groups',
    'neigh_vlan_suppress',
    'backup_nhid',
  ]),
};

/** MACs the scenario sets itself (compared as they are). */
const SET_MACS = new Set(['00:00:00:00:00:00', '02:2a:0a:14:00:05', '02:7f:00:00:00:01', '02:7f:00:00:00:02']);
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

interface LinkLike {
  ifname: string;
  address?: string;
  master?: string;
  linkinfo?: { info_kind?: string };
}

/** Tokens for random MACs; a bridge's own address, when it is its smallest port's, by bridge name. */
function macTokens(state: Record<string, unknown>): { byMac: Map<string, string>; bridges: Map<string, string> } {
  const links = [...((state['host links'] as LinkLike[]) ?? []), ...((state['container links'] as LinkLike[]) ?? [])];
  const byMac = new Map<string, string>();
  const bridges = new Map<string, string>();
  const isBridge = (l: LinkLike) => l.linkinfo?.info_kind === 'bridge';
  for (const l of links) {
    if (l.address && !SET_MACS.has(l.address) && !isBridge(l)) byMac.set(l.address, `<mac of ${l.ifname}>`);
  }
  for (const br of links.filter(isBridge)) {
    const ports = links.filter((p) => p.master === br.ifname && p.address).map((p) => p.address!);
    if (br.address && ports.length > 0 && br.address === ports.sort()[0]) bridges.set(br.ifname, '<smallest port mac>');
    else if (br.address && !SET_MACS.has(br.address)) byMac.set(br.address, `<mac of ${br.ifname}>`);
  }
  return { byMac, bridges };
}

const isKernelMade = (x: unknown): boolean => {
  if (x === null || typeof x !== 'object') return false;
  const o = x as Record<string, unknown>;
  if (o.family === 'inet6' && o.scope === 'link') return true;
  // A neighbour being resolved (INCOMPLETE, then FAILED): the kernel's own IPv6 DAD and MLD
  // packets, flooded by the bridge to the remote VTEPs, make it ARP for them on the uplink.
  if ('dst' in o && Array.isArray(o.state) && !('lladdr' in o) && !('mac' in o)) return true;
  const mac = typeof o.mac === 'string' ? o.mac : '';
  return (
    Array.isArray(o.flags) && o.flags.includes('self') && !('dst' in o) && (parseInt(mac.slice(0, 2), 16) & 1) === 1
  );
};

const SORTED = /neighbours|fdb/;

/** The normalised form of one side (`real`: also drop what the fake does not render or make). */
function normalise(state: Record<string, unknown>, real: boolean): Record<string, unknown> {
  const tokens = macTokens(state);
  const walk = (v: unknown, parent = ''): unknown => {
    if (Array.isArray(v)) return v.filter((x) => !(real && isKernelMade(x))).map((x) => walk(x));
    if (v !== null && typeof v === 'object') {
      const unrendered = parent === 'info_data' || parent === 'info_slave_data' ? UNRENDERED[parent] : UNRENDERED.link;
      const bridgeMac = tokens.bridges.get(String((v as { ifname?: unknown }).ifname));
      const out: Record<string, unknown> = {};
      for (const [k, x] of Object.entries(v)) {
        if (real && unrendered.has(k)) continue;
        if (k === 'handle' && typeof x === 'string' && /^8[0-9a-f]{3}:$/.test(x)) out[k] = 'auto:';
        else if (k === 'address' && bridgeMac) out[k] = bridgeMac;
        else out[k] = walk(x, k);
      }
      return out;
    }
    if (typeof v === 'string' && MAC.test(v)) return tokens.byMac.get(v) ?? v;
    return v;
  };
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(state)) {
    const n = walk(value);
    out[key] =
      SORTED.test(key) && Array.isArray(n)
        ? [...n].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1))
        : n;
  }
  return out;
}

function possibleCpus(): number {
  // "0-1" or "0-3,5": count the CPUs the kernel may bring up (veth sizes its queues by them).
  return readFileSync('/sys/devices/system/cpu/possible', 'utf8')
    .trim()
    .split(',')
    .reduce((n, part) => {
      const [a = 0, b] = part.split('-').map(Number);
      return n + (b === undefined ? 1 : b - a + 1);
    }, 0);
}

t.test('the fake kernel reads back like the real one after each step of netd', async (t) => {
  if (!requireRoot(t)) return;
  const started = Date.now();
  // netd's own way of running commands (a posix_spawn helper): ~5x faster than Node's spawn here.
  const spawner = SpawnerRunner.available() ? new SpawnerRunner() : undefined;
  t.teardown(() => spawner?.close());
  const real = spawner ?? new ExecRunner();
  const host = await scratchNetns(t, real);
  const container = await scratchNetns(t, real);
  const fake = new FakeKernel({ cpus: possibleCpus() });
  for (const name of [host, container]) {
    await fake.run({ argv: ['ip', 'netns', 'add', name] });
    await fake.run({ argv: ['ip', 'link', 'set', 'lo', 'up'], netns: { name } });
  }
  const scene = (runner: Scene['runner']): Scene => ({
    runner,
    host: { name: host },
    container: { path: `/run/netns/${container}` },
  });
  const realScene = scene(real);
  const fakeScene = scene(fake);
  let containerGone = false;
  for (const phase of phases) {
    await phase.run(realScene);
    await phase.run(fakeScene);
    if (phase.name === 'container netns deleted') containerGone = true;
    const want = normalise(await readState(fakeScene, { containerGone }), false);
    let got: Record<string, unknown> = {};
    const deadline = Date.now() + 5_000;
    const phaseStart = Date.now();
    let reads = 0;
    do {
      reads++;
      // The kernel deletes a namespace's devices asynchronously: a link listed a moment ago may
      // be gone when its neighbours are read. That is the state still moving, so read again.
      const read = await readState(realScene, { containerGone }).catch((err: unknown) => {
        if (isCommandError(err, 'not-found') && Date.now() < deadline) return undefined;
        throw err;
      });
      if (read !== undefined) {
        got = normalise(read, true);
        if (isDeepStrictEqual(got, want)) break;
      }
      await new Promise((r) => setTimeout(r, 50));
    } while (Date.now() < deadline);
    t.comment(`${phase.name}: ${reads} reads of the real side in ${Date.now() - phaseStart} ms`);
    for (const key of new Set([...Object.keys(want), ...Object.keys(got)]))
      t.same(want[key], got[key], `${phase.name}: ${key}`);

    if (phase.name === 'eth0') {
      for (const f of failures) {
        const outcome = async (s: Scene) => f.run(s).then(() => 'succeeded', describe);
        t.same(await outcome(fakeScene), await outcome(realScene), `fails alike: ${f.name}`);
      }
    }
  }
  t.comment(`scenario run on both in ${Date.now() - started} ms`);
});
