import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

/**
 * A start line for worker processes (on other hosts' namespaces: a filesystem socket reaches
 * them all). Each worker connects when it is ready to work (clients connected, helpers started),
 * the coordinator releases them all at once, and takes the time each report arrives: so every
 * side's wall time runs from one common start to its last completion, measured by one clock.
 *
 * Lines: worker → "ready"; coordinator → "go"; worker → "done <json>".
 */

export interface Arrival<T> {
  /** performance.now() in the coordinator when the report arrived. */
  at: number;
  report: T;
}

export class StartBarrier<T = unknown> {
  private readonly parties: Socket[] = [];
  private readonly arrivals: Array<Arrival<T>> = [];
  private readonly waiters: Array<() => void> = [];
  private failure: Error | undefined;
  private started = false;

  private constructor(
    private readonly server: Server,
    readonly expected: number,
  ) {}

  static async open<T>(path: string, expected: number): Promise<StartBarrier<T>> {
    const server = createServer();
    const barrier = new StartBarrier<T>(server, expected);
    server.on('connection', (sock) => barrier.accept(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    return barrier;
  }

  private accept(sock: Socket): void {
    let buffered = '';
    let ready = false;
    let done = false;
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line === 'ready' && !ready) {
          ready = true;
          this.parties.push(sock);
        } else if (line.startsWith('done ') && !done) {
          done = true;
          this.arrivals.push({ at: performance.now(), report: JSON.parse(line.slice(5)) as T });
        } else {
          this.fail(new Error(`barrier: unexpected line "${line.slice(0, 80)}"`));
        }
        this.wake();
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      if (!done) this.fail(new Error(ready ? 'a worker left before it reported' : 'a worker left before it was ready'));
    });
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  private async until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      if (this.failure) throw this.failure;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`barrier: ${what} after ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    if (this.failure) throw this.failure;
  }

  /** Resolves once every worker said it is ready. */
  ready(timeoutMs = 60_000): Promise<void> {
    return this.until(() => this.parties.length >= this.expected, timeoutMs, 'not every worker was ready');
  }

  /** Releases every worker at once; returns the common start time (performance.now()). */
  go(): number {
    if (this.started) throw new Error('barrier: released twice');
    this.started = true;
    const t0 = performance.now();
    for (const p of this.parties) p.write('go\n');
    return t0;
  }

  /** Every worker's report with the time it arrived. */
  async finished(timeoutMs = 600_000): Promise<Array<Arrival<T>>> {
    await this.until(() => this.arrivals.length >= this.expected, timeoutMs, 'not every worker reported');
    return [...this.arrivals];
  }

  async close(): Promise<void> {
    for (const p of this.parties) p.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

/** The worker's side: connects, says ready, resolves on "go"; `report` sends the result. */
export async function joinBarrier(path: string): Promise<{ report(result: unknown): Promise<void> }> {
  const sock = createConnection(path);
  sock.setEncoding('utf8');
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.once('connect', () => resolve());
  });
  const go = new Promise<void>((resolve, reject) => {
    let buffered = '';
    sock.on('data', (chunk: string) => {
      buffered += chunk;
      if (buffered.includes('go\n')) resolve();
    });
    sock.once('close', () => reject(new Error('the coordinator went away before "go"')));
  });
  sock.write('ready\n');
  await go;
  return {
    report: (result: unknown) =>
      new Promise<void>((resolve) => {
        sock.end(`done ${JSON.stringify(result)}\n`, () => resolve());
      }),
  };
}
