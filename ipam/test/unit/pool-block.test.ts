import t from 'tap';
import { buildPool, checkRoutedOverlap } from '../../pool.js';
import { emptyBlock, allocate, allocateAt, release, freeOffsets, allocatedCount } from '../../block.js';
import { formatIp, parseIp } from '../../../core/cidr.js';
import { ErrorCodes } from '../../../core/errors.js';

t.test('a pool reserves network, broadcast, gateway and service addresses', async (t) => {
  const p = buildPool({ name: 'vpc-a', cidr: '10.1.0.0/24', kind: 'vpc' });
  t.equal(p.spec.blockPrefix, 26);
  t.equal(p.spec.gateway, '10.1.0.1');
  t.same(p.spec.serviceAddresses, ['10.1.0.2', '10.1.0.3']);
  const reserved = [...p.reservedValues].map((v) => formatIp({ family: 4, value: v })).sort();
  t.same(reserved, ['10.1.0.0', '10.1.0.1', '10.1.0.2', '10.1.0.255', '10.1.0.3']);
  const v6 = buildPool({ name: 'v6', cidr: 'fd00:1::/64', kind: 'vpc' });
  t.equal(v6.spec.blockPrefix, 122);
  t.equal(v6.spec.gateway, 'fd00:1::1');
  t.equal(
    buildPool({ name: 'small', cidr: '10.2.0.0/28', kind: 'external' }).spec.blockPrefix,
    28,
    'a pool smaller than a block is one block',
  );
});

t.test('bad pools are refused with stable codes', async (t) => {
  const bad = [
    { name: 'Bad Name', cidr: '10.0.0.0/24', kind: 'vpc' },
    { name: 'x', cidr: '10.0.0.1/24', kind: 'vpc' },
    { name: 'x', cidr: '10.0.0.0/30', kind: 'vpc' },
    { name: 'x', cidr: '10.0.0.0/24', kind: 'other' },
    { name: 'x', cidr: '10.0.0.0/24', kind: 'vpc', gateway: '10.0.1.1' },
    { name: 'x', cidr: '10.0.0.0/24', kind: 'vpc', blockPrefix: 31 },
    { name: 'x', cidr: '10.0.0.0/24', kind: 'vpc', blockPrefix: 16 },
  ];
  for (const spec of bad)
    t.throws(() => buildPool(spec as never), { code: ErrorCodes.INVALID_INPUT }, JSON.stringify(spec));
  const a = buildPool({ name: 'a', cidr: '10.0.0.0/16', kind: 'vpc', routed: true });
  const b = buildPool({ name: 'b', cidr: '10.0.128.0/17', kind: 'vpc', routed: true });
  const c = buildPool({ name: 'c', cidr: '10.0.0.0/16', kind: 'vpc' });
  t.throws(() => checkRoutedOverlap(b, [a]), { code: ErrorCodes.POOL_OVERLAP });
  t.doesNotThrow(() => checkRoutedOverlap(c, [a]), 'overlay pools may overlap');
});

t.test('blocks hand out the lowest free non-reserved addresses with rising sequence numbers', async (t) => {
  const pool = buildPool({ name: 'p', cidr: '10.1.0.0/24', kind: 'vpc' });
  const b0 = emptyBlock('10.1.0.0/26', 'p', 'h1', 0);
  const { record, granted } = allocate(b0, ['a', 'b'], pool.reservedValues);
  t.same(
    granted.map((g) => [g.handle, formatIp(g.ip), g.seq]),
    [
      ['a', '10.1.0.4', 1],
      ['b', '10.1.0.5', 2],
    ],
  );
  t.equal(allocatedCount(record), 2);
  t.equal(allocatedCount(b0), 0, 'the input record is not mutated');
  t.equal(freeOffsets(record, pool.reservedValues).length, 64 - 4 - 2);
  // Fill up: only 58 fit.
  const big = allocate(
    record,
    Array.from({ length: 100 }, (_, i) => `h${i}`),
    pool.reservedValues,
  );
  t.equal(big.granted.length, 58);
  t.same(freeOffsets(big.record, pool.reservedValues), []);
});

t.test('a stale release cannot free a re-allocated address', async (t) => {
  const pool = buildPool({ name: 'p', cidr: '10.1.0.0/24', kind: 'vpc' });
  const first = allocate(emptyBlock('10.1.0.64/26', 'p', 'h1', 0), ['old'], pool.reservedValues);
  const g = first.granted[0]!;
  const freed = release(first.record, g.offset, 'old', g.seq)!;
  t.ok(freed);
  const again = allocate(freed, ['new'], pool.reservedValues);
  t.equal(again.granted[0]!.offset, g.offset, 'the same address went to a new owner');
  t.equal(release(again.record, g.offset, 'old', g.seq), undefined, 'old handle, old seq: refused');
  t.equal(release(again.record, g.offset, 'new', g.seq), undefined, 'right handle, stale seq: refused');
  t.ok(release(again.record, g.offset, 'new', again.granted[0]!.seq), 'the current owner can release');
});

t.test('static addresses', async (t) => {
  const pool = buildPool({ name: 'p', cidr: '10.1.0.0/24', kind: 'vpc' });
  const b = emptyBlock('10.1.0.0/26', 'p', 'h1', 0);
  const one = allocateAt(b, parseIp('10.1.0.10'), 'x', pool.reservedValues);
  t.equal(one.granted.seq, 1);
  t.equal(
    allocateAt(one.record, parseIp('10.1.0.10'), 'x', pool.reservedValues).granted.seq,
    1,
    'same handle again: same grant',
  );
  t.throws(() => allocateAt(one.record, parseIp('10.1.0.10'), 'y', pool.reservedValues), {
    code: ErrorCodes.ADDRESS_IN_USE,
  });
  t.throws(
    () => allocateAt(b, parseIp('10.1.0.1'), 'y', pool.reservedValues),
    { code: ErrorCodes.ADDRESS_IN_USE },
    'gateway',
  );
});
