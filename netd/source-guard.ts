import { formatIp, parseIp } from '../core/cidr.js';
import { NftTransaction, type NftClient } from '../sys/nft.js';
import type { Logger } from '../sys/log.js';
import { ifname } from '../sys/tokens.js';

/**
 * The IPv6 half of routed mode's anti-spoofing. IPv4 ports get strict reverse-path filtering
 * (rp_filter 1); IPv6 has no such sysctl, so each IPv6 routed port is listed with its container's
 * one address in an nftables table of netd's own, and a packet arriving on a listed port with
 * another source is dropped (and counted) before routing: it never picks another VPC's table by
 * its source. Link-local and unspecified sources pass: neighbour discovery needs them, and the
 * kernel never forwards them off the link.
 *
 * Elements, not rules, change per container (one hash lookup per packet, whatever the count).
 */

export const GUARD_TABLE = 'netd_guard6';
const PORTS = 'ports';
const OWN = 'own';

/** A guarded port and the one source it may send from. */
export interface GuardEntry {
  port: string;
  ip: string;
}

export function guardKey(e: GuardEntry): string {
  return `${e.port}|${formatIp(parseIp(e.ip))}`;
}

function portElement(port: string): string {
  return `"${ifname(port)}"`;
}

function ownElement(e: GuardEntry): string {
  const ip = parseIp(e.ip);
  if (ip.family !== 6) throw new Error(`source guard: ${e.ip} is not an IPv6 address`);
  return `"${ifname(e.port)}" . ${formatIp(ip)}`;
}

/** The table, its sets and its chain, as one idempotent transaction (the chain is rewritten). */
export function guardSetup(tx = new NftTransaction()): NftTransaction {
  return tx
    .addTable('ip6', GUARD_TABLE)
    .addSet('ip6', GUARD_TABLE, PORTS, { type: 'ifname' })
    .addSet('ip6', GUARD_TABLE, OWN, { type: 'ifname . ipv6_addr' })
    .addChain('ip6', GUARD_TABLE, 'spoof', { type: 'filter', hook: 'prerouting', priority: 'raw' })
    .flushChain('ip6', GUARD_TABLE, 'spoof')
    .addRule('ip6', GUARD_TABLE, 'spoof', 'ip6 saddr fe80::/10 accept')
    .addRule('ip6', GUARD_TABLE, 'spoof', 'ip6 saddr :: accept')
    .addRule('ip6', GUARD_TABLE, 'spoof', `iifname @${PORTS} iifname . ip6 saddr != @${OWN} counter drop`);
}

export class SourceGuard {
  /** Whether this process has put the table in place (once; a restart does it again). */
  private ready = false;
  /** An ADD added elements since the last reconcile (which then looks, whatever else it knows). */
  touched = false;

  constructor(
    private readonly nft: NftClient,
    private readonly log: Logger,
  ) {}

  /**
   * Guards one port (an ADD, before the container's side comes up): the table with it if needed,
   * and again if it went away since (someone flushed the ruleset).
   */
  async add(e: GuardEntry): Promise<void> {
    const elements = (tx: NftTransaction) =>
      tx
        .addElements('ip6', GUARD_TABLE, PORTS, [portElement(e.port)])
        .addElements('ip6', GUARD_TABLE, OWN, [ownElement(e)]);
    const apply = async (tx: NftTransaction) => {
      this.log.debug({ nft: tx.render() }, 'nft');
      await this.nft.apply(tx);
    };
    this.touched = true;
    if (this.ready) {
      try {
        return await apply(elements(new NftTransaction()));
      } catch {
        this.ready = false;
      }
    }
    await apply(elements(guardSetup()));
    this.ready = true;
  }

  /** Unguards a port whose container is gone (its DEL); absent already is fine. */
  async remove(e: GuardEntry): Promise<void> {
    const tx = new NftTransaction()
      .deleteElements('ip6', GUARD_TABLE, OWN, [ownElement(e)])
      .deleteElements('ip6', GUARD_TABLE, PORTS, [portElement(e.port)]);
    this.log.debug({ nft: tx.render() }, 'nft');
    // nft has no "delete if present": a missing element fails the transaction, which the
    // reconciler's next run makes right anyway.
    await this.nft
      .apply(tx)
      .catch((err: unknown) => this.log.debug({ err: String(err) }, 'guard elements not removed'));
  }

  /**
   * Converges the guarded ports to `desired` exactly: one read, one transaction. Kept besides: the
   * elements of ports an ADD is wiring right now, and those of records newer than `desired`
   * (`current`: guard keys). An element of a port name now used by another container (its DEL
   * left it) goes. Nothing is read or created
   * while no IPv6 routed port was ever wanted by this process and no table is left from an earlier one.
   */
  async reconcile(
    desired: ReadonlyMap<string, GuardEntry>,
    keep: () => { inFlight: ReadonlySet<string>; current: ReadonlySet<string> },
  ): Promise<void> {
    this.touched = false;
    const have = await this.read();
    if (!have && desired.size === 0) return;
    // Asked after the read: what an ADD or a record made since the desired state was computed.
    const { inFlight: protect, current } = keep();
    const tx = this.ready && have ? new NftTransaction() : guardSetup();
    const haveOwn = have?.own ?? new Map<string, GuardEntry>();
    const havePorts = have?.ports ?? new Set<string>();
    const wantedPorts = new Set([...desired.values()].map((e) => e.port));
    tx.deleteElements(
      'ip6',
      GUARD_TABLE,
      OWN,
      [...haveOwn]
        .filter(([k, e]) => !desired.has(k) && !current.has(k) && !protect.has(e.port))
        .map(([, e]) => ownElement(e)),
    );
    // A port stays guarded while anything keeps one of its elements.
    const currentPorts = new Set([...current].map((k) => k.slice(0, k.indexOf('|'))));
    tx.deleteElements(
      'ip6',
      GUARD_TABLE,
      PORTS,
      [...havePorts].filter((p) => !wantedPorts.has(p) && !protect.has(p) && !currentPorts.has(p)).map(portElement),
    );
    tx.addElements('ip6', GUARD_TABLE, PORTS, [...wantedPorts].filter((p) => !havePorts.has(p)).map(portElement));
    tx.addElements(
      'ip6',
      GUARD_TABLE,
      OWN,
      [...desired].filter(([k]) => !haveOwn.has(k)).map(([, e]) => ownElement(e)),
    );
    if (tx.empty) return;
    this.log.debug({ nft: tx.render() }, 'nft');
    await this.nft.apply(tx);
    this.ready = true;
  }

  private async read(): Promise<{ ports: Set<string>; own: Map<string, GuardEntry> } | undefined> {
    const table = await this.nft.table('ip6', GUARD_TABLE);
    if (!table) return undefined;
    const ports = new Set<string>();
    const own = new Map<string, GuardEntry>();
    for (const set of table.sets) {
      for (const el of set.elem ?? []) {
        if (set.name === PORTS && typeof el === 'string') ports.add(el);
        const concat = (el as { concat?: unknown[] }).concat;
        if (
          set.name === OWN &&
          Array.isArray(concat) &&
          typeof concat[0] === 'string' &&
          typeof concat[1] === 'string'
        ) {
          const e = { port: concat[0], ip: concat[1] };
          own.set(guardKey(e), e);
        }
      }
    }
    // A table without the chain's rule (left half-made) is set up again.
    if (table.rules.length < 3) this.ready = false;
    return { ports, own };
  }
}
