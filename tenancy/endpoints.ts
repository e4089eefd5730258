import { AppError, ErrorCodes } from '../core/errors.js';
import type { Store } from '../store/types.js';
import { getJson, listJson, updateJson } from '../store/json.js';
import { modelKeys } from './keys.js';
import { checkQos, checkWithinCap } from './qos.js';
import { withQos } from './vpcs.js';
import type { EndpointRecord, ExternalEndpointRecord, QosSpec, VpcRecord } from './records.js';

/** An endpoint as the API lists it: with its container's external interface, when it has one. */
export type ListedEndpoint = EndpointRecord & {
  external?: Pick<ExternalEndpointRecord, 'ifname' | 'ip' | 'mac' | 'qos'>;
};

/**
 * The pod map as tenants see it: the endpoints of a VPC, and the rate limits a tenant may change.
 * (Records are written by the data plane — netd — never here; only their limits change here.)
 */
export class EndpointDirectory {
  constructor(private readonly store: Store) {}

  async list(vpc: VpcRecord): Promise<ListedEndpoint[]> {
    const endpoints = (await listJson<EndpointRecord>(this.store, modelKeys.vpcEndpoints(vpc.name))).kvs.map(
      (kv) => kv.value,
    );
    const externals = await this.externalsOf(endpoints);
    return endpoints.map((e) => {
      const x = e.containerId !== undefined ? externals.get(`${e.host}/${e.containerId}`)?.value : undefined;
      return x ? { ...e, external: { ifname: x.ifname, ip: x.ip, mac: x.mac, ...(x.qos && { qos: x.qos }) } } : e;
    });
  }

  /**
   * Changes an endpoint's rate limits; its host applies them to the running interface. `cap`: the
   * tenant's eth1 cap (a request above it is refused; no limits leaves the cap in force).
   */
  async setQos(vpc: VpcRecord, id: string, qos: QosSpec | undefined, cap?: QosSpec): Promise<EndpointRecord> {
    const checked = checkQos(qos);
    checkWithinCap(checked, cap, 'eth1');
    return updateJson<EndpointRecord>(
      this.store,
      modelKeys.endpoint(vpc.name, id),
      (e) => withQos(e, checked),
      `no endpoint "${id}"`,
    );
  }

  /**
   * Changes the limits of the external interface (eth0) of the container behind endpoint `id`. A
   * tenant owns the eth0 of the containers it attached to its VPCs (eth0 records carry no tenant).
   */
  async setExternalQos(
    vpc: VpcRecord,
    id: string,
    qos: QosSpec | undefined,
    cap?: QosSpec,
  ): Promise<ExternalEndpointRecord> {
    const checked = checkQos(qos);
    checkWithinCap(checked, cap, 'eth0');
    const endpoint = await getJson<EndpointRecord>(this.store, modelKeys.endpoint(vpc.name, id));
    if (!endpoint) throw new AppError(ErrorCodes.NOT_FOUND, `no endpoint "${id}"`);
    const found = (await this.externalsOf([endpoint.value])).values().next().value;
    if (!found) throw new AppError(ErrorCodes.NOT_FOUND, `the container of "${id}" has no external interface`);
    return updateJson<ExternalEndpointRecord>(
      this.store,
      found.key,
      (x) => withQos(x, checked),
      'the external interface is gone',
    );
  }

  /** The eth0 records of these endpoints' containers, found on their hosts, by "host/containerId". */
  private async externalsOf(endpoints: readonly EndpointRecord[]) {
    const out = new Map<string, { key: string; value: ExternalEndpointRecord }>();
    const wanted = new Set(
      endpoints.filter((e) => e.containerId !== undefined).map((e) => `${e.host}/${e.containerId}`),
    );
    for (const host of new Set(endpoints.map((e) => e.host))) {
      for (const kv of (await listJson<ExternalEndpointRecord>(this.store, modelKeys.hostExternals(host))).kvs) {
        const ref = `${kv.value.host}/${kv.value.containerId}`;
        if (wanted.has(ref)) out.set(ref, { key: kv.key, value: kv.value });
      }
    }
    return out;
  }
}
