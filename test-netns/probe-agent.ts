/**
 * A tiny traffic endpoint run inside a namespace by the probe helpers (node, no dependencies).
 *
 *   serve tcp|udp ADDRESS PORT READY_FILE   echo server; writes READY_FILE once listening
 *   connect tcp|udp ADDRESS PORT TIMEOUT_MS  sends a nonce, exits 0 if it comes back, 3 if not
 */
import { createServer, connect } from 'node:net';
import { createSocket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

const NOT_DELIVERED = 3;
const [mode, proto, address, portText, extra] = process.argv.slice(2);
const port = Number(portText);
const family = address?.includes(':') ? 'udp6' : 'udp4';

function serve(): void {
  const ready = (): void => writeFileSync(extra!, String(process.pid));
  if (proto === 'tcp') {
    createServer((sock) => {
      sock.on('error', () => undefined);
      sock.pipe(sock);
    }).listen(port, address, ready);
  } else {
    const sock = createSocket(family);
    sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address));
    sock.bind(port, address, ready);
  }
}

function probe(): void {
  const timeoutMs = Number(extra ?? 1000);
  const nonce = randomBytes(8).toString('hex');
  const done = (ok: boolean): never => process.exit(ok ? 0 : NOT_DELIVERED);
  setTimeout(() => done(false), timeoutMs).unref();
  if (proto === 'tcp') {
    const sock = connect({ host: address!, port }, () => sock.write(nonce));
    let got = '';
    sock.on('data', (d) => {
      got += d.toString();
      if (got.includes(nonce)) done(true);
    });
    sock.on('error', () => done(false));
  } else {
    const sock = createSocket(family);
    sock.on('message', (msg) => msg.toString() === nonce && done(true));
    sock.on('error', () => done(false));
    // UDP may be lost without an error: resend until the deadline.
    const send = (): void => sock.send(nonce, port, address);
    send();
    setInterval(send, 100).unref();
  }
}

if ((proto !== 'tcp' && proto !== 'udp') || !address || !Number.isInteger(port)) {
  process.stderr.write('usage: probe-agent serve|connect tcp|udp ADDRESS PORT READY_FILE|TIMEOUT_MS\n');
  process.exit(2);
}
if (mode === 'serve') serve();
else if (mode === 'connect') probe();
else process.exit(2);
