import t from 'tap';
import { qosBatch, tbfFor, fromBandwidthCapability } from '../../qos.js';
import { checkQos } from '../../../tenancy/qos.js';
import { ErrorCodes } from '../../../core/errors.js';

t.test('qos batches: set, change, remove', async (t) => {
  t.same(qosBatch('ni1', 'nq1', { ingressBps: 10_000_000, egressBps: 5_000_000 }, undefined).lines, [
    'qdisc replace dev ni1 root stab overhead -14 tbf rate 10000000bit burst 32768 latency 50ms',
    'qdisc replace dev ni1 handle ffff: ingress',
    'filter replace dev ni1 parent ffff: protocol all prio 1 handle 800::800 u32 match u32 0 0 action mirred egress redirect dev nq1',
    'qdisc replace dev nq1 root stab overhead -14 tbf rate 5000000bit burst 32768 latency 50ms',
  ]);
  t.same(
    qosBatch(
      'ni1',
      'nq1',
      { ingressBps: 500_000_000, egressBps: 5_000_000 },
      { ingressBps: 10_000_000, egressBps: 5_000_000 },
    ).lines,
    [
      'qdisc replace dev ni1 root stab overhead -14 tbf rate 500000000bit burst 625000 latency 50ms',
      'qdisc replace dev nq1 root stab overhead -14 tbf rate 5000000bit burst 32768 latency 50ms',
    ],
    'a change replaces the tbfs only: the redirect stays, flows keep running',
  );
  t.same(qosBatch('ni1', 'nq1', undefined, { ingressBps: 1e7, egressBps: 1e7 }).lines, [
    'qdisc del dev ni1 root',
    'qdisc del dev ni1 ingress',
  ]);
  t.equal(tbfFor(500_000_000).burstBytes, 625_000, '10 ms of traffic at high rates');
});

t.test('qos input is checked', async (t) => {
  t.throws(() => checkQos({ ingressBps: -1 }), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => checkQos({ egressBps: 1.5 }), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => checkQos({ egressBps: 1e15 }), { code: ErrorCodes.INVALID_INPUT });
  t.equal(checkQos({}), undefined);
  t.same(fromBandwidthCapability({ ingressRate: 1_000_000, egressRate: 2_000_000, ingressBurst: 1 }), {
    ingressBps: 1_000_000,
    egressBps: 2_000_000,
  });
  t.equal(fromBandwidthCapability(undefined), undefined);
});
