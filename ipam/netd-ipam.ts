#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { isatty } from 'node:tty';
import { serveCniCall } from '../core/cni.js';
import { createLogger } from '../sys/log.js';
import { installCniPlugin } from '../sys/cni-install.js';
import { runIpamPlugin } from './cni-plugin.js';

/**
 * Entry point of the `netd-ipam` CNI IPAM plugin. Runtimes invoke it without arguments (CNI_*
 * environment, config on stdin). `netd-ipam install --cni-bin-dir DIR` installs it.
 */
async function main(argv: string[]): Promise<number> {
  if (argv[0] === 'install') {
    const i = argv.indexOf('--cni-bin-dir');
    const binDir = i >= 0 ? argv[i + 1] : '/opt/cni/bin';
    const target = installCniPlugin({ binDir: binDir!, type: 'netd-ipam', script: fileURLToPath(import.meta.url) });
    process.stdout.write(`installed ${target}\n`);
    return 0;
  }
  const env = process.env;
  // VERSION's config is optional: a person typing the command has no stdin to give.
  const stdin = isatty(0) ? '' : readFileSync(0, 'utf8');
  const reply = await serveCniCall(env, stdin, async (req) => {
    const logger = createLogger({ level: env.LOG_LEVEL ?? 'warn', destination: process.stderr });
    // Loaded only when needed: grpc takes ~200 ms to load, which VERSION and bad input should not pay.
    const { EtcdStore } = await import('../store/etcd.js');
    return runIpamPlugin(req, env, (etcd) => new EtcdStore({ ...etcd, callTimeoutMs: 5000, logger }));
  });
  process.stdout.write(reply.stdout);
  if (reply.error && env.LOG_LEVEL === 'debug') process.stderr.write(`netd-ipam: ${reply.error.msg}\n`);
  return reply.exitCode;
}

main(process.argv.slice(2)).then((code) => process.exit(code));
