import { request } from 'node:http';
import { AppError, ErrorCodes, type ErrorCode } from '../../core/errors.js';

/**
 * A small client of netd's API, over a Unix socket (`unix:///path`) or TCP (`http://host:port`),
 * for the CLI, tests and the demo. Errors come back as AppError with the API's stable code.
 */
export class NetdApiClient {
  constructor(
    private readonly endpoint: string,
    private readonly token?: string,
  ) {}

  withToken(token: string): NetdApiClient {
    return new NetdApiClient(this.endpoint, token);
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    return this.request<T>(method, path, body, true);
  }

  /** A GET whose answer is text (e.g. /metrics). */
  text(path: string): Promise<string> {
    return this.request<string>('GET', path, undefined, false);
  }

  private async request<T>(method: string, path: string, body: unknown, json: boolean): Promise<T> {
    const target = this.endpoint.startsWith('unix://')
      ? { socketPath: this.endpoint.slice('unix://'.length) }
      : (() => {
          const u = new URL(this.endpoint);
          return { host: u.hostname, port: Number(u.port) };
        })();
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          ...target,
          method,
          path,
          headers: {
            ...(this.token && { authorization: `Bearer ${this.token}` }),
            ...(payload !== undefined && {
              'content-type': 'application/json',
              'content-length': Buffer.byteLength(payload),
            }),
          },
          timeout: 10_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const failed = (res.statusCode ?? 500) >= 400;
            if (!json && !failed) return resolve(text as T);
            const parsed = text ? (JSON.parse(text) as unknown) : undefined;
            if (failed) {
              const e = (parsed ?? {}) as { code?: ErrorCode; message?: string };
              reject(
                new AppError(
                  e.code ?? ErrorCodes.INTERNAL,
                  `${method} ${path}: ${res.statusCode} ${e.message ?? text}`,
                  { status: res.statusCode },
                ),
              );
            } else resolve(parsed as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error('netd API timed out')));
      req.on('error', (err) =>
        reject(new AppError(ErrorCodes.STORE_UNAVAILABLE, `netd API unreachable: ${err.message}`, {}, { cause: err })),
      );
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }
}
