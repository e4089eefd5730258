/**
 * One error catalogue for the whole code base. Every error that crosses a component boundary is an
 * AppError with a stable `code`: callers branch on the code, people read the message, and HTTP/CNI
 * edges map codes to their own wire formats (see docs/api.md).
 */

export const ErrorCodes = {
  /** Input failed validation at an edge (CLI flags, HTTP body, CNI stdin, config file). */
  INVALID_INPUT: 'E_INVALID_INPUT',
  /** A spawned command exited non-zero, was killed, or could not be started. */
  COMMAND_FAILED: 'E_COMMAND_FAILED',
  /** A spawned command ran past its timeout and was killed. */
  COMMAND_TIMEOUT: 'E_COMMAND_TIMEOUT',
  /** A required tool (binary) or kernel feature is absent on this machine. */
  UNSUPPORTED: 'E_UNSUPPORTED',
  /** The caller did not prove who it is (no, or an unknown, bearer token). */
  UNAUTHORIZED: 'E_UNAUTHORIZED',
  /** The caller is known but may not do this (e.g. a tenant token on an admin route). */
  FORBIDDEN: 'E_FORBIDDEN',
  /** The thing addressed does not exist. */
  NOT_FOUND: 'E_NOT_FOUND',
  /** The thing to create exists already. */
  ALREADY_EXISTS: 'E_ALREADY_EXISTS',
  /** The state store (etcd) cannot be reached; retry later. */
  STORE_UNAVAILABLE: 'E_STORE_UNAVAILABLE',
  /**
   * The state store refused this client: its TLS certificate, its user/password, or the user's
   * permission on the key. A configuration problem: retrying will not help.
   */
  STORE_ACCESS_DENIED: 'E_STORE_ACCESS_DENIED',
  /** A watch asked for history the store has compacted away; the consumer must re-list. */
  STORE_COMPACTED: 'E_STORE_COMPACTED',
  /** A compare-and-swap lost a race. */
  CONFLICT: 'E_CONFLICT',
  /** An operation was aborted by its caller (AbortSignal). */
  ABORTED: 'E_ABORTED',
  /** A gluster CLI verb failed (opRet != 0). */
  GLUSTER_FAILED: 'E_GLUSTER_FAILED',
  /** The gluster CLI reported a concurrent transaction; retryable. */
  GLUSTER_BUSY: 'E_GLUSTER_BUSY',
  /** An address pool has no free address left (for this request's constraints). */
  POOL_EXHAUSTED: 'E_POOL_EXHAUSTED',
  /** A numbered range has no free number left (VLAN ids of a physical network). */
  RANGE_EXHAUSTED: 'E_RANGE_EXHAUSTED',
  /** A routed pool would overlap another routed pool. */
  POOL_OVERLAP: 'E_POOL_OVERLAP',
  /** A tenant asked for more than the operator's cap allows (a rate above its plan). */
  OVER_CAP: 'E_OVER_CAP',
  /** A requested static address is taken by another owner. */
  ADDRESS_IN_USE: 'E_ADDRESS_IN_USE',
  /** A bug: an invariant did not hold. */
  INTERNAL: 'E_INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class AppError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(code: ErrorCode, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AppError';
    this.code = code;
    this.details = details;
  }

  toJSON(): { code: ErrorCode; message: string; details: Readonly<Record<string, unknown>> } {
    return { code: this.code, message: this.message, details: this.details };
  }
}

export function isAppError(err: unknown, code?: ErrorCode): err is AppError {
  return err instanceof AppError && (code === undefined || err.code === code);
}

export function invalidInput(message: string, details: Record<string, unknown> = {}): AppError {
  return new AppError(ErrorCodes.INVALID_INPUT, message, details);
}

/** Renders any thrown value as a one-line message, for logs and CLI output. */
export function describeError(err: unknown): string {
  if (err instanceof AppError) return `${err.code}: ${err.message}`;
  if (err instanceof Error) return err.message;
  return String(err);
}
