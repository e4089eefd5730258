import t from 'tap';
import { FakeKernel } from '../../../sys/fake-kernel.js';
import { NftClient, NftTransaction } from '../../../sys/nft.js';
import { silentLogger } from '../../../sys/log.js';
import { PortGuard } from '../../port-guard.js';
import { elementsOf, policyElements, type InfraPolicy, type PortEntry } from '../../ruleset.js';

const H1 = { name: 'h1' };
const eth0 = (port: string, ip: string, mac = '02:00:00:00:00:01'): PortEntry => ({ port, kind: 'external', ip, mac });
const routed6 = (port: string, ip: string): PortEntry => ({ port, kind: 'routed', ip, mac: '02:00:00:00:00:06' });

function setup(policy: InfraPolicy = { infra: ['10.77.0.11', '10.77.0.12'], allow: [] }) {
  const kernel = new FakeKernel().addNetns('h1');
  const state = { policy };
  const guard = new PortGuard(new NftClient(kernel, H1), silentLogger(), () => state.policy);
  const nftLines = () => kernel.dump(H1).nft;
  const sent = () => kernel.commandLines().filter((l) => l.startsWith('nft'));
  const elements = (set: string) =>
    nftLines()
      .find((l) => l.startsWith(`set inet tagqueue ${set} `))
      ?.replace(/^[^{]*\{ ?/, '')
      .replace(/ ?\}$/, '')
      .split(', ')
      .filter((x) => x !== '') ?? [];
  return { kernel, guard, state, nftLines, sent, elements };
}

const none = () => ({ inFlight: new Set<string>(), current: [] as PortEntry[] });

t.test('an ADD admits its port: the table with the first, elements alone after; a DEL releases them', async (t) => {
  const { guard, elements, kernel } = setup();
  await guard.admit(eth0('ne1', '100.64.0.5'));
  t.same(elements('ports'), ['"ne1"']);
  t.same(elements('ext_ports'), ['"ne1"']);
  t.same(elements('own4'), ['"ne1" . 100.64.0.5']);
  t.same(elements('own_mac'), ['"ne1" . 02:00:00:00:00:01']);
  t.same(elements('infra4'), ['10.77.0.11/32', '10.77.0.12/32'], 'the hosts are infrastructure');
  const before = kernel.commandLines().length;
  await guard.admit(routed6('ni2', 'fd10::5'));
  const second = kernel.commandLines().slice(before).join('\n');
  t.notMatch(second, /add table/, 'the second ADD sends its elements only');
  t.same(elements('ports').sort(), ['"ne1"', '"ni2"']);
  t.same(elements('v4_ports'), ['"ne1"'], 'an IPv6 port is not an IPv4 one');
  t.same(elements('ext_ports'), ['"ne1"'], 'a routed port is not external');
  await guard.release(eth0('ne1', '100.64.0.5'));
  t.same(elements('ports'), ['"ni2"']);
  t.same(elements('own4'), []);
  await guard.release(eth0('ne1', '100.64.0.5'));
  t.pass('releasing again is harmless');
});

t.test('a flushed ruleset: the next ADD sets the table up again', async (t) => {
  const { guard, kernel, elements } = setup();
  await guard.admit(eth0('ne1', '100.64.0.5'));
  await new NftClient(kernel, H1).apply(new NftTransaction().deleteTable('inet', 'tagqueue'));
  await guard.admit(eth0('ne2', '100.64.0.6'));
  t.same(elements('ports'), ['"ne2"']);
  t.ok(elements('infra4').length > 0, 'with its policy');
});

t.test('reconcile: orphans go, what is missing comes, ports in flight and newer records stay', async (t) => {
  const { guard, elements, sent } = setup();
  for (const e of [eth0('ne1', '100.64.0.5'), eth0('ne9', '100.64.0.9'), eth0('ne7', '100.64.0.7')])
    await guard.admit(e);
  const current = [eth0('ne7', '100.64.0.7')];
  await guard.reconcile([eth0('ne1', '100.64.0.5'), eth0('ne3', '100.64.0.3')], () => ({
    inFlight: new Set(['ne8']),
    current,
  }));
  t.same(elements('ports').sort(), ['"ne1"', '"ne3"', '"ne7"'], 'ne9 went (no record), ne3 came, ne7 is newer');
  t.same(elements('own4').sort(), ['"ne1" . 100.64.0.5', '"ne3" . 100.64.0.3', '"ne7" . 100.64.0.7']);
  const count = sent().length;
  await guard.reconcile([eth0('ne1', '100.64.0.5'), eth0('ne3', '100.64.0.3')], none);
  t.equal(sent().length, count, 'nothing changed since: nothing read, nothing sent');
  await guard.reconcile([eth0('ne1', '100.64.0.5')], none);
  t.same(elements('ports').sort(), ['"ne1"'], 'a changed desired state is read and converged');
});

t.test('a port whose address changed (a new container under an old name) gets the new element only', async (t) => {
  const { guard, elements } = setup();
  await guard.admit(eth0('ne1', '100.64.0.5'));
  await guard.reconcile([eth0('ne1', '100.64.0.8', '02:00:00:00:00:08')], none);
  t.same(elements('own4'), ['"ne1" . 100.64.0.8']);
  t.same(elements('own_mac'), ['"ne1" . 02:00:00:00:00:08']);
});

t.test('after a restart nothing is known: the first reconcile reads, rebuilds and removes orphans', async (t) => {
  const { kernel, guard, elements } = setup();
  await guard.admit(eth0('ne1', '100.64.0.5'));
  await guard.admit(eth0('ne2', '100.64.0.6'));
  const restarted = new PortGuard(new NftClient(kernel, H1), silentLogger(), () => ({
    infra: ['10.9.0.0/16'],
    allow: [],
  }));
  await restarted.reconcile([eth0('ne2', '100.64.0.6')], none);
  t.same(elements('ports'), ['"ne2"']);
  t.same(elements('infra4'), ['10.9.0.0/16'], 'the policy sets as the restarted process knows them');
});

t.test('a host or policy change rewrites the infrastructure and allow-list sets', async (t) => {
  const { guard, state, elements } = setup();
  await guard.reconcile([eth0('ne1', '100.64.0.5')], none);
  state.policy = {
    infra: ['10.77.0.11', '10.77.0.13', '10.0.0.0/8'],
    allow: [{ cidr: '10.77.0.13/32', proto: 'tcp', port: 53 }],
  };
  await guard.reconcile([eth0('ne1', '100.64.0.5')], none);
  t.same(elements('infra4'), ['10.0.0.0/8'], 'addresses inside a listed range are left to it');
  t.same(elements('allow4'), ['10.77.0.13/32 . tcp . 53']);
});

t.test('elements and policy are validated before anything is sent', async (t) => {
  t.throws(() => elementsOf(eth0('ne1', '100.64.0.5', 'zz')), { code: 'E_INVALID_INPUT' });
  t.throws(() => elementsOf(eth0('ne1', 'nope')), { code: 'E_INVALID_INPUT' });
  t.throws(() => elementsOf(eth0('bad name!', '100.64.0.5')));
  t.same(policyElements({ infra: ['fd00::1', '10.1.2.3'], allow: [] }).infra, ['10.1.2.3/32'], 'eth0 is IPv4');
  t.throws(() => policyElements({ infra: [], allow: [{ cidr: '10.0.0.0/8', proto: 'tcp', port: 0 }] }));
});
