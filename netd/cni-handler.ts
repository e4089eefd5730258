import { AppError, ErrorCodes } from '../core/errors.js';
import {
  CniFailure,
  CniErrorCodes,
  commandSupported,
  parseCniRequest,
  toCniError,
  versionResult,
  type CniRequest,
  type CniResult,
} from '../core/cni.js';
import { IpClient } from '../sys/ip.js';
import { attachInternal, detachInternal, endpointId, type AttachDeps, type ConvergeHints } from './attach.js';
import { netdKeys } from './keys.js';
import type { EndpointRecord, QosSpec } from './model.js';
import { fromBandwidthCapability } from './qos.js';
import { parseIp } from '../core/cidr.js';
import { attachExternal, detachExternal, LINK_LOCAL_GATEWAY, type ExternalEndpointRecord } from './external.js';

/**
 * The CNI verbs, executed by the daemon on behalf of the thin `netd` plugin. A network config
 * names the VPC it attaches to:
 *
 *   { "cniVersion": "1.0.0", "name": "vpc-a", "type": "netd", "vpc": "a" }
 *
 * Requests arrive already split into environment and stdin; the reply is what the plugin prints
 * and its exit status.
 */

export interface CniReply {
  exitCode: number;
  stdout: string;
}

export interface CniHandlerDeps extends AttachDeps {
  /** Resolves once the host's data path includes the endpoint (the daemon's local reconcile). */
  converge: (endpoint: EndpointRecord, hints?: ConvergeHints) => Promise<void>;
  /** Endpoints of this host, from the daemon's view. */
  localEndpoints: () => EndpointRecord[];
  ready: () => boolean;
  /** The external (eth0) pool; networks with "external": true need it. */
  externalPool?: string;
  localExternalEndpoints: () => ExternalEndpointRecord[];
  convergeExternal: (e: ExternalEndpointRecord, qosApplied?: QosSpec) => Promise<void>;
}

export async function handleCni(
  env: Record<string, string | undefined>,
  stdin: string,
  deps: CniHandlerDeps,
): Promise<CniReply> {
  let cniVersion = '1.1.0';
  try {
    const req = parseCniRequest(env, stdin);
    cniVersion = req.config.cniVersion || cniVersion;
    const out = await dispatch(req, deps);
    return { exitCode: 0, stdout: out === undefined ? '' : JSON.stringify(out) + '\n' };
  } catch (err) {
    return { exitCode: 1, stdout: JSON.stringify(toCniError(err, cniVersion)) + '\n' };
  }
}

/** The attachments a GC call says the runtime still has (ids "containerId:ifname"). */
function validAttachments(req: CniRequest): Set<string> {
  const raw = req.config['cni.dev/valid-attachments'];
  if (raw !== undefined && !Array.isArray(raw))
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'cni.dev/valid-attachments must be a list');
  return new Set(
    ((raw ?? []) as Array<{ containerID?: unknown; ifname?: unknown }>).map((v) =>
      endpointId(String(v.containerID), String(v.ifname)),
    ),
  );
}

/** Static address, MAC and rate limits asked for by the runtime, checked before anything is touched. */
function requested(req: CniRequest): { ip?: string; mac?: string; qos?: QosSpec } {
  const ips = req.config.runtimeConfig?.ips;
  const ip = Array.isArray(ips) && typeof ips[0] === 'string' ? ips[0].split('/')[0] : req.args.IP;
  const mac = typeof req.config.runtimeConfig?.mac === 'string' ? req.config.runtimeConfig.mac : req.args.MAC;
  if (mac !== undefined && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac))
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, `"${mac}" is not a MAC address`);
  if (ip !== undefined) parseIp(ip);
  const qos = fromBandwidthCapability(req.config.runtimeConfig?.bandwidth);
  return { ...(ip !== undefined && { ip }), ...(mac !== undefined && { mac }), ...(qos && { qos }) };
}

/** CHECK: the container's interface must still carry the address netd recorded for it. */
async function checkCarries(req: CniRequest, ip: string, deps: CniHandlerDeps): Promise<void> {
  const addrs = await new IpClient(deps.runner, { path: req.netns }).addresses(req.ifname).catch(() => []);
  if (!addrs[0]?.addr_info.some((a) => a.local === ip)) {
    throw new CniFailure(CniErrorCodes.CONTAINER_UNKNOWN, `${req.ifname} in ${req.netns} does not carry ${ip}`);
  }
}

function notReady(deps: CniHandlerDeps): void {
  if (!deps.ready()) throw new CniFailure(CniErrorCodes.PLUGIN_NOT_AVAILABLE, 'netd is not synced with etcd yet');
}

function vpcOf(req: CniRequest): string {
  const vpc = req.config.vpc;
  if (typeof vpc !== 'string' || vpc === '')
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'network config needs "vpc": the VPC to attach to');
  return vpc;
}

async function dispatch(req: CniRequest, deps: CniHandlerDeps): Promise<unknown> {
  if (req.command === 'VERSION') return versionResult(req.config.cniVersion);
  if (!commandSupported(req.command, req.config.cniVersion)) {
    throw new CniFailure(
      CniErrorCodes.INCOMPATIBLE_VERSION,
      `${req.command} is not defined for cniVersion ${req.config.cniVersion}`,
    );
  }
  if (req.config.external === true) return dispatchExternal(req, deps);
  const vpc = vpcOf(req);
  switch (req.command) {
    case 'ADD': {
      const att = await attachInternal(
        { containerId: req.containerId, ifname: req.ifname, netnsPath: req.netns, vpc, ...requested(req) },
        deps,
      );
      const result: CniResult = {
        cniVersion: req.config.cniVersion,
        interfaces: [{ name: req.ifname, mac: att.endpoint.mac, sandbox: req.netns }],
        ips: [{ address: att.allocation.cidr, interface: 0 }],
        routes: [],
        dns: {},
      };
      return result;
    }
    case 'DEL':
      await detachInternal({ containerId: req.containerId, ifname: req.ifname, vpc }, deps);
      return undefined;
    case 'CHECK': {
      const kv = await deps.store.get(netdKeys.endpoint(vpc, endpointId(req.containerId, req.ifname)));
      if (!kv)
        throw new CniFailure(
          CniErrorCodes.CONTAINER_UNKNOWN,
          `no endpoint for ${req.containerId}/${req.ifname} in VPC ${vpc}`,
        );
      await checkCarries(req, (JSON.parse(kv.value) as EndpointRecord).ip, deps);
      return undefined;
    }
    case 'STATUS':
      notReady(deps);
      return undefined;
    case 'GC': {
      const keep = validAttachments(req);
      for (const e of deps.localEndpoints()) {
        if (e.vpc !== vpc || keep.has(e.id)) continue;
        const [containerId, ifname] = e.id.split(':') as [string, string];
        await detachInternal({ containerId, ifname, vpc }, deps);
      }
      return undefined;
    }
    default:
      throw new AppError(ErrorCodes.INTERNAL, `unhandled CNI command ${String(req.command)}`);
  }
}

/** The external network (eth0): `{ "type": "netd", "external": true }`. */
async function dispatchExternal(req: CniRequest, deps: CniHandlerDeps): Promise<unknown> {
  const pool = deps.externalPool;
  if (!pool)
    throw new CniFailure(
      CniErrorCodes.INVALID_NETWORK_CONFIG,
      'this host has no external network (netd runs without --external-pool)',
    );
  const ext = { ...deps, externalPool: pool };
  switch (req.command) {
    case 'ADD': {
      const att = await attachExternal(
        { containerId: req.containerId, ifname: req.ifname, netnsPath: req.netns, ...requested(req) },
        ext,
      );
      const result: CniResult = {
        cniVersion: req.config.cniVersion,
        interfaces: [{ name: req.ifname, mac: att.endpoint.mac, sandbox: req.netns }],
        ips: [{ address: `${att.allocation.ip}/32`, gateway: LINK_LOCAL_GATEWAY, interface: 0 }],
        routes: [{ dst: '0.0.0.0/0', gw: LINK_LOCAL_GATEWAY }],
        dns: {},
      };
      return result;
    }
    case 'DEL':
      await detachExternal({ containerId: req.containerId, ifname: req.ifname }, ext);
      return undefined;
    case 'CHECK': {
      const e = deps.localExternalEndpoints().find((x) => x.id === endpointId(req.containerId, req.ifname));
      if (!e)
        throw new CniFailure(
          CniErrorCodes.CONTAINER_UNKNOWN,
          `no external endpoint for ${req.containerId}/${req.ifname}`,
        );
      await checkCarries(req, e.ip, deps);
      return undefined;
    }
    case 'STATUS':
      notReady(deps);
      return undefined;
    case 'GC': {
      const keep = validAttachments(req);
      for (const e of deps.localExternalEndpoints())
        if (!keep.has(e.id)) await detachExternal({ containerId: e.containerId, ifname: e.ifname }, ext);
      return undefined;
    }
    default:
      throw new AppError(ErrorCodes.INTERNAL, `unhandled CNI command ${String(req.command)}`);
  }
}
