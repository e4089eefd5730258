import { parseCidr, formatCidr, contains, parseIp } from '../core/cidr.js';
import { IpBatch, type IpClient } from '../sys/ip.js';
import { NftClient, NftTransaction } from '../sys/nft.js';
import { SysctlClient } from '../sys/sysctl.js';
import type { CommandRunner, NetnsTarget } from '../sys/runner.js';
import type { Logger } from '../sys/log.js';
import { proxyClaim } from './port-claims.js';

/**
 * How the external (eth0) pool leaves the host: NAT'd to the host's address (`nat`), or routed as
 * it is (`routed`: the host answers ARP for each container's address on its uplink, so the
 * upstream router needs only an on-link route to the pool). The per-container part is
 * attach/external.ts.
 */

export type ExternalMode = 'nat' | 'routed';
export const EXTERNAL_MODES: readonly ExternalMode[] = ['nat', 'routed'];

const NAT_TABLE = 'netd_nat';

/**
 * Converges the proxy entries on the uplink for the external pool: one per local eth0 address
 * in `routed` mode, none in `nat` mode. Entries outside the pool are not netd's and stay.
 * `addresses` is asked after the kernel is read, so an ADD that finished meanwhile is counted.
 */
export async function reconcileExternalProxies(
  ip: IpClient,
  uplink: string,
  poolCidr: string,
  mode: ExternalMode,
  addresses: () => { wanted: Iterable<string>; inFlight: ReadonlySet<string> },
  log: Logger,
): Promise<void> {
  const pool = parseCidr(poolCidr);
  const have = (await ip.proxyNeighbours(uplink)).filter(
    (a) => a.includes(':') === (pool.family === 6) && contains(pool, parseIp(a)),
  );
  const { wanted, inFlight } = addresses();
  const want = new Set(mode === 'routed' ? wanted : []);
  const b = new IpBatch();
  for (const a of want) if (!have.includes(a)) b.proxyNeighReplace(a, uplink);
  for (const a of have) if (!want.has(a) && !inFlight.has(proxyClaim(a))) b.proxyNeighDel(a, uplink);
  if (b.empty) return;
  log.info({ uplink, mode }, 'external proxy entries converged');
  await ip.applyForgivingMissing(b);
}

/**
 * How the external pool leaves through the uplink: `nat` keeps one owned table with a masquerade
 * rule (rewritten atomically); `routed` removes that table and makes the uplink's proxy ARP replies
 * immediate.
 */
export async function ensureExternalEgress(
  runner: CommandRunner,
  hostNetns: NetnsTarget | undefined,
  cidr: string,
  uplink: string,
  mode: ExternalMode,
): Promise<void> {
  const net = formatCidr(parseCidr(cidr));
  const tx = new NftTransaction();
  // Routed: the uplink answers ARP for containers at once, not after a random proxy_delay.
  if (mode === 'routed') await new SysctlClient(runner, hostNetns).set(`net.ipv4.neigh.${uplink}.proxy_delay`, 0);
  if (mode === 'routed') tx.deleteTable('ip', NAT_TABLE);
  else {
    tx.addTable('ip', NAT_TABLE)
      .addChain('ip', NAT_TABLE, 'outbound', { type: 'nat', hook: 'postrouting', priority: 100 })
      .flushChain('ip', NAT_TABLE, 'outbound')
      .addRule('ip', NAT_TABLE, 'outbound', `ip saddr ${net} oifname "${uplink}" masquerade`);
  }
  await new NftClient(runner, hostNetns).apply(tx);
}
