import { createServer, type Server } from 'node:net';
import { chmodSync, mkdirSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../../sys/log.js';
import { CniErrorCodes, requestedCniVersion, type CniReply } from '../../core/cni.js';

/**
 * The daemon's CNI endpoint: a root-only Unix socket named after the daemon's network namespace
 * (`/run/netd/net-<inode>.sock`). The plugin runs in the namespace of the host it wires, reads
 * that namespace's inode, and so always reaches the daemon of its own host — also when several
 * virtual hosts share one filesystem.
 *
 * Wire format (plain lines, so the plugin — a small C program, netd/plugin/netd-cni.c — needs no
 * JSON parser): the request is the CNI_* environment as KEY=VALUE lines, an empty line, then the
 * network config until EOF; the reply is the exit status on the first line, then what the plugin
 * prints. Errors answered here, before or instead of the handler, carry the request's cniVersion.
 */

export const SOCKET_DIR = '/run/netd';
const MAX_REQUEST = 1024 * 1024;

export function socketPathForNetns(inode: number | bigint, dir = SOCKET_DIR): string {
  return join(dir, `net-${inode}.sock`);
}

export function ownSocketPath(dir = SOCKET_DIR): string {
  return socketPathForNetns(statSync('/proc/self/ns/net').ino, dir);
}

export function parseRequest(raw: string): { env: Record<string, string>; stdin: string } {
  const split = raw.indexOf('\n\n');
  const head = split >= 0 ? raw.slice(0, split) : raw;
  const stdin = split >= 0 ? raw.slice(split + 2) : '';
  const env: Record<string, string> = {};
  for (const line of head.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0 && line.startsWith('CNI_')) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return { env, stdin };
}

export async function startCniServer(opts: {
  path: string;
  handle: (env: Record<string, string>, stdin: string) => Promise<CniReply>;
  logger: Logger;
}): Promise<Server> {
  const dir = join(opts.path, '..');
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  // Root only, also when the directory existed before (mkdir keeps an existing one's mode): the
  // socket accepts anyone who can reach it, and the socket's own chmod comes after listen().
  chmodSync(dir, 0o700);
  rmSync(opts.path, { force: true }); // a socket file left by a previous run of this daemon
  // Half-open: the plugin closes its side after the request and still waits for the reply.
  const server = createServer({ allowHalfOpen: true }, (sock) => {
    const chunks: Buffer[] = [];
    let size = 0;
    // A plugin that never finishes sending is dropped; once the request is in, the handler's own
    // deadlines bound it (the plugin gives up after 130 s: an idle timeout here would cut a slow
    // ADD's answer while the ADD went on).
    sock.setTimeout(60_000, () => sock.destroy());
    sock.on('error', () => undefined);
    sock.on('data', (c: Buffer) => {
      size += c.length;
      // Past the limit the rest is read and dropped, so the plugin still gets a proper answer.
      if (size <= MAX_REQUEST) chunks.push(c);
    });
    sock.on('end', () => {
      sock.setTimeout(0);
      // Past the limit, `chunks` holds the request's beginning: enough to read its cniVersion.
      const { env, stdin } = parseRequest(Buffer.concat(chunks).toString('utf8'));
      const fail = (code: number, msg: string): void => {
        sock.end(`1\n${JSON.stringify({ cniVersion: requestedCniVersion(stdin), code, msg })}\n`);
      };
      if (size > MAX_REQUEST) {
        fail(CniErrorCodes.DECODE_FAILURE, `request over ${MAX_REQUEST} bytes`);
        return;
      }
      void opts.handle(env, stdin).then(
        (reply) => sock.end(`${reply.exitCode}\n${reply.stdout}`),
        (err: unknown) => {
          opts.logger.error({ err: String(err) }, 'CNI handler crashed');
          fail(CniErrorCodes.INTERNAL, 'netd internal error');
        },
      );
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.path, () => resolve());
  });
  chmodSync(opts.path, 0o600);
  return server;
}
