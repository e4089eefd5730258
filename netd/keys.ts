/** netd's records in etcd (JSON values; see docs/architecture.md). */
export const NETD_ROOT = '/netd/v1/';

export const netdKeys = {
  vpcs: () => `${NETD_ROOT}vpcs/`,
  vpc: (vpc: string) => `${NETD_ROOT}vpcs/${vpc}`,
  hosts: () => `${NETD_ROOT}hosts/`,
  host: (host: string) => `${NETD_ROOT}hosts/${host}`,
  endpoints: () => `${NETD_ROOT}endpoints/`,
  endpoint: (vpc: string, id: string) => `${NETD_ROOT}endpoints/${vpc}/${id}`,
};

/** eth0 (external) endpoints, per host: each daemon follows only its own. */
export const externalKeys = {
  host: (host: string) => `${NETD_ROOT}external/${host}/`,
  endpoint: (host: string, id: string) => `${NETD_ROOT}external/${host}/${id}`,
};
