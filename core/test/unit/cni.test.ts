import t from 'tap';
import {
  parseCniRequest,
  parseCniArgs,
  CniFailure,
  CniErrorCodes,
  toCniError,
  commandSupported,
  requestedCniVersion,
} from '../../cni.js';
import { AppError, ErrorCodes } from '../../errors.js';

const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'abc', CNI_NETNS: '/run/netns/x', CNI_IFNAME: 'eth0' };
const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 't' });

t.test('valid requests parse', async (t) => {
  const r = parseCniRequest({ ...env, CNI_ARGS: 'A=1;IP=10.0.0.5' }, conf);
  t.equal(r.command, 'ADD');
  t.same(r.args, { A: '1', IP: '10.0.0.5' });
  t.equal(parseCniRequest({ CNI_COMMAND: 'VERSION' }, '').command, 'VERSION');
  t.equal(
    parseCniRequest({ CNI_COMMAND: 'DEL', CNI_CONTAINERID: 'abc', CNI_IFNAME: 'eth0' }, conf).netns,
    '',
    'DEL without a netns is allowed',
  );
  t.same(parseCniArgs(''), {});
});

t.test('each kind of bad input has its spec code', async (t) => {
  const cases: Array<[Record<string, string>, string, number]> = [
    [{}, conf, CniErrorCodes.INVALID_ENV],
    [{ ...env, CNI_COMMAND: 'FROB' }, conf, CniErrorCodes.INVALID_ENV],
    [{ ...env, CNI_CONTAINERID: '' }, conf, CniErrorCodes.INVALID_ENV],
    [{ ...env, CNI_IFNAME: 'a/b' }, conf, CniErrorCodes.INVALID_ENV],
    [{ ...env, CNI_NETNS: '' }, conf, CniErrorCodes.INVALID_ENV],
    [{ ...env, CNI_ARGS: 'novalue' }, conf, CniErrorCodes.INVALID_ENV],
    [env, '{', CniErrorCodes.DECODE_FAILURE],
    [env, '[]', CniErrorCodes.DECODE_FAILURE],
    [env, 'x'.repeat(2 * 1024 * 1024), CniErrorCodes.DECODE_FAILURE],
    [env, JSON.stringify({ name: 'n', type: 't' }), CniErrorCodes.INVALID_NETWORK_CONFIG],
    [env, JSON.stringify({ cniVersion: '2.0.0', name: 'n', type: 't' }), CniErrorCodes.INCOMPATIBLE_VERSION],
    [env, JSON.stringify({ cniVersion: '1.0.0', name: 'bad name', type: 't' }), CniErrorCodes.INVALID_NETWORK_CONFIG],
    [env, JSON.stringify({ cniVersion: '1.0.0', name: 'n' }), CniErrorCodes.INVALID_NETWORK_CONFIG],
  ];
  for (const [e, stdin, code] of cases) {
    let got: unknown;
    try {
      parseCniRequest(e, stdin);
    } catch (err) {
      got = err;
    }
    t.ok(
      got instanceof CniFailure && got.code === code,
      `${JSON.stringify(e).slice(0, 60)} ${stdin.slice(0, 40)} -> ${code}`,
    );
  }
});

t.test('500 random malformed inputs: always a CniFailure, never a crash', async (t) => {
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const pick = <T>(xs: T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const junk = [
    '',
    '{',
    'null',
    '1',
    '"s"',
    '[]',
    '{}',
    '{"cniVersion":1}',
    '{"cniVersion":"1.0.0"}',
    '{"cniVersion":"1.0.0","name":"","type":"x"}',
    '\u0000',
    '{"cniVersion":"1.0.0","name":"n","type":"t"',
    JSON.stringify({ cniVersion: '0.1.0', name: 'n', type: 't' }),
  ];
  let failures = 0;
  for (let i = 0; i < 500; i++) {
    const e: Record<string, string> = {
      CNI_COMMAND: pick(['ADD', 'DEL', 'CHECK', 'add', '', 'GC']),
      CNI_CONTAINERID: pick(['', 'ok', '-x', 'a'.repeat(300)]),
      CNI_IFNAME: pick(['eth0', '', 'toolongname12345', 'a b']),
      CNI_NETNS: pick(['', '/x']),
    };
    if (rand() < 0.3) e.CNI_ARGS = pick(['=', 'a', 'K=V;;', ';=x']);
    const stdin = pick(junk);
    try {
      parseCniRequest(e, stdin);
    } catch (err) {
      if (!(err instanceof CniFailure)) t.fail(`non-spec error for ${JSON.stringify(e)} ${stdin}: ${String(err)}`);
      failures++;
    }
  }
  t.ok(failures >= 450, `${failures} of 500 rejected with a spec error`);
});

t.test('our error codes map onto CNI codes', async (t) => {
  t.equal(toCniError(new AppError(ErrorCodes.STORE_UNAVAILABLE, 'x'), '1.0.0').code, 11);
  t.equal(toCniError(new AppError(ErrorCodes.POOL_EXHAUSTED, 'x'), '1.0.0').code, 100);
  t.equal(toCniError(new Error('boom'), '1.0.0').code, 999);
  t.notOk(commandSupported('GC', '1.0.0'));
  t.ok(commandSupported('GC', '1.1.0'));
  t.notOk(commandSupported('CHECK', '0.3.1'));
});

t.test("an error answers in the request's cniVersion, read even from a config that does not parse", async (t) => {
  const cases: Array<[string, string]> = [
    ['{"cniVersion":"1.0.0","name":"n"}', '1.0.0'],
    ['{ "name": "n",\n\t"cniVersion"  :\n  "0.4.0" }', '0.4.0'],
    ['{"cniVersion":"1.0.0","pad":"' + 'x'.repeat(2000), '1.0.0'], // cut short
    ['{"cniVersion":"1.0.0", oops', '1.0.0'], // not JSON after it
    ['{"prevResult":{"cniVersion":"0.3.1"},"cniVersion":"1.0.0"}', '1.0.0'], // nested one ignored
    ['{"prevResult":{"cniVersion":"0.3.1"}}', '1.1.0'],
    ['{"name":"cniVersion","x":"\\"cniVersion\\":\\"0.1\\""}', '1.1.0'], // a value, and inside a string
    ['{"cniVersion":5}', '1.1.0'],
    ['{"cniVersion":"1.0.0\\"}', '1.1.0'], // an escape: not a version
    ['{"cniVersion":"' + '9'.repeat(40) + '"}', '1.1.0'], // too long
    ['{"cniVersion":"1.0.0;rm"}', '1.1.0'],
    ['', '1.1.0'],
    ['{"cniVersion":"', '1.1.0'],
  ];
  for (const [config, want] of cases) t.equal(requestedCniVersion(config), want, JSON.stringify(config.slice(0, 60)));
  t.equal(requestedCniVersion('{}', '0.4.0'), '0.4.0', "the fallback is the caller's");
});
