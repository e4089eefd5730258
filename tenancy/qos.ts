import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import type { EndpointRecord, QosSpec, TenantCaps, TenantRecord, VpcRecord } from './records.js';

/** Limits an operator or tenant may set on an interface, in bits/s (what tc's tbf handles well). */
export const MIN_RATE_BPS = 8_000;
export const MAX_RATE_BPS = 100_000_000_000;

/** Validates rate limits; an empty spec is "no limits" (undefined). */
export function checkQos(q: QosSpec | undefined): QosSpec | undefined {
  if (!q) return undefined;
  for (const [k, v] of Object.entries(q)) {
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < MIN_RATE_BPS || v > MAX_RATE_BPS) {
      throw invalidInput(`qos.${k} must be an integer from ${MIN_RATE_BPS} to ${MAX_RATE_BPS} bits/s`, { [k]: v });
    }
  }
  return q.ingressBps === undefined && q.egressBps === undefined ? undefined : q;
}

/** Validates an operator's caps; kinds without limits are dropped (an empty object: no caps). */
export function checkCaps(caps: TenantCaps): TenantCaps {
  const out: TenantCaps = {};
  for (const kind of ['eth0', 'eth1'] as const) {
    const q = checkQos(caps[kind]);
    if (q) out[kind] = q;
  }
  return out;
}

/**
 * Refuses a tenant's limits that exceed its cap (E_OVER_CAP, naming the direction and the cap).
 * Asking for no limit is allowed: the cap stays in force (capQos), the tenant just adds none.
 */
export function checkWithinCap(q: QosSpec | undefined, cap: QosSpec | undefined, kind: 'eth0' | 'eth1'): void {
  if (!q || !cap) return;
  for (const dir of ['ingressBps', 'egressBps'] as const) {
    const want = q[dir];
    const most = cap[dir];
    if (want !== undefined && most !== undefined && want > most) {
      throw new AppError(
        ErrorCodes.OVER_CAP,
        `${kind} ${dir === 'ingressBps' ? 'ingress' : 'egress'} ${want} bits/s exceeds the operator's cap of ${most} bits/s`,
        { kind, [dir]: want, cap: most },
      );
    }
  }
}

/** What an interface really gets: the tenant's (or VPC's) limits, lowered to the cap per direction. */
export function capQos(q: QosSpec | undefined, cap: QosSpec | undefined): QosSpec | undefined {
  if (!cap) return q;
  const out: QosSpec = {};
  for (const dir of ['ingressBps', 'egressBps'] as const) {
    const v = minDefined(q?.[dir], cap[dir]);
    if (v !== undefined) out[dir] = v;
  }
  return out.ingressBps === undefined && out.egressBps === undefined ? undefined : out;
}

/** The stricter of several caps (a container whose eth0 serves VPCs of more than one tenant). */
export function strictestCap(caps: ReadonlyArray<QosSpec | undefined>): QosSpec | undefined {
  return caps.reduce<QosSpec | undefined>((acc, c) => (acc ? capQos(acc, c) : c), undefined);
}

function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined ? b : b === undefined ? a : Math.min(a, b);
}

/** The caps in force on one interface: eth1 by its VPC's tenant, eth0 by its container's tenants. */
export interface CapLookup {
  eth1(vpc: string): QosSpec | undefined;
  /**
   * eth0 records carry no tenant: a container's eth0 belongs to the tenants of the VPCs its other
   * interfaces on that host are attached to (the strictest cap when there are several; none when
   * the container is on no VPC yet, as when the runtime adds eth0 before eth1).
   */
  eth0(host: string, containerId: string | undefined): QosSpec | undefined;
}

export function capsOf(model: {
  vpc: (id: string) => Pick<VpcRecord, 'tenant'> | undefined;
  tenant: (name: string) => Pick<TenantRecord, 'caps'> | undefined;
  endpoints: () => Iterable<Pick<EndpointRecord, 'vpc' | 'host' | 'containerId'>>;
}): CapLookup {
  const tenantCaps = (vpc: string) => {
    const owner = model.vpc(vpc)?.tenant;
    return owner === undefined ? undefined : model.tenant(owner)?.caps;
  };
  let vpcsOfContainer: Map<string, string[]> | undefined;
  return {
    eth1: (vpc) => tenantCaps(vpc)?.eth1,
    eth0: (host, containerId) => {
      if (containerId === undefined) return undefined;
      // One pass over the endpoints indexes every container's VPCs (a reconcile asks for each eth0).
      vpcsOfContainer ??= indexContainers(model.endpoints());
      return strictestCap((vpcsOfContainer.get(`${host}/${containerId}`) ?? []).map((v) => tenantCaps(v)?.eth0));
    },
  };
}

function indexContainers(endpoints: Iterable<Pick<EndpointRecord, 'vpc' | 'host' | 'containerId'>>) {
  const index = new Map<string, string[]>();
  for (const e of endpoints) {
    if (e.containerId === undefined) continue;
    const key = `${e.host}/${e.containerId}`;
    const list = index.get(key);
    if (list) list.push(e.vpc);
    else index.set(key, [e.vpc]);
  }
  return index;
}
