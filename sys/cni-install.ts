import { chmodSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { invalidInput } from '../core/errors.js';

/**
 * Installs a CNI plugin written in JavaScript into a CNI bin directory: runtimes exec a file named
 * after the plugin `type`, so the file is a two-line wrapper that execs node on our script. The
 * wrapper is written to a temporary name and renamed, so a runtime never sees half a file.
 */
export function installCniPlugin(opts: { binDir: string; type: string; script: string; node?: string }): string {
  if (!/^[a-z0-9][a-z0-9_-]{0,62}$/.test(opts.type))
    throw invalidInput(`plugin type "${opts.type}" is not a valid file name`);
  mkdirSync(opts.binDir, { recursive: true });
  const target = join(opts.binDir, opts.type);
  const tmp = `${target}.tmp-${process.pid}`;
  const node = opts.node ?? process.execPath;
  writeFileSync(tmp, `#!/bin/sh\nexec ${shellQuote(node)} ${shellQuote(resolve(opts.script))} "$@"\n`);
  chmodSync(tmp, 0o755);
  renameSync(tmp, target);
  return target;
}

function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}
