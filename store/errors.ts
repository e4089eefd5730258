import { AppError, ErrorCodes } from '../core/errors.js';

export function storeUnavailable(message: string, cause?: unknown): AppError {
  return new AppError(ErrorCodes.STORE_UNAVAILABLE, `state store unavailable: ${message}`, {}, { cause });
}

export function storeCompacted(fromRevision: bigint, compactRevision: bigint): AppError {
  return new AppError(
    ErrorCodes.STORE_COMPACTED,
    `revision ${fromRevision} has been compacted (compact revision ${compactRevision})`,
    { fromRevision: String(fromRevision), compactRevision: String(compactRevision) },
  );
}
