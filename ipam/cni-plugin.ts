import {
  CniFailure,
  CniErrorCodes,
  validAttachments,
  versionGate,
  type CniRequest,
  type CniResult,
} from '../core/cni.js';
import { isAppError } from '../core/errors.js';
import { endpointId } from '../tenancy/records.js';
import { Ipam, type Allocation } from './allocator.js';
import type { Store } from '../store/types.js';
import type { EtcdConnectionOptions } from '../store/etcd.js';
import { etcdConnection, etcdInputFromEnv, mergeEtcdInput, type EtcdConnectionInput } from '../store/etcd-config.js';

/**
 * `netd-ipam`: the cluster IPAM as a standalone CNI IPAM plugin, usable by any main plugin (the
 * reference `bridge`, `ptp`, `macvlan`, ...). Network config:
 *
 *   "ipam": { "type": "netd-ipam", "pool": "vpc1", "host": "h1", "routes": [{ "dst": "0.0.0.0/0" }],
 *             "etcd": { "endpoints": ["https://10.77.0.1:2379"], "ca": "/etc/netd/etcd-ca.pem",
 *                       "cert": "/etc/netd/etcd-netd.pem", "key": "/etc/netd/etcd-netd-key.pem" } }
 *
 * `etcd` may also name a `user` and a `passwordFile` (never a password: network configs are often
 * world-readable). The older `"etcdEndpoints": [...]` still works. `host` and each etcd setting fall
 * back to $NETD_HOST and $NETD_ETCD_ENDPOINTS (comma-separated), _CA, _CERT, _KEY, _USER,
 * _PASSWORD_FILE, _PASSWORD.
 * A static address comes from the `ips` capability (runtimeConfig.ips), args.cni.ips or
 * CNI_ARGS IP=; a sticky address from CNI_ARGS NETD_STICKY=<name>.
 */

interface IpamConfig {
  pool: string;
  host: string;
  etcd: EtcdConnectionOptions;
  routes: Array<{ dst: string; gw?: string }>;
}

const ETCD_FIELDS = ['endpoints', 'ca', 'cert', 'key', 'user', 'passwordFile'] as const;
const ENV_NAMES: Record<string, string> = {
  endpoints: 'ENDPOINTS',
  ca: 'CA',
  cert: 'CERT',
  key: 'KEY',
  user: 'USER',
  passwordFile: 'PASSWORD_FILE',
};
const ETCD_NAMES = {
  ...(Object.fromEntries(ETCD_FIELDS.map((f) => [f, `ipam.etcd.${f} (or $NETD_ETCD_${ENV_NAMES[f]})`])) as Record<
    (typeof ETCD_FIELDS)[number],
    string
  >),
  password: '$NETD_ETCD_PASSWORD',
};

/** The ipam section's etcd settings (`etcd` object, or the older `etcdEndpoints`), over the environment. */
function etcdSettings(
  section: Record<string, unknown>,
  env: Record<string, string | undefined>,
): EtcdConnectionOptions {
  const fail = (msg: string) => new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, msg);
  const given = section.etcd ?? {};
  if (typeof given !== 'object' || given === null || Array.isArray(given))
    throw fail('ipam.etcd must be an object: { endpoints, ca?, cert?, key?, user?, passwordFile? }');
  const fields = given as Record<string, unknown>;
  if ('password' in fields)
    throw fail(
      'ipam.etcd.password is not accepted (network configs are readable): use passwordFile or $NETD_ETCD_PASSWORD',
    );
  for (const k of Object.keys(fields)) {
    if (!(ETCD_FIELDS as readonly string[]).includes(k)) throw fail(`ipam.etcd.${k} is not a known setting`);
    const v = fields[k];
    const ok = k === 'endpoints' ? Array.isArray(v) || typeof v === 'string' : typeof v === 'string';
    if (!ok) throw fail(`ipam.etcd.${k} must be ${k === 'endpoints' ? 'a list of URLs' : 'a string'}`);
  }
  if (section.etcdEndpoints !== undefined && fields.endpoints !== undefined)
    throw fail('give the etcd endpoints once: ipam.etcd.endpoints or ipam.etcdEndpoints');
  if (section.etcdEndpoints !== undefined && !Array.isArray(section.etcdEndpoints))
    throw fail('ipam.etcdEndpoints must be a list of URLs');
  const fromConfig: EtcdConnectionInput = {
    ...(fields as EtcdConnectionInput),
    ...(section.etcdEndpoints !== undefined && { endpoints: section.etcdEndpoints as string[] }),
  };
  try {
    return etcdConnection(mergeEtcdInput(fromConfig, etcdInputFromEnv(env)), ETCD_NAMES);
  } catch (err) {
    if (isAppError(err)) throw fail(err.message);
    throw err;
  }
}

export function ipamConfig(req: CniRequest, env: Record<string, string | undefined>): IpamConfig {
  const section = req.config.ipam ?? {};
  const pool = section.pool;
  if (typeof pool !== 'string' || pool === '')
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'ipam.pool is required');
  const host = typeof section.host === 'string' ? section.host : env.NETD_HOST;
  if (!host) throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'ipam.host (or $NETD_HOST) is required');
  const etcd = etcdSettings(section as Record<string, unknown>, env);
  const routes = section.routes === undefined ? [] : section.routes;
  if (
    !Array.isArray(routes) ||
    !routes.every((r) => r && typeof r === 'object' && typeof (r as { dst?: unknown }).dst === 'string')
  ) {
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'ipam.routes must be a list of {dst, gw?}');
  }
  return { pool, host, etcd, routes: routes as IpamConfig['routes'] };
}

/** The one static address asked for, if any (ips capability, args, or CNI_ARGS IP=). */
export function requestedIp(req: CniRequest): string | undefined {
  const fromRuntime = (req.config.runtimeConfig?.ips ??
    (req.config.args?.cni as { ips?: unknown } | undefined)?.ips) as unknown;
  const list = Array.isArray(fromRuntime) ? fromRuntime : req.args.IP !== undefined ? req.args.IP.split(',') : [];
  if (list.length === 0) return undefined;
  if (list.length > 1 || typeof list[0] !== 'string')
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'exactly one static address per pool is supported');
  return list[0].split('/')[0];
}

/** The address's handle: the attachment on this host (container ids are unique per runtime only). */
export function handleOf(req: CniRequest, host: string): string {
  return endpointId({ host, containerId: req.containerId, ifname: req.ifname });
}

export function toResult(req: CniRequest, a: Allocation, routes: IpamConfig['routes']): CniResult {
  const legacy = req.config.cniVersion.startsWith('0.');
  return {
    cniVersion: req.config.cniVersion,
    ips: [{ ...(legacy && { version: a.ip.includes(':') ? '6' : '4' }), address: a.cidr, gateway: a.gateway }],
    routes,
    dns: {},
  };
}

export async function runIpamPlugin(
  req: CniRequest,
  env: Record<string, string | undefined>,
  openStore: (etcd: EtcdConnectionOptions) => Store,
): Promise<unknown> {
  const version = versionGate(req);
  if (version) return version;
  const cfg = ipamConfig(req, env);
  const handle = handleOf(req, cfg.host);
  const store = openStore(cfg.etcd);
  try {
    const ipam = new Ipam({ store, host: cfg.host });
    switch (req.command) {
      case 'ADD': {
        const a = await ipam.allocate({
          pool: cfg.pool,
          handle: handle,
          owner: { containerId: req.containerId, ifname: req.ifname, netns: req.netns },
          ip: requestedIp(req),
          sticky: req.args.NETD_STICKY,
        });
        return toResult(req, a, cfg.routes);
      }
      case 'DEL':
        await ipam.releaseHandle(handle, cfg.pool);
        return undefined;
      case 'CHECK': {
        const held = (await ipam.getHandle(handle)).filter((h) => h.pool === cfg.pool);
        if (held.length === 0)
          throw new CniFailure(
            CniErrorCodes.CONTAINER_UNKNOWN,
            `no address allocated to ${handle} in pool ${cfg.pool}`,
          );
        const want = (req.config.prevResult?.ips ?? []).map((ip) => ip.address.split('/')[0]);
        if (want.length > 0 && !want.includes(held[0]!.ip)) {
          throw new CniFailure(
            CniErrorCodes.CONTAINER_UNKNOWN,
            `prevResult says ${want.join(',')} but ${held[0]!.ip} is allocated`,
          );
        }
        return undefined;
      }
      case 'GC': {
        await ipam.gcAttachments(cfg.pool, validAttachments(req.config));
        return undefined;
      }
      case 'STATUS': {
        try {
          await ipam.getPool(cfg.pool);
        } catch (err) {
          throw new CniFailure(CniErrorCodes.PLUGIN_NOT_AVAILABLE, `ipam not available: ${(err as Error).message}`);
        }
        return undefined;
      }
    }
  } finally {
    await store.close();
  }
}
