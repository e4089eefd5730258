import t from 'tap';
import { checkPrefix, checkContainerName, names } from '../../names.js';
import { underlayPlan } from '../../addressing.js';
import { ErrorCodes } from '../../../core/errors.js';

t.test('prefixes and container names are checked before anything is created', async (t) => {
  t.equal(checkPrefix('t1a2b3'), 't1a2b3');
  for (const bad of ['', 'Upper', '1abc', 'a-b', 'a b', 'x'.repeat(21), '../etc']) {
    t.throws(() => checkPrefix(bad), { code: ErrorCodes.INVALID_INPUT }, JSON.stringify(bad));
  }
  t.equal(checkContainerName('web1'), 'web1');
  t.throws(
    () => checkContainerName('a'.repeat(12)),
    { code: ErrorCodes.INVALID_INPUT },
    'host-side ifname would exceed 15 chars',
  );
  t.ok(names.containerHostIf('a'.repeat(11)).length <= 15);
});

t.test('namespace names share one stem per cluster', async (t) => {
  const stem = names.clusterNetnsStem('p1');
  for (const n of [
    names.fabricNetns('p1'),
    names.hostNetns('p1', 'h2'),
    names.outsideNetns('p1'),
    names.containerNetns('p1', 'h1', 'c'),
  ]) {
    t.ok(n.startsWith(stem), n);
  }
  t.notOk(names.hostNetns('p10', 'h1').startsWith(stem), 'prefix p1 does not capture p10');
});

t.test('underlay plan', async (t) => {
  const p = underlayPlan();
  t.equal(p.cidr, '10.77.0.0/24');
  t.equal(p.controlIp, '10.77.0.1');
  t.equal(p.hostIp(0), '10.77.0.11');
  t.equal(p.hostIp(199), '10.77.0.210');
  t.equal(p.outsideIp, '10.77.0.254');
  t.throws(() => p.hostIp(200), { code: ErrorCodes.INVALID_INPUT });
  t.throws(() => underlayPlan('10.77.0.5'), { code: ErrorCodes.INVALID_INPUT });
  t.equal(underlayPlan('192.168.50.0').hostIp(1), '192.168.50.12');
  t.same(
    [0, 1, 2, 8].map((i) => p.etcdIp(i)),
    ['10.77.0.1', '10.77.0.2', '10.77.0.3', '10.77.0.9'],
  );
  t.equal(p.etcdIp(0), p.controlIp, 'the first etcd member is on the control address');
  t.throws(() => p.etcdIp(9), { code: ErrorCodes.INVALID_INPUT }, 'members stay below the hosts (.11 up)');
});
