import { chmodSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AppError, ErrorCodes } from '../core/errors.js';
import { SOCKET_DIR } from './cni/server.js';

/**
 * The `netd` CNI plugin is a small static C program (netd/plugin/netd-cni.c, built next to this
 * module by `npm run build`), not Node or sh: a runtime starts it for every ADD and DEL, and Node's
 * start-up (~120 ms) or sh + socat (~8 ms) would dwarf the daemon's work (ADR 0008). It forwards
 * the CNI_* environment and the config to the daemon of the host it runs on and prints the reply.
 *
 * The socket directory is written into the binary at install time: it carries a marker followed by
 * a fixed-size, zero-padded field.
 */

export const PLUGIN_BINARY = join(dirname(fileURLToPath(import.meta.url)), 'netd-cni');
const MARKER = Buffer.from('@@NETD_SOCKET_DIR@@');
const FIELD_SIZE = 256;

/** The plugin binary with `socketDir` patched in (pure: bytes in, bytes out). */
export function patchSocketDir(binary: Buffer, socketDir: string): Buffer {
  const at = binary.indexOf(MARKER);
  if (at < 0 || binary.indexOf(MARKER, at + 1) >= 0)
    throw new AppError(ErrorCodes.INTERNAL, 'the netd plugin binary has no single socket-dir marker');
  const dir = Buffer.from(socketDir);
  const room = FIELD_SIZE - MARKER.length - 1;
  if (!socketDir.startsWith('/') || dir.length > room || dir.includes(0)) {
    throw new AppError(
      ErrorCodes.INVALID_INPUT,
      `the CNI socket directory must be an absolute path of at most ${room} bytes`,
      { socketDir },
    );
  }
  const out = Buffer.from(binary);
  out.fill(0, at + MARKER.length, at + FIELD_SIZE);
  dir.copy(out, at + MARKER.length);
  return out;
}

/** Writes the plugin into the CNI bin directory atomically (temp file + rename). */
export function installNetdPlugin(binDir: string, socketDir = SOCKET_DIR, source = PLUGIN_BINARY): string {
  let binary: Buffer;
  try {
    binary = readFileSync(source);
  } catch (err) {
    throw new AppError(
      ErrorCodes.UNSUPPORTED,
      `the netd plugin binary ${source} is missing: run npm run build (needs a C compiler)`,
      {},
      { cause: err },
    );
  }
  mkdirSync(binDir, { recursive: true });
  const target = join(binDir, 'netd');
  const tmp = `${target}.tmp-${process.pid}`;
  writeFileSync(tmp, patchSocketDir(binary, socketDir));
  chmodSync(tmp, 0o755);
  renameSync(tmp, target);
  return target;
}
