import { readFileSync, statSync } from 'node:fs';
import { AppError, ErrorCodes, invalidInput } from '../core/errors.js';
import type { EtcdConnectionOptions } from './etcd.js';

/**
 * How a program learns where etcd is and who to be there, from its flags or its environment, checked
 * before anything connects: every mistake is E_INVALID_INPUT naming the flag or variable to fix.
 *
 * Files are read here (paths in, bytes out), so a missing or unreadable file fails at start-up, not
 * at the first call. A password comes only from a file or the environment, never from a flag value
 * (command lines are visible to every user in `ps`).
 *
 * Only types from ./etcd.js: loading the grpc client costs ~200 ms, which validation must not pay.
 */

/** One setting as a program got it; each field is a flag value or an environment value. */
export interface EtcdConnectionInput {
  /** Comma-separated URLs, or a list. */
  endpoints?: string | readonly string[];
  /** PEM file paths. */
  ca?: string;
  cert?: string;
  key?: string;
  user?: string;
  passwordFile?: string;
  /** Only from the environment. */
  password?: string;
}

/** Names to use in messages, per field: e.g. `--etcd-ca (or $NETD_ETCD_CA)` or `ipam.etcd.ca`. */
export type InputNames = Record<keyof EtcdConnectionInput, string>;

/** The environment variables a program reads, under a prefix such as NETD_ETCD_. */
export function etcdInputFromEnv(env: Record<string, string | undefined>, prefix = 'NETD_ETCD_'): EtcdConnectionInput {
  return {
    endpoints: env[`${prefix}ENDPOINTS`],
    ca: env[`${prefix}CA`],
    cert: env[`${prefix}CERT`],
    key: env[`${prefix}KEY`],
    user: env[`${prefix}USER`],
    passwordFile: env[`${prefix}PASSWORD_FILE`],
    password: env[`${prefix}PASSWORD`],
  };
}

const FIELDS = ['endpoints', 'ca', 'cert', 'key', 'user', 'passwordFile', 'password'] as const;

/** Flag values first, then the environment, field by field; empty values count as not given. */
export function mergeEtcdInput(flags: EtcdConnectionInput, env: EtcdConnectionInput): EtcdConnectionInput {
  const given = (v: EtcdConnectionInput[keyof EtcdConnectionInput]) =>
    v === undefined || v === '' || (Array.isArray(v) && v.length === 0) ? undefined : v;
  const out: Record<string, unknown> = {};
  for (const k of FIELDS) {
    const v = given(flags[k]) ?? given(env[k]);
    if (v !== undefined) out[k] = v;
  }
  return out as EtcdConnectionInput;
}

/** The flags of a daemon (netd), with $NETD_ETCD_* as fallbacks. */
export function flagNames(flagPrefix = '--etcd', envPrefix = 'NETD_ETCD_'): InputNames {
  const both = (flag: string, env: string) => `${flag} (or $${envPrefix}${env})`;
  return {
    endpoints: both(flagPrefix, 'ENDPOINTS'),
    ca: both(`${flagPrefix}-ca`, 'CA'),
    cert: both(`${flagPrefix}-cert`, 'CERT'),
    key: both(`${flagPrefix}-key`, 'KEY'),
    user: both(`${flagPrefix}-user`, 'USER'),
    passwordFile: both(`${flagPrefix}-password-file`, 'PASSWORD_FILE'),
    password: `$${envPrefix}PASSWORD`,
  };
}

/** A password on the command line is refused outright, with the way to do it instead. */
export function refusePasswordFlag(argv: readonly string[], flag = '--etcd-password', envPrefix = 'NETD_ETCD_'): void {
  if (argv.some((a) => a === flag || a.startsWith(`${flag}=`))) {
    throw invalidInput(
      `${flag} is not accepted: a command line is visible to every user (ps); ` +
        `put the password in a file for ${flag}-file, or in $${envPrefix}PASSWORD`,
    );
  }
}

const URL_RE = /^(https?):\/\/[^/\s]+\/?$|^(unixs?):\/\/(\/[^\s]*)$/;

/**
 * Validated connection options. Rules: at least one endpoint; http(s):// or unix:///path URLs
 * (unixs:///path is TLS on a socket: the same as unix:// with a CA); one scheme family (all
 * plain or all TLS); TLS needs the CA that signed etcd's certificate; a client certificate needs
 * its key (and TLS); a user needs a password (file or env) and a password a user.
 */
export function etcdConnection(input: EtcdConnectionInput, names: InputNames = flagNames()): EtcdConnectionOptions {
  const raw = typeof input.endpoints === 'string' ? input.endpoints.split(',') : [...(input.endpoints ?? [])];
  const listed = raw.map((e) => (typeof e === 'string' ? e.trim() : e)).filter((e) => e !== '');
  if (listed.length === 0) throw invalidInput(`${names.endpoints} is required: etcd's client URLs`);
  let tlsUrls = 0;
  const endpoints = listed.map((e) => {
    const m = typeof e === 'string' ? URL_RE.exec(e) : null;
    if (!m)
      throw invalidInput(
        `${names.endpoints}: "${String(e)}" is not an etcd URL (http://HOST:PORT, https://HOST:PORT or unix:///PATH)`,
      );
    if (m[1] === 'https' || m[2] === 'unixs') tlsUrls++;
    // grpc knows unix:, not unixs: (TLS on a socket is decided by the credentials).
    return m[2] === 'unixs' ? `unix://${m[3]}` : e;
  });
  const httpUrls = listed.filter((e) => e.startsWith('http://')).length;
  if (httpUrls > 0 && (tlsUrls > 0 || input.ca))
    throw invalidInput(
      `${names.endpoints}: http:// endpoints are plain text; with TLS (${names.ca}) every endpoint must be https:// (or unix://)`,
    );
  if (tlsUrls > 0 && !input.ca)
    throw invalidInput(`${names.endpoints} uses TLS: ${names.ca} must name the CA that signed etcd's certificates`);
  if ((input.cert === undefined) !== (input.key === undefined))
    throw invalidInput(
      input.cert ? `${names.cert} is given: ${names.key} must name its key` : `${names.key} needs ${names.cert}`,
    );
  if (input.cert && !input.ca) throw invalidInput(`a client certificate (${names.cert}) needs TLS: give ${names.ca}`);
  const tls = input.ca
    ? {
        ca: pemFile(input.ca, names.ca, 'CERTIFICATE'),
        ...(input.cert && { cert: pemFile(input.cert, names.cert, 'CERTIFICATE') }),
        ...(input.key && { key: pemFile(input.key, names.key, 'PRIVATE KEY', true) }),
      }
    : undefined;
  const auth = credentials(input, names);
  return { endpoints, ...(tls && { tls }), ...(auth && { auth }) };
}

function credentials(
  input: EtcdConnectionInput,
  names: InputNames,
): { username: string; password: string } | undefined {
  if (input.passwordFile !== undefined && input.password !== undefined)
    throw invalidInput(`give the etcd password once: ${names.passwordFile} or ${names.password}, not both`);
  let password = input.password;
  if (input.passwordFile !== undefined) {
    password = readText(input.passwordFile, names.passwordFile).replace(/\r?\n$/, '');
    if (password === '') throw invalidInput(`${names.passwordFile}: ${input.passwordFile} is empty`);
  }
  if (input.user === undefined && password === undefined) return undefined;
  if (input.user === undefined) throw invalidInput(`an etcd password is given: ${names.user} must name the user`);
  if (!/^[A-Za-z0-9._@-]{1,64}$/.test(input.user))
    throw invalidInput(`${names.user}: "${input.user}" is not a plain user name (letters, digits, . _ @ -)`);
  if (password === undefined)
    throw invalidInput(
      `${names.user} is given: the password comes from ${names.passwordFile} or ${names.password} ` +
        '(never a flag value). For a user named by a client certificate, give neither.',
    );
  return { username: input.user, password };
}

function readText(path: string, name: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new AppError(
      ErrorCodes.INVALID_INPUT,
      `${name}: cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { file: path },
      { cause: err },
    );
  }
}

/** A PEM file's bytes; its kind checked, so a swapped cert and key is caught here. */
function pemFile(path: string, name: string, label: 'CERTIFICATE' | 'PRIVATE KEY', secret = false): Buffer {
  const text = readText(path, name);
  if (!new RegExp(`-----BEGIN [A-Z ]*${label}-----`).test(text))
    throw invalidInput(`${name}: ${path} holds no PEM ${label.toLowerCase()}`, { file: path });
  const mode = statSync(path).mode & 0o777;
  if (secret && (mode & 0o004) !== 0)
    throw invalidInput(`${name}: ${path} is readable by every user (mode ${mode.toString(8)}); chmod 600 it`, {
      file: path,
    });
  return Buffer.from(text);
}
