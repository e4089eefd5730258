import { AppError, ErrorCodes, invalidInput, isAppError } from '../core/errors.js';
import { formatCidr, parseCidr } from '../core/cidr.js';
import type { Store } from '../store/types.js';
import { getJson, listJson, updateJson } from '../store/json.js';
import type { PoolSpec } from '../ipam/pool.js';
import { modelKeys } from './keys.js';
import { checkQos } from './qos.js';
import { createHoldingNumber } from './unique.js';
import {
  VPC_NAME_RE,
  resolveVpcRef,
  vpcId,
  type ModeName,
  type QosSpec,
  type TenantRecord,
  type VpcRecord,
} from './records.js';

/** What a VPC needs from the address manager: its pool, created and deleted with it. */
export interface PoolAdmin {
  createPool(spec: PoolSpec): Promise<unknown>;
  /** Refused (E_CONFLICT) while addresses of the pool are in use. */
  deletePool(name: string): Promise<void>;
}

export interface VpcSpec {
  name: string;
  cidr: string;
  mode?: ModeName;
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
    const id = vpcId(tenant.name, spec.name);
    if (await store.get(modelKeys.vpc(id))) throw new AppError(ErrorCodes.ALREADY_EXISTS, `VPC ${spec.name} exists`);
    const owner = await store.get(modelKeys.tenant(tenant.name));
    if (!owner) throw new AppError(ErrorCodes.NOT_FOUND, `no tenant "${tenant.name}"`);
    await this.deps.pools.createPool({ name: id, cidr, kind: 'vpc' });
    const random = this.deps.random ?? Math.random;
    try {
      return await createHoldingNumber<VpcRecord>(store, {
        what: `VPC ${spec.name}`,
        numberName: 'VNI',
        key: modelKeys.vpc(id),
        numberKey: modelKeys.vni,
        pick: () => 1 + Math.floor(random() * 0xfffffe),
        record: (vni) => ({
          name: id,
          tenant: tenant.name,
          mode,
          cidr,
          vni,
          ...(spec.mtu && { mtu: spec.mtu }),
          ...(qos && { qos }),
        }),
        holder: id,
        // A tenant deleted meanwhile (its delete compares this revision) keeps no VPC.
        owner: { key: owner.key, modRevision: owner.modRevision, value: owner.value, what: `tenant ${tenant.name}` },
      });
    } catch (err) {
      // The pool came first: it goes again, unless the VPC exists after all (a concurrent create
      // of the same VPC won, and the pool is its).
      if (!isAppError(err, ErrorCodes.ALREADY_EXISTS)) await this.deps.pools.deletePool(id).catch(() => undefined);
      throw err;
    }
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
      ],
    });
  }
}

/** A record with its rate limits replaced (undefined: removed). */
export function withQos<R extends { qos?: QosSpec }>(record: R, qos: QosSpec | undefined): R {
  const next = { ...record };
  if (qos) next.qos = qos;
  else delete next.qos;
  return next;
}
