import { AppError, ErrorCodes } from '../core/errors.js';

export function storeUnavailable(message: string, cause?: unknown): AppError {
  return new AppError(ErrorCodes.STORE_UNAVAILABLE, `state store unavailable: ${message}`, {}, { cause });
}

/** History before `compactRevision` is gone: a watch from `fromRevision` is impossible, re-list. */
export function storeCompacted(fromRevision: bigint, compactRevision: bigint, cause?: unknown): AppError {
  return new AppError(
    ErrorCodes.STORE_COMPACTED,
    `revision ${fromRevision} has been compacted (compact revision ${compactRevision})`,
    { fromRevision: String(fromRevision), compactRevision: String(compactRevision) },
    { cause },
  );
}
