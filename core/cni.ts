import { AppError, ErrorCodes, type ErrorCode } from './errors.js';

/**
 * The CNI protocol, independent of any plugin (pure): reading the environment and stdin, version
 * negotiation, result and error shapes, and the mapping of our error codes to the spec's.
 */

export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'GC' | 'STATUS' | 'VERSION';
export const CNI_COMMANDS: readonly CniCommand[] = ['ADD', 'DEL', 'CHECK', 'GC', 'STATUS', 'VERSION'];
/** The newest spec version: what we answer in, when a request does not say. */
export const LATEST_CNI_VERSION = '1.1.0';

/** Error codes from the CNI spec, plus plugin-specific ones (>= 100). */
export const CniErrorCodes = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  CONTAINER_UNKNOWN: 3,
  INVALID_ENV: 4,
  IO_FAILURE: 5,
  DECODE_FAILURE: 6,
  INVALID_NETWORK_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
  PLUGIN_NOT_AVAILABLE: 50,
  /** STATUS: the plugin cannot serve ADDs now (e.g. its daemon is down). */
  PLUGIN_NOT_AVAILABLE_LIMITED: 51,
  POOL_EXHAUSTED: 100,
  ADDRESS_IN_USE: 101,
  POOL_OVERLAP: 102,
  INTERNAL: 999,
} as const;

export interface CniError {
  cniVersion: string;
  code: number;
  msg: string;
  details?: string;
}

export class CniFailure extends Error {
  constructor(
    readonly code: number,
    message: string,
    readonly details?: string,
  ) {
    super(message);
    this.name = 'CniFailure';
  }
}

const MAX_STDIN = 1024 * 1024;
const CONTAINER_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$/;
const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export interface CniRequest {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  /** CNI_ARGS parsed (K=V;K=V). */
  args: Record<string, string>;
  path: string;
  config: CniNetworkConfig;
}

export interface CniNetworkConfig {
  cniVersion: string;
  name: string;
  type: string;
  ipam?: Record<string, unknown> & { type?: string };
  runtimeConfig?: Record<string, unknown>;
  args?: Record<string, unknown>;
  prevResult?: CniResult;
  [key: string]: unknown;
}

export interface CniIpConfig {
  /** "4" or "6": required by the 0.x result format only. */
  version?: string;
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniInterface {
  name: string;
  mac?: string;
  /** The container's netns path; absent for an interface on the host (the veth's host end). */
  sandbox?: string;
  mtu?: number;
}

export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips: CniIpConfig[];
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: { nameservers?: string[]; domain?: string; search?: string[] };
}

/**
 * Validates the environment and stdin of one invocation. Throws CniFailure with the spec's code.
 * VERSION needs no config; GC and STATUS need no container.
 */
export function parseCniRequest(env: Record<string, string | undefined>, stdin: string): CniRequest {
  const command = env.CNI_COMMAND as CniCommand | undefined;
  if (!command || !CNI_COMMANDS.includes(command)) {
    throw new CniFailure(CniErrorCodes.INVALID_ENV, `CNI_COMMAND must be one of ${CNI_COMMANDS.join(', ')}`);
  }
  const needsContainer = command === 'ADD' || command === 'DEL' || command === 'CHECK';
  const containerId = env.CNI_CONTAINERID ?? '';
  const ifname = env.CNI_IFNAME ?? '';
  const netns = env.CNI_NETNS ?? '';
  if (needsContainer) {
    if (!CONTAINER_ID_RE.test(containerId))
      throw new CniFailure(CniErrorCodes.INVALID_ENV, 'CNI_CONTAINERID is missing or has invalid characters');
    if (!IFNAME_RE.test(ifname))
      throw new CniFailure(CniErrorCodes.INVALID_ENV, 'CNI_IFNAME is missing or invalid (1-15 of A-Z a-z 0-9 _ . -)');
    if (command === 'ADD' && netns === '')
      throw new CniFailure(CniErrorCodes.INVALID_ENV, 'CNI_NETNS is required for ADD');
  }
  if (netns.length > 4096 || netns.includes('\0'))
    throw new CniFailure(CniErrorCodes.INVALID_ENV, 'CNI_NETNS is invalid');
  const args = parseCniArgs(env.CNI_ARGS ?? '');
  if (command === 'VERSION') {
    return {
      command,
      containerId,
      netns,
      ifname,
      args,
      path: env.CNI_PATH ?? '',
      config: { cniVersion: requestedCniVersion(stdin), name: '', type: '' },
    };
  }
  return { command, containerId, netns, ifname, args, path: env.CNI_PATH ?? '', config: parseNetworkConfig(stdin) };
}

export function parseCniArgs(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (text === '') return out;
  if (text.length > 64 * 1024) throw new CniFailure(CniErrorCodes.INVALID_ENV, 'CNI_ARGS is too long');
  for (const pair of text.split(';')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw new CniFailure(CniErrorCodes.INVALID_ENV, `CNI_ARGS entry "${pair}" is not KEY=VALUE`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

export function parseNetworkConfig(stdin: string): CniNetworkConfig {
  if (stdin.length > MAX_STDIN)
    throw new CniFailure(CniErrorCodes.DECODE_FAILURE, `network configuration over ${MAX_STDIN} bytes`);
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniFailure(CniErrorCodes.DECODE_FAILURE, `network configuration is not JSON: ${(err as Error).message}`);
  }
  if (!raw || typeof raw !== 'object' || Array.isArray(raw))
    throw new CniFailure(CniErrorCodes.DECODE_FAILURE, 'network configuration must be a JSON object');
  const cfg = raw as CniNetworkConfig;
  if (typeof cfg.cniVersion !== 'string')
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'cniVersion is required');
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(cfg.cniVersion)) {
    throw new CniFailure(
      CniErrorCodes.INCOMPATIBLE_VERSION,
      `cniVersion ${cfg.cniVersion} is not supported (supported: ${SUPPORTED_VERSIONS.join(', ')})`,
    );
  }
  if (typeof cfg.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(cfg.name)) {
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'name is required (1-63 of A-Z a-z 0-9 _ . -)');
  }
  if (typeof cfg.type !== 'string' || cfg.type === '')
    throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, 'type is required');
  return cfg;
}

export function versionResult(cniVersion = LATEST_CNI_VERSION): {
  cniVersion: string;
  supportedVersions: readonly string[];
} {
  return { cniVersion, supportedVersions: SUPPORTED_VERSIONS };
}

/** CHECK and GC/STATUS exist only from certain versions on. */
export function commandSupported(command: CniCommand, cniVersion: string): boolean {
  if (command === 'CHECK') return !['0.3.0', '0.3.1'].includes(cniVersion);
  if (command === 'GC' || command === 'STATUS') return cniVersion === '1.1.0';
  return true;
}

/**
 * What every plugin does before looking at its own config: VERSION is answered here; a verb the
 * request's cniVersion does not define is refused. Returns VERSION's answer, else undefined.
 */
export function versionGate(req: CniRequest): ReturnType<typeof versionResult> | undefined {
  if (req.command === 'VERSION') return versionResult(req.config.cniVersion);
  if (!commandSupported(req.command, req.config.cniVersion)) {
    throw new CniFailure(
      CniErrorCodes.INCOMPATIBLE_VERSION,
      `${req.command} is not defined for cniVersion ${req.config.cniVersion}`,
    );
  }
  return undefined;
}

/** A container's interface, as CNI names an attachment. */
export interface CniAttachment {
  containerId: string;
  ifname: string;
}

/**
 * GC's `cni.dev/valid-attachments`: the attachments the runtime still has. Required and checked
 * strictly: a GC whose list is missing or malformed must fail, never be read as "nothing is
 * valid" (that would detach every container of the network on the host).
 */
export function validAttachments(config: CniNetworkConfig): CniAttachment[] {
  const raw = config['cni.dev/valid-attachments'];
  if (!Array.isArray(raw)) {
    throw new CniFailure(
      CniErrorCodes.INVALID_NETWORK_CONFIG,
      raw === undefined
        ? 'GC needs cni.dev/valid-attachments (the attachments to keep); nothing was collected'
        : 'cni.dev/valid-attachments must be a list',
    );
  }
  return raw.map((entry: unknown, i) => {
    const e = (entry ?? {}) as { containerID?: unknown; ifname?: unknown };
    if (typeof e.containerID !== 'string' || !CONTAINER_ID_RE.test(e.containerID)) {
      throw new CniFailure(
        CniErrorCodes.INVALID_NETWORK_CONFIG,
        `cni.dev/valid-attachments[${i}].containerID is invalid`,
      );
    }
    if (typeof e.ifname !== 'string' || !IFNAME_RE.test(e.ifname)) {
      throw new CniFailure(CniErrorCodes.INVALID_NETWORK_CONFIG, `cni.dev/valid-attachments[${i}].ifname is invalid`);
    }
    return { containerId: e.containerID, ifname: e.ifname };
  });
}

/** What a plugin prints and its exit status. */
export interface CniReply {
  exitCode: number;
  stdout: string;
}

/**
 * One CNI invocation from environment and stdin to the reply: parse, version gate, `dispatch`,
 * and every failure rendered as the spec's error object in the request's own cniVersion.
 */
export async function serveCniCall(
  env: Record<string, string | undefined>,
  stdin: string,
  dispatch: (req: CniRequest) => Promise<unknown>,
): Promise<CniReply & { request?: CniRequest; error?: CniError }> {
  let request: CniRequest | undefined;
  try {
    request = parseCniRequest(env, stdin);
    const out = versionGate(request) ?? (await dispatch(request));
    return { exitCode: 0, stdout: out === undefined ? '' : JSON.stringify(out) + '\n', request };
  } catch (err) {
    const error = toCniError(err, request?.config.cniVersion || requestedCniVersion(stdin));
    return { exitCode: 1, stdout: JSON.stringify(error) + '\n', error, ...(request && { request }) };
  }
}

const APP_TO_CNI: Partial<Record<ErrorCode, number>> = {
  [ErrorCodes.INVALID_INPUT]: CniErrorCodes.INVALID_NETWORK_CONFIG,
  [ErrorCodes.STORE_UNAVAILABLE]: CniErrorCodes.TRY_AGAIN_LATER,
  [ErrorCodes.CONFLICT]: CniErrorCodes.TRY_AGAIN_LATER,
  [ErrorCodes.COMMAND_TIMEOUT]: CniErrorCodes.TRY_AGAIN_LATER,
  [ErrorCodes.POOL_EXHAUSTED]: CniErrorCodes.POOL_EXHAUSTED,
  [ErrorCodes.ADDRESS_IN_USE]: CniErrorCodes.ADDRESS_IN_USE,
  [ErrorCodes.POOL_OVERLAP]: CniErrorCodes.POOL_OVERLAP,
  [ErrorCodes.NOT_FOUND]: CniErrorCodes.INVALID_NETWORK_CONFIG,
  [ErrorCodes.COMMAND_FAILED]: CniErrorCodes.IO_FAILURE,
  // An interface name (CNI_IFNAME) the container already uses.
  [ErrorCodes.ALREADY_EXISTS]: CniErrorCodes.INVALID_ENV,
};

export function toCniError(err: unknown, cniVersion: string): CniError {
  if (err instanceof CniFailure)
    return { cniVersion, code: err.code, msg: err.message, ...(err.details && { details: err.details }) };
  if (err instanceof AppError) {
    return { cniVersion, code: APP_TO_CNI[err.code] ?? CniErrorCodes.INTERNAL, msg: err.message, details: err.code };
  }
  return { cniVersion, code: CniErrorCodes.INTERNAL, msg: err instanceof Error ? err.message : String(err) };
}

const VERSION_MAX = 32;
const VERSION_CHAR_RE = /[0-9A-Za-z.+-]/;
const isJsonSpace = (c: string | undefined): boolean => c === ' ' || c === '\t' || c === '\n' || c === '\r';

/**
 * The `cniVersion` of a network configuration that may be malformed, cut short or too large to
 * parse, so that even an error about it answers in the caller's version. Only the top-level
 * object's key counts (a nested `prevResult` has its own); returns `fallback` when there is no
 * readable one (1-32 of 0-9 A-Z a-z . + -). The C plugin (netd/plugin/netd-cni.c,
 * find_cni_version) does the same scan.
 */
export function requestedCniVersion(config: string, fallback = '1.1.0'): string {
  let depth = 0;
  for (let i = 0; i < config.length; i++) {
    const c = config[i];
    if (c === '{' || c === '[') depth++;
    else if (c === '}' || c === ']') depth--;
    else if (c === '"') {
      const end = stringEnd(config, i);
      if (end < 0) return fallback;
      const isKey = depth === 1 && config.slice(i + 1, end) === 'cniVersion';
      i = end;
      if (!isKey) continue;
      let p = i + 1;
      while (isJsonSpace(config[p])) p++;
      if (config[p] !== ':') continue;
      p++;
      while (isJsonSpace(config[p])) p++;
      if (config[p] !== '"') continue;
      const from = ++p;
      while (p < config.length && p - from <= VERSION_MAX && VERSION_CHAR_RE.test(config[p]!)) p++;
      if (config[p] !== '"' || p === from || p - from > VERSION_MAX) return fallback;
      return config.slice(from, p);
    }
  }
  return fallback;
}

/** The index of the quote closing the JSON string that opens at `start`, or -1 if it is cut short. */
function stringEnd(text: string, start: number): number {
  for (let i = start + 1; i < text.length; i++) {
    if (text[i] === '\\') i++;
    else if (text[i] === '"') return i;
  }
  return -1;
}
