/**
 * Where the cluster's model lives in etcd (versioned prefix, JSON values; see records.ts). Every
 * component builds its keys here, so a layout change is one edit.
 *
 *   /netd/v1/tenants/<tenant>            TenantRecord
 *   /netd/v1/tags/<tag>                  <tenant>            (a tag is held by one tenant)
 *   /netd/v1/vpcs/<tenant>.<vpc>         VpcRecord
 *   /netd/v1/vnis/<vni>                  <vpc id>            (a VNI is held by one VPC)
 *   /netd/v1/vlans/<physnet>/<id>        <vpc id>            (a VLAN id is held by one VPC per physnet;
 *                                        freed:<ms> once it is deleted: quarantined, then reusable)
 *   /netd/v1/hosts/<host>                HostRecord          (bound to the host's lease)
 *   /netd/v1/endpoints/<vpc id>/<id>     EndpointRecord      (the pod map)
 *   /netd/v1/external/<host>/<id>        ExternalEndpointRecord
 *   /netd/v1/policy                      NetworkPolicy       (the operator's: routed ranges, VLAN ranges)
 *   /netd/v1/routed-guard                 a timestamp            (rewritten by every routed VPC create)
 */
export const MODEL_ROOT = '/netd/v1/';

export const modelKeys = {
  tenants: () => `${MODEL_ROOT}tenants/`,
  tenant: (name: string) => `${MODEL_ROOT}tenants/${name}`,
  tag: (tag: number) => `${MODEL_ROOT}tags/${tag}`,
  vpcs: () => `${MODEL_ROOT}vpcs/`,
  vpc: (id: string) => `${MODEL_ROOT}vpcs/${id}`,
  vni: (vni: number) => `${MODEL_ROOT}vnis/${vni}`,
  vlans: (physnet: string) => `${MODEL_ROOT}vlans/${physnet}/`,
  vlan: (physnet: string, id: number) => `${MODEL_ROOT}vlans/${physnet}/${id}`,
  hosts: () => `${MODEL_ROOT}hosts/`,
  host: (host: string) => `${MODEL_ROOT}hosts/${host}`,
  endpoints: () => `${MODEL_ROOT}endpoints/`,
  vpcEndpoints: (vpc: string) => `${MODEL_ROOT}endpoints/${vpc}/`,
  endpoint: (vpc: string, id: string) => `${MODEL_ROOT}endpoints/${vpc}/${id}`,
  externals: () => `${MODEL_ROOT}external/`,
  hostExternals: (host: string) => `${MODEL_ROOT}external/${host}/`,
  external: (host: string, id: string) => `${MODEL_ROOT}external/${host}/${id}`,
  routedGuard: () => `${MODEL_ROOT}routed-guard`,
  policy: () => `${MODEL_ROOT}policy`,
};
