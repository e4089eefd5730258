import type { TestContainer } from '../../test-netns/containers.js';
import type { ClusterSession } from '../../test-netns/harness.js';
import { eventually } from '../../test-netns/testing.js';
import { killDaemon } from '../../sys/process.js';
import { noNetdRouting, type NetdTestbed, type TestbedTest } from './netd-hosts.js';

/** What routed.test and routed6.test attach: a container per name, on a host, in a VPC. */
export type MadeContainers = Map<string, { c: TestContainer; host: string; vpc: string; ip: string }>;

/**
 * A container per [name, host, VPC], each given eth1 by a CNI ADD through the netd plugin; returns
 * them with their addresses, and each ADD's result by name.
 */
export async function attachAll(
  t: TestbedTest,
  s: ClusterSession,
  tb: NetdTestbed,
  wanted: ReadonlyArray<readonly [name: string, host: string, vpc: string]>,
): Promise<{ made: MadeContainers; results: Map<string, Record<string, unknown>> }> {
  const made: MadeContainers = new Map();
  const results = new Map<string, Record<string, unknown>>();
  for (const [name, host, vpc] of wanted) {
    const c = await s.containers.add({ host, name });
    const add = await tb.plugin(
      host,
      'ADD',
      { cniVersion: '1.0.0', name: `vpc-${vpc}`, type: 'netd', vpc },
      { CNI_CONTAINERID: name, CNI_NETNS: c.netnsPath, CNI_IFNAME: 'eth1' },
    );
    t.ok(add.ok, `ADD ${name}: ${JSON.stringify(add.out)}`);
    const ip = ((add.out.ips as Array<{ address: string }> | undefined)?.[0]?.address ?? '').split('/')[0]!;
    made.set(name, { c, host, vpc, ip });
    results.set(name, add.out);
  }
  return { made, results };
}

/**
 * The end both routed suites share: h2's netd dies (SIGKILL), h1 withdraws the route towards h2's
 * block once h2's lease is gone and puts it back when h2 returns, traffic flows again; then every
 * container is DELeted and neither host keeps a route, rule or guarded port of netd's.
 */
export async function deadHostThenCleanup(
  t: TestbedTest,
  s: ClusterSession,
  tb: NetdTestbed,
  opts: { towardsH2: () => Promise<boolean>; reachesAgain: () => Promise<boolean>; made: MadeContainers },
): Promise<void> {
  killDaemon(tb.daemons.get('h2')!.handle, 'SIGKILL');
  await tb.daemons.get('h2')!.handle.exited;
  t.ok(
    await eventually(async () => !(await opts.towardsH2()), 15_000),
    "h1 withdrew h2's block after h2's lease expired",
  );
  await tb.start(['h2']);
  t.ok(await eventually(opts.towardsH2, 15_000), 'and routes it again once h2 is back');
  t.ok(await eventually(opts.reachesAgain, 15_000), 'the VPC is reachable across the hosts again');
  for (const [name, m] of opts.made) {
    const del = await tb.plugin(
      m.host,
      'DEL',
      { cniVersion: '1.0.0', name: `vpc-${m.vpc}`, type: 'netd', vpc: m.vpc },
      { CNI_CONTAINERID: name, CNI_NETNS: m.c.netnsPath, CNI_IFNAME: 'eth1' },
    );
    t.ok(del.ok, `DEL ${name}`);
  }
  for (const h of ['h1', 'h2']) {
    t.ok(
      await eventually(() => noNetdRouting(s.runner, s.cluster.host(h).netns), 10_000),
      `${h}: no routed rule, route or guarded port left`,
    );
  }
}
