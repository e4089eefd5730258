import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import type { Store } from '../store/types.js';
import { getJson, listJson, updateJson } from '../store/json.js';
import { modelKeys } from './keys.js';
import { checkCaps } from './qos.js';
import { TENANT_NAME_RE, type TenantCaps, type TenantRecord } from './records.js';
import { hashToken, newTenantToken, tokenMatchesHash, tokenTenant } from './tokens.js';
import { createHoldingNumber } from './unique.js';

/**
 * Tenants and their tokens, in etcd. A tenant gets a 16-bit tag (unique: the tag key is created in
 * the same transaction) and a bearer token shown once. Every component that serves tenants
 * authenticates them here.
 */
export class TenantDirectory {
  constructor(
    private readonly store: Store,
    private readonly random: () => number = Math.random,
  ) {}

  async create(name: string): Promise<{ tenant: TenantRecord; token: string }> {
    if (!TENANT_NAME_RE.test(name)) throw invalidInput(`tenant name "${name}" must match ${TENANT_NAME_RE}`);
    const token = newTenantToken(name);
    const tenant = await createHoldingNumber<TenantRecord>(this.store, {
      what: `tenant ${name}`,
      numberName: 'tenant tag',
      key: modelKeys.tenant(name),
      numberKey: modelKeys.tag,
      pick: () => 1 + Math.floor(this.random() * 0xfffe),
      record: (tag) => ({ name, tag, tokenHash: hashToken(token) }),
      holder: name,
    });
    return { tenant, token };
  }

  async list(): Promise<TenantRecord[]> {
    return (await listJson<TenantRecord>(this.store, modelKeys.tenants())).kvs.map((kv) => kv.value);
  }

  async get(name: string): Promise<TenantRecord> {
    return (await this.read(name)).value;
  }

  /**
   * Sets the operator's caps of a tenant (replacing them; `{}` removes them). Every host lowers that
   * tenant's interfaces to them at once, whatever limits the tenant asked for.
   */
  async setCaps(name: string, caps: TenantCaps): Promise<TenantRecord> {
    const checked = checkCaps(caps);
    await this.read(name);
    return updateJson<TenantRecord>(
      this.store,
      modelKeys.tenant(name),
      (t) => {
        const next: TenantRecord = { ...t, caps: checked };
        if (Object.keys(checked).length === 0) delete next.caps;
        return next;
      },
      `no tenant "${name}"`,
    );
  }

  /** Refused while the tenant owns anything (`owned` counts it: VPCs, volumes, ...). */
  async delete(name: string, owned: (tenant: TenantRecord) => Promise<string | undefined>): Promise<void> {
    const kv = await this.read(name);
    const holding = await owned(kv.value);
    if (holding) throw new AppError(ErrorCodes.CONFLICT, `tenant ${name} has ${holding}; delete them first`);
    const { succeeded } = await this.store.txn({
      compare: [{ key: modelKeys.tenant(name), target: 'modRevision', op: '=', value: kv.modRevision }],
      success: [
        { type: 'delete', key: modelKeys.tenant(name) },
        { type: 'delete', key: modelKeys.tag(kv.value.tag) },
      ],
    });
    if (!succeeded) throw new AppError(ErrorCodes.CONFLICT, 'tenant changed meanwhile; try again');
  }

  /** The tenant a bearer token belongs to; E_UNAUTHORIZED for anything else. */
  async authenticate(token: string): Promise<TenantRecord> {
    const name = tokenTenant(token);
    const kv = TENANT_NAME_RE.test(name) ? await getJson<TenantRecord>(this.store, modelKeys.tenant(name)) : undefined;
    if (!kv || !tokenMatchesHash(token, kv.value.tokenHash)) {
      throw new AppError(ErrorCodes.UNAUTHORIZED, 'unknown or invalid tenant token');
    }
    return kv.value;
  }

  private async read(name: string) {
    const kv = TENANT_NAME_RE.test(name) ? await getJson<TenantRecord>(this.store, modelKeys.tenant(name)) : undefined;
    if (!kv) throw new AppError(ErrorCodes.NOT_FOUND, `no tenant "${name}"`);
    return kv;
  }
}
