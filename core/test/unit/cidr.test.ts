import t from 'tap';
import {
  parseCidr,
  parseIp,
  formatCidr,
  formatIp,
  cidrSize,
  contains,
  overlaps,
  addressAt,
  offsetOf,
  blockCount,
  blockAt,
  blockOf,
  cidrKey,
  lastAddress,
} from '../../cidr.js';
import { ErrorCodes } from '../../errors.js';

t.test('parses and formats both families', async (t) => {
  const v4 = parseCidr('10.1.0.0/16');
  t.equal(v4.family, 4);
  t.equal(formatCidr(v4), '10.1.0.0/16');
  t.equal(cidrSize(v4), 65536n);
  t.equal(formatIp({ family: 4, value: lastAddress(v4) }), '10.1.255.255');
  const v6 = parseCidr('fd00:1::/64');
  t.equal(v6.family, 6);
  t.equal(formatCidr(v6), 'fd00:1::/64');
  t.equal(cidrSize(v6), 1n << 64n);
  t.equal(formatCidr(parseCidr('10.1.2.3/16', { strict: false })), '10.1.0.0/16');
});

t.test('rejects bad input with E_INVALID_INPUT', async (t) => {
  for (const bad of [
    '10.0.0.0',
    '10.0.0.0/33',
    '10.0.0.1/24',
    '300.0.0.0/8',
    'x/8',
    '10.0.0/8',
    '/8',
    '10.0.0.0/-1',
    'fd00::/129',
    '10.0.0.0/08x',
  ]) {
    t.throws(() => parseCidr(bad), { code: ErrorCodes.INVALID_INPUT }, bad);
  }
  for (const bad of ['', '1.2.3', '1.2.3.4/32', 'fe80::1::2', 'a'.repeat(100)]) {
    t.throws(() => parseIp(bad), { code: ErrorCodes.INVALID_INPUT }, bad);
  }
});

t.test('containment, overlap, offsets', async (t) => {
  const c = parseCidr('10.0.0.0/24');
  t.ok(contains(c, parseIp('10.0.0.255')));
  t.notOk(contains(c, parseIp('10.0.1.0')));
  t.notOk(contains(c, parseIp('::1')), 'other family');
  t.ok(overlaps(c, parseCidr('10.0.0.128/25')));
  t.ok(overlaps(parseCidr('10.0.0.0/8'), c));
  t.notOk(overlaps(c, parseCidr('10.0.1.0/24')));
  t.equal(formatIp(addressAt(c, 5)), '10.0.0.5');
  t.equal(offsetOf(c, parseIp('10.0.0.9')), 9n);
  t.throws(() => addressAt(c, 256));
  t.throws(() => offsetOf(c, parseIp('10.0.1.1')));
});

t.test('blocks', async (t) => {
  const pool = parseCidr('10.0.0.0/16');
  t.equal(blockCount(pool, 26), 1024n);
  t.equal(formatCidr(blockAt(pool, 26, 0)), '10.0.0.0/26');
  t.equal(formatCidr(blockAt(pool, 26, 5)), '10.0.1.64/26');
  t.equal(formatCidr(blockOf(pool, 26, parseIp('10.0.1.70'))), '10.0.1.64/26');
  t.equal(cidrKey(blockAt(pool, 26, 5)), '10.0.1.64-26');
  t.throws(() => blockCount(pool, 8));
  const v6 = parseCidr('fd00::/112');
  t.equal(formatCidr(blockAt(v6, 122, 3)), 'fd00::c0/122');
});
