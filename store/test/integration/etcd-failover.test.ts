import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCodes, isAppError } from '../../../core/errors.js';
import { findLeader } from '../../../test-netns/etcd.js';
import { EtcdStore, type EtcdStoreOptions } from '../../etcd.js';
import { WatchConsumer } from '../../watch-consumer.js';
import type { WatchEvent } from '../../types.js';
import { eventually } from '../../../test-netns/testing.js';
import { startSecureEtcd, type TeardownHost } from '../helpers.js';

function client(t: TeardownHost, opts: EtcdStoreOptions): EtcdStore {
  const s = new EtcdStore({ callTimeoutMs: 2_000, dialTimeoutMs: 1_000, watchConnectTimeoutMs: 3_000, ...opts });
  t.teardown(() => s.close());
  return s;
}

/** Follows /f/ and records every live event, in the order the handler got them. */
function follow(t: TeardownHost, store: EtcdStore) {
  const live: WatchEvent[] = [];
  const kinds = new Set<string>();
  const consumer = new WatchConsumer({
    store,
    prefix: '/f/',
    backoff: { initialMs: 50, maxMs: 500 },
    handler: {
      onEvents: (evs, ctx) => {
        kinds.add(ctx.kind);
        if (ctx.kind === 'live') live.push(...evs);
      },
    },
  });
  t.teardown(() => consumer.stop());
  return { consumer, live, kinds };
}

const RETRYABLE: readonly string[] = [ErrorCodes.STORE_UNAVAILABLE, ErrorCodes.CONFLICT];

t.test(
  '3 members, the leader SIGKILLed during a stream of writes: every write resolves, and watches see each change once, in order',
  async (t) => {
    const { servers, description: d } = await startSecureEtcd(t, { members: 3 });
    const leader = await findLeader(servers);
    if (leader === undefined) throw new Error('the members agree on no leader');
    const writer = client(t, d.client);
    // One consumer may use any member; the other only the leader, so it must resume after its
    // member comes back (the history it missed was committed by the others meanwhile).
    const anywhere = follow(t, client(t, d.client));
    const pinned = follow(t, client(t, { ...d.client, endpoints: [d.members[leader]!.endpoint] }));
    await anywhere.consumer.start();
    await pinned.consumer.start();

    const N = 300;
    const KILL_AFTER = 60;
    const errors = new Map<string, number>();
    let acknowledged = 0;
    let committedByAnEarlierAttempt = 0;
    let killedAt = 0;
    let next = 0;
    /** Creates /f/NNNN once: a retry after an ambiguous failure finds its own value there. */
    const write = async (i: number): Promise<void> => {
      const key = `/f/${String(i).padStart(4, '0')}`;
      const value = `v${i}`;
      const deadline = Date.now() + 30_000;
      for (;;) {
        try {
          const r = await writer.txn({
            compare: [{ key, target: 'version', op: '=', value: 0 }],
            success: [{ type: 'put', key, value }],
          });
          if (!r.succeeded) {
            const held = await writer.get(key);
            if (held?.value !== value) throw new Error(`${key} holds ${held?.value}, not ${value}`);
            committedByAnEarlierAttempt++;
          }
          return;
        } catch (err) {
          // Only "try again" failures are acceptable; anything else fails the test.
          if (!isAppError(err) || !RETRYABLE.includes(err.code) || Date.now() > deadline) throw err;
          errors.set(err.code, (errors.get(err.code) ?? 0) + 1);
          await sleep(50); // a client's retry backoff
        }
      }
    };
    const worker = async (): Promise<void> => {
      while (next < N) {
        await write(next++);
        if (++acknowledged === KILL_AFTER) {
          servers[leader]!.kill();
          killedAt = Date.now();
        }
      }
    };
    const started = Date.now();
    await Promise.all(Array.from({ length: 4 }, worker));
    t.ok(killedAt > 0, `the leader (m${leader + 1}) was killed after ${KILL_AFTER} acknowledged writes`);
    t.comment(
      `${N} writes in ${Date.now() - started} ms; the last ${Date.now() - killedAt} ms after the kill; ` +
        `retried failures: ${JSON.stringify(Object.fromEntries(errors))}; ` +
        `committed by an attempt that had failed: ${committedByAnEarlierAttempt}`,
    );
    t.ok(await eventually(async () => (await findLeader(servers)) !== undefined, 10_000), 'the others elect a leader');
    const newLeader = await findLeader(servers);
    t.not(newLeader, leader, `a new leader: m${(newLeader ?? -1) + 1}`);

    const truth = (await writer.list('/f/')).kvs;
    t.equal(truth.length, N, 'every write is in the store');
    t.ok(
      truth.every((kv) => kv.value === `v${Number(kv.key.slice(3))}` && kv.version === 1),
      'each key holds its value, written once',
    );
    const history = [...truth].sort((a, b) => (a.modRevision < b.modRevision ? -1 : 1));
    const expected = history.map((kv) => `${kv.key}@${kv.modRevision}`);

    t.ok(
      await eventually(() => anywhere.consumer.lastAppliedRevision >= history[N - 1]!.modRevision, 15_000),
      'the unpinned consumer caught up',
    );
    t.same(
      anywhere.live.map((e) => `${e.kv.key}@${e.kv.modRevision}`),
      expected,
      'a consumer on any member: every committed change exactly once, in commit order',
    );

    t.equal(pinned.consumer.status === 'synced', false, 'the consumer pinned to the dead member is not synced');
    await servers[leader]!.restart();
    t.ok(
      await eventually(() => pinned.consumer.lastAppliedRevision >= history[N - 1]!.modRevision, 20_000),
      'the pinned consumer resumed once its member was back',
    );
    t.same(
      pinned.live.map((e) => `${e.kv.key}@${e.kv.modRevision}`),
      expected,
      'the pinned consumer too: nothing missed while its member was dead, nothing twice',
    );
    t.notOk(anywhere.kinds.has('resync') || pinned.kinds.has('resync'), 'resumed from history, no re-list');
    await writer.deletePrefix('/f/');
  },
);
