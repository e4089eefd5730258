import t from 'tap';
import { GUARD_TABLE, guardKey, SourceGuard, type GuardEntry } from '../../source-guard.js';
import type { NftClient, NftTableContents, NftTransaction } from '../../../sys/nft.js';
import { silentLogger } from '../../../sys/log.js';

/** nft as the guard sees it: the table it reads (as `nft -j` gives it) and the scripts it applies. */
function stubNft(have?: { ports: string[]; own: Array<[string, string]> }) {
  const applied: string[] = [];
  let failNext = false;
  const nft = {
    table: async (family: string, name: string): Promise<NftTableContents | undefined> => {
      if (!have || family !== 'ip6' || name !== GUARD_TABLE) return undefined;
      return {
        chains: [],
        maps: [],
        rules: [1, 2, 3].map((handle) => ({ family: 'ip6', table: GUARD_TABLE, chain: 'spoof', handle, expr: [] })),
        sets: [
          { family: 'ip6', table: GUARD_TABLE, name: 'ports', type: 'ifname', elem: have.ports },
          {
            family: 'ip6',
            table: GUARD_TABLE,
            name: 'own',
            type: ['ifname', 'ipv6_addr'],
            elem: have.own.map(([port, ip]) => ({ concat: [port, ip] })),
          },
        ],
      };
    },
    apply: async (tx: NftTransaction): Promise<void> => {
      if (failNext) {
        failNext = false;
        throw new Error('Error: No such file or directory; did you mean table ‘netd_guard6’ in family ip6?');
      }
      applied.push(tx.render());
    },
  };
  return { nft: nft as unknown as NftClient, applied, failOnce: () => (failNext = true) };
}

const entry = (port: string, ip: string): GuardEntry => ({ port, ip });
const desiredOf = (...es: GuardEntry[]) => new Map(es.map((e) => [guardKey(e), e]));
const keepNothing = () => ({ inFlight: new Set<string>(), current: new Set<string>() });

t.test('an ADD guards its port; the table is set up with the first one, and again after a flush', async (t) => {
  const { nft, applied, failOnce } = stubNft();
  const guard = new SourceGuard(nft, silentLogger());
  await guard.add(entry('ni01', 'fd10:60::2'));
  t.match(applied[0], /add table ip6 netd_guard6/, 'the first ADD sets the table up');
  t.match(applied[0], /iifname @ports iifname \. ip6 saddr != @own counter drop/, 'with the dropping rule');
  t.match(applied[0], /add element ip6 netd_guard6 own \{ "ni01" \. fd10:60::2 \}/);
  await guard.add(entry('ni02', 'fd10:60::3'));
  t.notMatch(applied[1], /add table/, 'later ADDs add elements only');
  failOnce(); // someone flushed the ruleset: the elements-only script fails
  await guard.add(entry('ni03', 'fd10:60::4'));
  t.match(applied[2], /add table ip6 netd_guard6[\s\S]*"ni03" \. fd10:60::4/, 'set up again, with the element');
});

t.test('reconcile converges exactly: stale elements of a reused port name go, missing ones come', async (t) => {
  // ni01 now serves another container (fd10:60::9); its old element (fd10:60::2) was left by a DEL.
  const { nft, applied } = stubNft({
    ports: ['ni01', 'ni05'],
    own: [
      ['ni01', 'fd10:60::2'],
      ['ni05', 'fd10:60::5'],
    ],
  });
  const guard = new SourceGuard(nft, silentLogger());
  await guard.reconcile(desiredOf(entry('ni01', 'fd10:60::9'), entry('ni07', 'fd10:60::7')), keepNothing);
  const script = applied.join('\n');
  t.match(script, /delete element ip6 netd_guard6 own \{ "ni01" \. fd10:60::2, "ni05" \. fd10:60::5 \}/);
  t.match(script, /delete element ip6 netd_guard6 ports \{ "ni05" \}/, 'a port nobody records is unguarded');
  t.notMatch(script, /delete element ip6 netd_guard6 ports \{[^}]*"ni01"/, 'ni01 stays guarded');
  t.match(script, /add element ip6 netd_guard6 ports \{ "ni07" \}/);
  t.match(script, /add element ip6 netd_guard6 own \{ "ni01" \. fd10:60::9, "ni07" \. fd10:60::7 \}/);
});

t.test('reconcile keeps what ADDs in flight and records newer than the plan hold', async (t) => {
  const { nft, applied } = stubNft({
    ports: ['ni01', 'ni02'],
    own: [
      ['ni01', 'fd10:60::2'],
      ['ni02', 'fd10:60::3'],
    ],
  });
  const guard = new SourceGuard(nft, silentLogger());
  // Neither is in the plan: ni01's ADD is still wiring, ni02's record arrived after the plan.
  await guard.reconcile(new Map(), () => ({
    inFlight: new Set(['ni01']),
    current: new Set([guardKey(entry('ni02', 'fd10:60::3'))]),
  }));
  // (A new process sets its chain up again once: that is all it sends.)
  t.notMatch(applied.join('\n'), /element/, 'no element removed or added');
});

t.test('no table and nothing wanted: nothing is created', async (t) => {
  const { nft, applied } = stubNft();
  await new SourceGuard(nft, silentLogger()).reconcile(new Map(), keepNothing);
  t.same(applied, []);
});

t.test('an element must be an IPv6 address on a valid interface name', async (t) => {
  const guard = new SourceGuard(stubNft().nft, silentLogger());
  await t.rejects(guard.add(entry('ni01', '10.0.0.2')), /not an IPv6 address/);
  await t.rejects(guard.add(entry('ni01"; flush ruleset', 'fd10::2')));
});
