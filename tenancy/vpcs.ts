import { AppError, ErrorCodes, invalidInput, isAppError } from '../core/errors.js';
import { formatCidr, overlaps, parseCidr, parseIp, contains, type Cidr } from '../core/cidr.js';
import type { Store } from '../store/types.js';
import { getJson, listJson, updateJson } from '../store/json.js';
import type { PoolSpec } from '../ipam/pool.js';
import { modelKeys } from './keys.js';
import { checkQos, checkWithinCap } from './qos.js';
import { createHoldingNumber } from './unique.js';
import { PolicyDirectory, type NetworkPolicy } from './policy.js';
import {
  PHYSNET_RE,
  VPC_NAME_RE,
  resolveVpcRef,
  vpcId,
  type ModeName,
  type QosSpec,
  type HostRecord,
  type TenantRecord,
  type VpcRecord,
} from './records.js';

/** What a VPC needs from the address manager: its pool, created and deleted with it. */
export interface PoolAdmin {
  createPool(spec: PoolSpec): Promise<unknown>;
  /** Refused (E_CONFLICT) while addresses of the pool are in use. */
  deletePool(name: string): Promise<void>;
  listPools(): Promise<Array<{ spec: PoolSpec }>>;
}

/**
 * Addresses a routed VPC may never cover: its containers' gateway is link-local, and loopback,
 * multicast and the like are not routable.
 */
const NOT_ROUTABLE = [
  ...['0.0.0.0/8', '127.0.0.0/8', '169.254.0.0/16', '224.0.0.0/3'],
  // IPv6: the unspecified, loopback, IPv4-mapped and other reserved low addresses; link-local
  // (fe80::1 is every routed container's gateway); multicast.
  ...['::/8', 'fe80::/10', 'ff00::/8'],
];

/** VLAN ids a vlan VPC may hold, per physical network (inclusive). */
export type VlanRanges = ReadonlyMap<string, { min: number; max: number }>;

/** Where a vlan VPC goes when it names no physical network. */
export const DEFAULT_PHYSNET = 'physnet0';
export const DEFAULT_VLAN_RANGES: VlanRanges = new Map([[DEFAULT_PHYSNET, { min: 100, max: 4094 }]]);

export interface VpcSpec {
  name: string;
  cidr: string;
  mode?: ModeName;
  /** vlan mode: the physical network (default physnet0). */
  physnet?: string;
  mtu?: number;
  qos?: QosSpec;
}

/**
 * A tenant's VPCs. A tenant sees only its own: another tenant's VPC answers exactly like one that
 * does not exist (E_NOT_FOUND). A VPC comes with a VNI (unique: its key is created in the same
 * transaction) and an address pool named after its id.
 */
export class VpcDirectory {
  private readonly modes: readonly ModeName[];

  constructor(
    private readonly deps: {
      store: Store;
      pools: PoolAdmin;
      /** The network modes the data plane can build (others are refused with E_UNSUPPORTED). */
      modes?: readonly ModeName[];
      /** How long a deleted VPC's VLAN id is not given out again (default 1 h). */
      vlanQuarantineMs?: number;
      now?: () => number;
      random?: () => number;
    },
  ) {
    this.modes = deps.modes ?? ['vxlan'];
  }

  async create(tenant: TenantRecord, spec: VpcSpec): Promise<VpcRecord> {
    const { store } = this.deps;
    if (!VPC_NAME_RE.test(spec.name)) throw invalidInput(`VPC name "${spec.name}" must match ${VPC_NAME_RE}`);
    const mode = spec.mode ?? 'vxlan';
    if (!this.modes.includes(mode)) {
      throw new AppError(ErrorCodes.UNSUPPORTED, `mode ${mode} is not available (available: ${this.modes.join(', ')})`);
    }
    const cidr = formatCidr(parseCidr(spec.cidr));
    const qos = checkQos(spec.qos);
    checkWithinCap(qos, tenant.caps?.eth1, 'eth1');
    const id = vpcId(tenant.name, spec.name);
    if (await store.get(modelKeys.vpc(id))) throw new AppError(ErrorCodes.ALREADY_EXISTS, `VPC ${spec.name} exists`);
    const owner = await store.get(modelKeys.tenant(tenant.name));
    if (!owner) throw new AppError(ErrorCodes.NOT_FOUND, `no tenant "${tenant.name}"`);
    // Routed VPCs share the hosts' routing: checked against each other under one guard key that
    // every routed create rewrites, so two overlapping creates cannot both pass.
    const policy = await new PolicyDirectory(store).get();
    const guard = mode === 'routed' ? await this.checkRoutedCidr(parseCidr(cidr), policy) : undefined;
    if (spec.physnet !== undefined && mode !== 'vlan') throw invalidInput('physnet is for vlan VPCs only');
    const vlan = mode === 'vlan' ? await this.checkPhysnet(spec.physnet ?? DEFAULT_PHYSNET, policy) : undefined;
    const random = this.deps.random ?? Math.random;
    await this.deps.pools.createPool({ name: id, cidr, kind: 'vpc', ...(mode === 'routed' && { routed: true }) });
    try {
      return await createHoldingNumber<VpcRecord>(store, {
        what: `VPC ${spec.name}`,
        numberName: 'VNI',
        key: modelKeys.vpc(id),
        numberKey: modelKeys.vni,
        pick: () => 1 + Math.floor(random() * 0xfffffe),
        ...(vlan && { second: () => this.freeVlan(vlan.physnet, vlan.range, random) }),
        record: (vni, vlanId) => ({
          name: id,
          tenant: tenant.name,
          mode,
          cidr,
          vni,
          ...(vlan && { vlan: vlanId, physnet: vlan.physnet }),
          ...(spec.mtu && { mtu: spec.mtu }),
          ...(qos && { qos }),
        }),
        holder: id,
        // A tenant deleted meanwhile (its delete compares this revision) keeps no VPC.
        guards: [
          { key: owner.key, modRevision: owner.modRevision, value: owner.value, what: `tenant ${tenant.name}` },
          ...(guard ? [guard] : []),
        ],
      });
    } catch (err) {
      // The pool came first: it goes again, unless the VPC exists after all (a concurrent create
      // of the same VPC won, and the pool is its).
      if (!isAppError(err, ErrorCodes.ALREADY_EXISTS)) await this.deps.pools.deletePool(id).catch(() => undefined);
      throw err;
    }
  }

  /**
   * A vlan VPC's physical network must have a VLAN range and a host whose trunk is plugged into it
   * (else no container of the VPC could ever be wired: refused now, E_UNSUPPORTED).
   */
  private async checkPhysnet(
    physnet: string,
    policy: NetworkPolicy,
  ): Promise<{ physnet: string; range: { min: number; max: number } }> {
    if (!PHYSNET_RE.test(physnet)) throw invalidInput(`physnet "${physnet}" must match ${PHYSNET_RE}`);
    const ranges: VlanRanges = policy.vlanRanges
      ? new Map(policy.vlanRanges.map((r) => [r.physnet, { min: r.min, max: r.max }]))
      : DEFAULT_VLAN_RANGES;
    const range = ranges.get(physnet);
    if (!range) {
      throw new AppError(
        ErrorCodes.UNSUPPORTED,
        `no VLAN range is configured for physical network ${physnet} (configured: ${[...ranges.keys()].join(', ') || 'none'})`,
      );
    }
    const hosts = await this.hosts();
    if (!hosts.some((h) => h.vlan?.physnet === physnet)) {
      throw new AppError(
        ErrorCodes.UNSUPPORTED,
        `no host serves vlan mode on physical network ${physnet} (a host needs netd --vlan-trunk with Open vSwitch)`,
        { physnet },
      );
    }
    return { physnet, range };
  }

  /**
   * A free VLAN id of the range, at random (concurrent creates rarely pick the same one). A freed
   * id stays held by a tombstone for `vlanQuarantineMs` (default 1 h, beyond the dead-host grace):
   * a host whose netd is down may still carry the deleted VPC's containers on that tag, and they
   * must not land on a new tenant's segment. Never-used ids go first.
   */
  private async freeVlan(
    physnet: string,
    range: { min: number; max: number },
    random: () => number,
  ): Promise<{ n: number; key: string; modRevision: bigint }> {
    const prefix = modelKeys.vlans(physnet);
    const now = (this.deps.now ?? Date.now)();
    const quarantine = this.deps.vlanQuarantineMs ?? 60 * 60_000;
    const held = new Map<number, { modRevision: bigint; free: boolean; freedAt?: number }>();
    for (const kv of (await this.deps.store.list(prefix)).kvs) {
      const freedAt = vlanTombstone(kv.value);
      held.set(Number(kv.key.slice(prefix.length)), {
        modRevision: kv.modRevision,
        free: freedAt !== undefined && now - freedAt >= quarantine,
        ...(freedAt !== undefined && { freedAt }),
      });
    }
    const unused: number[] = [];
    const released: number[] = [];
    let quarantined = 0;
    for (let id = range.min; id <= range.max; id++) {
      const h = held.get(id);
      if (!h) unused.push(id);
      else if (h.free) released.push(id);
      else if (h.freedAt !== undefined) quarantined++;
    }
    const pool = unused.length > 0 ? unused : released;
    if (pool.length === 0) {
      throw new AppError(
        ErrorCodes.RANGE_EXHAUSTED,
        `every VLAN id of physical network ${physnet} (${range.min}..${range.max}) is taken` +
          (quarantined ? ` (${quarantined} freed less than ${Math.round(quarantine / 60_000)} min ago)` : ''),
        { physnet, ...range },
      );
    }
    const n = pool[Math.floor(random() * pool.length)]!;
    return { n, key: modelKeys.vlan(physnet, n), modRevision: held.get(n)?.modRevision ?? 0n };
  }

  /**
   * A routed VPC's CIDR is routed as it is on every host: it may not overlap another routed VPC,
   * an external pool, a host's underlay address or a non-routable range (E_POOL_OVERLAP naming
   * what; E_CONFLICT when another routed VPC was created meanwhile: try again).
   * Returns the guard the create transaction must compare and rewrite.
   */
  private async checkRoutedCidr(
    cidr: Cidr,
    policy: NetworkPolicy,
  ): Promise<{ key: string; modRevision: bigint; value: string; what: string }> {
    const { store } = this.deps;
    const guardKv = await store.get(modelKeys.routedGuard());
    const refuse = (what: string) => {
      throw new AppError(ErrorCodes.POOL_OVERLAP, `a routed VPC's CIDR ${formatCidr(cidr)} overlaps ${what}`, {
        cidr: formatCidr(cidr),
      });
    };
    for (const range of NOT_ROUTABLE) if (overlaps(cidr, parseCidr(range))) refuse(`the non-routable range ${range}`);
    const allowed = policy.routedRanges;
    if (allowed?.length && !allowed.some((r) => within(cidr, parseCidr(r)))) {
      throw new AppError(
        ErrorCodes.FORBIDDEN,
        `a routed VPC's CIDR must lie within the operator's routed ranges (${allowed.join(', ')}); ${formatCidr(cidr)} does not`,
        { cidr: formatCidr(cidr), allowed },
      );
    }
    for (const vpc of await this.all()) {
      if (vpc.mode === 'routed' && overlaps(cidr, parseCidr(vpc.cidr))) refuse(`routed VPC ${vpc.name} (${vpc.cidr})`);
    }
    for (const pool of await this.deps.pools.listPools()) {
      if (pool.spec.kind === 'external' && overlaps(cidr, parseCidr(pool.spec.cidr))) {
        refuse(`the external pool ${pool.spec.name} (${pool.spec.cidr})`);
      }
    }
    for (const { value: host } of (await listJson<HostRecord>(store, modelKeys.hosts())).kvs) {
      for (const address of [host.underlayIp, host.underlayIp6]) {
        if (address !== undefined && contains(cidr, parseIpOrNone(address))) {
          refuse(`host ${host.name}'s underlay address ${address}`);
        }
      }
    }
    return {
      key: modelKeys.routedGuard(),
      modRevision: guardKv?.modRevision ?? 0n,
      value: String(Date.now()),
      what: 'the set of routed VPCs',
    };
  }

  private async hosts(): Promise<HostRecord[]> {
    return (await listJson<HostRecord>(this.deps.store, modelKeys.hosts())).kvs.map((kv) => kv.value);
  }

  async list(tenant: TenantRecord): Promise<VpcRecord[]> {
    return (await this.all()).filter((v) => v.tenant === tenant.name);
  }

  async all(): Promise<VpcRecord[]> {
    return (await listJson<VpcRecord>(this.deps.store, modelKeys.vpcs())).kvs.map((kv) => kv.value);
  }

  /** The tenant's VPC by name or id; E_NOT_FOUND when it is not the tenant's. */
  async get(tenant: TenantRecord, ref: string): Promise<VpcRecord> {
    const id = resolveVpcRef(tenant.name, ref);
    const kv = await getJson<VpcRecord>(this.deps.store, modelKeys.vpc(id));
    if (!kv || kv.value.tenant !== tenant.name) throw new AppError(ErrorCodes.NOT_FOUND, `no VPC "${ref}"`);
    return kv.value;
  }

  /** Sets (or, with undefined, removes) the VPC's default rate limits. */
  async setQos(tenant: TenantRecord, ref: string, qos: QosSpec | undefined): Promise<VpcRecord> {
    const vpc = await this.get(tenant, ref);
    const checked = checkQos(qos);
    checkWithinCap(checked, tenant.caps?.eth1, 'eth1');
    return updateJson<VpcRecord>(
      this.deps.store,
      modelKeys.vpc(vpc.name),
      (current) => withQos(current, checked),
      `no VPC "${ref}"`,
    );
  }

  /** Refused while endpoints are attached; the pool, the record and its VNI go. */
  async delete(tenant: TenantRecord, ref: string): Promise<void> {
    const { store } = this.deps;
    const vpc = await this.get(tenant, ref);
    const { keys } = await store.listKeys(modelKeys.vpcEndpoints(vpc.name));
    if (keys.length > 0) throw new AppError(ErrorCodes.CONFLICT, `VPC has ${keys.length} endpoints; delete them first`);
    await this.deps.pools.deletePool(vpc.name);
    await store.txn({
      compare: [],
      success: [
        { type: 'delete', key: modelKeys.vpc(vpc.name) },
        { type: 'delete', key: modelKeys.vni(vpc.vni) },
        ...(vpc.vlan !== undefined && vpc.physnet !== undefined
          ? [
              {
                type: 'put' as const,
                key: modelKeys.vlan(vpc.physnet, vpc.vlan),
                value: `${VLAN_TOMBSTONE}${(this.deps.now ?? Date.now)()}`,
              },
            ]
          : []),
      ],
    });
  }
}

/** A VLAN id key's value once its VPC is gone: `freed:<ms since epoch>`. */
const VLAN_TOMBSTONE = 'freed:';

function vlanTombstone(value: string): number | undefined {
  return value.startsWith(VLAN_TOMBSTONE) ? Number(value.slice(VLAN_TOMBSTONE.length)) : undefined;
}

/** Whether `inner` lies entirely inside `outer`. */
function within(inner: Cidr, outer: Cidr): boolean {
  return (
    inner.family === outer.family &&
    inner.prefixLength >= outer.prefixLength &&
    contains(outer, { family: inner.family, value: inner.network })
  );
}

/** A record with its rate limits replaced (undefined: removed). */
export function withQos<R extends { qos?: QosSpec }>(record: R, qos: QosSpec | undefined): R {
  const next = { ...record };
  if (qos) next.qos = qos;
  else delete next.qos;
  return next;
}

/** A host record's address, or one no CIDR contains when the record holds something else. */
function parseIpOrNone(text: string): ReturnType<typeof parseIp> {
  try {
    return parseIp(text);
  } catch {
    return { family: 4, value: -1n };
  }
}
