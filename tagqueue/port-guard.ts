import type { Logger } from '../sys/log.js';
import { NftTransaction, type NftClient } from '../sys/nft.js';
import {
  DROPS,
  FAMILY,
  RULE_COUNT,
  TAGQUEUE_TABLE,
  elementsOf,
  elementsOfAll,
  entryKey,
  policyElements,
  policyUpdate,
  portOfElement,
  renderReadElement,
  tableSetup,
  type DropKind,
  type InfraPolicy,
  type PortEntry,
} from './ruleset.js';

/** Drops counted by the table since it was made, by kind. */
export type DropCounts = Record<DropKind, { packets: number; bytes: number }>;

/**
 * tagqueue's table on one host, the side-effect half (ruleset.ts is the pure one): an ADD admits
 * its port before the container's side comes up, a DEL releases it, and the reconciler converges
 * the elements to the records (orphans removed, the table rebuilt after a restart or a flush).
 * Every change is one `nft -f -` transaction.
 */
export class PortGuard {
  /** Whether this process has put the table in place (once; a restart does it again). */
  private ready = false;
  /** The policy sets as last written (rewritten when the infrastructure or allow-list changes). */
  private appliedPolicy: string | undefined;
  /** What the last reconcile converged to; while it still holds and no ADD or DEL came, it reads nothing. */
  private convergedTo: string | undefined;

  constructor(
    private readonly nft: NftClient,
    private readonly log: Logger,
    /** The infrastructure no eth0 may reach and the operator's allow-list, as known now. */
    private readonly policy: () => InfraPolicy,
  ) {}

  /** Guards one port (idempotent): the table with it if needed, and again if it went away since. */
  async admit(e: PortEntry): Promise<void> {
    this.convergedTo = undefined;
    const elements = (tx: NftTransaction) => {
      for (const [set, els] of elementsOf(e)) tx.addElements(FAMILY, TAGQUEUE_TABLE, set, els);
      return tx;
    };
    if (this.ready) {
      try {
        return await this.apply(elements(this.withPolicy(new NftTransaction())));
      } catch {
        this.ready = false;
      }
    }
    await this.apply(elements(this.setup()));
    this.ready = true;
  }

  /** Unguards a port whose container is gone (its DEL); absent already is fine. */
  async release(e: PortEntry): Promise<void> {
    this.convergedTo = undefined;
    const tx = new NftTransaction();
    for (const [set, els] of elementsOf(e)) tx.deleteElements(FAMILY, TAGQUEUE_TABLE, set, els);
    // nft has no "delete if present": a missing element fails the transaction, which the
    // reconciler's next run makes right anyway.
    await this.apply(tx).catch((err: unknown) =>
      this.log.debug({ err: String(err), port: e.port }, 'tagqueue elements not removed'),
    );
  }

  /**
   * Converges the port elements to `desired` exactly, and the policy sets to the policy: one read,
   * one transaction. Kept besides: the elements of ports an ADD is wiring right now (`inFlight`)
   * and of records newer than `desired` (`current`). Nothing is read while the last run's outcome
   * still holds, and nothing is made while no port is wanted and no table is left.
   */
  async reconcile(
    desired: readonly PortEntry[],
    keep: () => { inFlight: ReadonlySet<string>; current: readonly PortEntry[] },
  ): Promise<void> {
    const signature = JSON.stringify([desired.map(entryKey).sort(), policyElements(this.policy())]);
    if (signature === this.convergedTo) return;
    const have = await this.read();
    if (!have && desired.length === 0) {
      this.convergedTo = signature;
      return;
    }
    // Asked after the read: what an ADD or a record made since the desired state was computed.
    const { inFlight, current } = keep();
    const want = elementsOfAll(desired);
    const kept = elementsOfAll(current);
    const tx = this.ready && have ? this.withPolicy(new NftTransaction()) : this.setup();
    for (const [set, wanted] of want) {
      const present = have?.get(set) ?? new Set<string>();
      const stale = [...present].filter(
        (el) => !wanted.has(el) && !kept.get(set)!.has(el) && !inFlight.has(portOfElement(el)),
      );
      tx.deleteElements(FAMILY, TAGQUEUE_TABLE, set, stale);
      tx.addElements(
        FAMILY,
        TAGQUEUE_TABLE,
        set,
        [...wanted].filter((el) => !present.has(el)),
      );
    }
    if (!tx.empty) await this.apply(tx);
    this.ready = true;
    this.convergedTo = signature;
  }

  /** Drops counted since the table was made (zero when there is none). */
  async drops(): Promise<DropCounts> {
    const out = Object.fromEntries(DROPS.map((k) => [k, { packets: 0, bytes: 0 }])) as DropCounts;
    const table = await this.nft.table(FAMILY, TAGQUEUE_TABLE);
    for (const rule of table?.rules ?? []) {
      const kind = DROPS.find((k) => k === rule.comment);
      const counter = rule.expr.find(
        (x): x is { counter: { packets: number; bytes: number } } =>
          typeof x === 'object' && x !== null && 'counter' in x,
      );
      if (kind && counter) {
        out[kind].packets += counter.counter.packets;
        out[kind].bytes += counter.counter.bytes;
      }
    }
    return out;
  }

  private setup(): NftTransaction {
    const policy = this.policy();
    this.appliedPolicy = JSON.stringify(policyElements(policy));
    return tableSetup(policy);
  }

  /** The policy sets, when they changed since last written. */
  private withPolicy(tx: NftTransaction): NftTransaction {
    const policy = this.policy();
    const now = JSON.stringify(policyElements(policy));
    if (now === this.appliedPolicy) return tx;
    this.appliedPolicy = now;
    return policyUpdate(policy, tx);
  }

  private async apply(tx: NftTransaction): Promise<void> {
    this.log.debug({ nft: tx.render() }, 'nft');
    try {
      await this.nft.apply(tx);
    } catch (err) {
      // Whatever the policy sets hold now, the next write sends them again.
      this.appliedPolicy = undefined;
      throw err;
    }
  }

  /** The port sets' elements as the kernel holds them (undefined: no table, or a half-made one). */
  private async read(): Promise<Map<string, Set<string>> | undefined> {
    const table = await this.nft.table(FAMILY, TAGQUEUE_TABLE);
    if (!table) {
      this.ready = false;
      return undefined;
    }
    const out = new Map<string, Set<string>>();
    for (const set of table.sets) {
      const els = new Set<string>();
      for (const el of set.elem ?? []) {
        const rendered = renderReadElement(el);
        if (rendered) els.add(rendered);
      }
      out.set(set.name, els);
    }
    // A table without all its rules (left half-made, or someone flushed a chain) is set up again.
    if (table.rules.length < RULE_COUNT) this.ready = false;
    return out;
  }
}
