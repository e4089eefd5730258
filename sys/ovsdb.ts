import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { AppError, ErrorCodes } from '../core/errors.js';
import { checkTag, ovsName as checkName } from './ovs.js';
import type { Logger } from './log.js';

/**
 * Open vSwitch's database spoken directly (OVSDB JSON-RPC, RFC 7047) over its Unix socket: one
 * connection kept open, a transaction per change, about a millisecond each. `ovs-vsctl` costs a
 * process and a full database fetch per call (~12 ms here), which is most of a vlan ADD; it stays
 * for the one-time setup (sys/ovs.ts). Only the Port/Interface/Bridge operations netd needs.
 */

const DB = 'Open_vSwitch';

type Op = Record<string, unknown>;

/** An OVSDB value that may be an empty set (`["set", []]`) or a single atom. */
function atom(v: unknown): unknown {
  return Array.isArray(v) && v[0] === 'set' ? (v[1] as unknown[])[0] : v;
}

export class OvsdbClient {
  private socket: Socket | undefined;
  private connecting: Promise<Socket> | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();

  constructor(
    private readonly path: string,
    private readonly opts: { timeoutMs?: number; logger?: Logger } = {},
  ) {}

  /** Runs one transaction; an operation's error (or a commit error) rejects with E_COMMAND_FAILED. */
  async transact(ops: readonly Op[]): Promise<Array<Record<string, unknown>>> {
    this.opts.logger?.debug({ ovsdb: ops }, 'ovsdb transact');
    const result = (await this.call('transact', [DB, ...ops])) as Array<Record<string, unknown> | null>;
    const failed = result.find((r) => r && typeof r.error === 'string');
    if (failed) {
      throw new AppError(ErrorCodes.COMMAND_FAILED, `ovsdb: ${String(failed.error)}: ${String(failed.details ?? '')}`, {
        ops,
      });
    }
    return result.map((r) => r ?? {});
  }

  /** The bridge's ports by name, with their VLAN tags (undefined: a trunk). */
  async bridgePorts(bridge: string): Promise<Map<string, number | undefined>> {
    const [bridges, ports] = await this.transact([
      { op: 'select', table: 'Bridge', where: [['name', '==', checkName('bridge', bridge)]], columns: ['ports'] },
      { op: 'select', table: 'Port', where: [], columns: ['_uuid', 'name', 'tag'] },
    ]);
    const row = (bridges!.rows as Array<{ ports: unknown }>)[0];
    if (!row) throw new AppError(ErrorCodes.NOT_FOUND, `no OVS bridge ${bridge}`);
    // ["uuid", u] for one port, ["set", [["uuid", u], ...]] for several or none.
    const refs = row.ports as [string, unknown];
    const uuids = new Set(
      (refs[0] === 'set' ? (refs[1] as Array<[string, string]>) : [refs as [string, string]]).map((r) => r[1]),
    );
    const out = new Map<string, number | undefined>();
    for (const p of ports!.rows as Array<{ _uuid: [string, string]; name: string; tag: unknown }>) {
      if (!uuids.has(p._uuid[1])) continue;
      const tag = atom(p.tag);
      out.set(p.name, typeof tag === 'number' ? tag : undefined);
    }
    return out;
  }

  /**
   * Makes `port` an access port of `tag` on `bridge` (added, or its tag set when it is there), and
   * with `wait` resolves once ovs-vswitchd has applied it (its cur_cfg reached the new next_cfg).
   */
  async setAccessPort(bridge: string, port: string, tag: number, opts: { wait: boolean }): Promise<void> {
    const name = checkName('port', port);
    const where = [['name', '==', name]];
    const [existing] = await this.transact([{ op: 'select', table: 'Port', where, columns: ['_uuid'] }]);
    const ops: Op[] = (existing!.rows as unknown[]).length
      ? [{ op: 'update', table: 'Port', where, row: { tag: checkTag(tag) } }]
      : [
          { op: 'insert', table: 'Interface', row: { name }, 'uuid-name': 'iface' },
          {
            op: 'insert',
            table: 'Port',
            row: { name, interfaces: ['named-uuid', 'iface'], tag: checkTag(tag) },
            'uuid-name': 'port',
          },
          {
            op: 'mutate',
            table: 'Bridge',
            where: [['name', '==', checkName('bridge', bridge)]],
            mutations: [['ports', 'insert', ['named-uuid', 'port']]],
          },
        ];
    await this.commit(ops, opts.wait);
  }

  /** Sets the tags of ports and takes others off the bridge, in one transaction. */
  async change(
    bridge: string,
    changes: { tags?: ReadonlyMap<string, number>; remove?: readonly string[] },
  ): Promise<void> {
    const ops: Op[] = [];
    for (const [port, tag] of changes.tags ?? [])
      ops.push({
        op: 'update',
        table: 'Port',
        where: [['name', '==', checkName('port', port)]],
        row: { tag: checkTag(tag) },
      });
    if (changes.remove?.length) {
      const names = new Set(changes.remove.map((p) => checkName('port', p)));
      const [ports] = await this.transact([{ op: 'select', table: 'Port', where: [], columns: ['_uuid', 'name'] }]);
      const uuids = (ports!.rows as Array<{ _uuid: [string, string]; name: string }>)
        .filter((p) => names.has(p.name))
        .map((p) => p._uuid);
      // Ports (and their interfaces) no bridge refers to any more are garbage-collected by OVSDB.
      if (uuids.length)
        ops.push({
          op: 'mutate',
          table: 'Bridge',
          where: [['name', '==', checkName('bridge', bridge)]],
          mutations: [['ports', 'delete', ['set', uuids]]],
        });
    }
    if (ops.length) await this.commit(ops, false);
  }

  close(): void {
    this.socket?.destroy();
    this.socket = undefined;
  }

  /** Commits `ops` with a next_cfg bump; with `wait`, until ovs-vswitchd reports it applied. */
  private async commit(ops: readonly Op[], wait: boolean): Promise<void> {
    const results = await this.transact([
      ...ops,
      { op: 'mutate', table: 'Open_vSwitch', where: [], mutations: [['next_cfg', '+=', 1]] },
      { op: 'select', table: 'Open_vSwitch', where: [], columns: ['next_cfg'] },
    ]);
    if (!wait) return;
    const target = Number((results.at(-1)!.rows as Array<{ next_cfg: number }>)[0]!.next_cfg);
    const deadline = Date.now() + (this.opts.timeoutMs ?? 10_000);
    for (;;) {
      const [cfg] = await this.transact([{ op: 'select', table: 'Open_vSwitch', where: [], columns: ['cur_cfg'] }]);
      if (Number((cfg!.rows as Array<{ cur_cfg: number }>)[0]!.cur_cfg) >= target) return;
      if (Date.now() > deadline)
        throw new AppError(ErrorCodes.COMMAND_TIMEOUT, 'ovs-vswitchd did not apply the change (is it running?)');
      await sleep(1);
    }
  }

  private async call(method: string, params: unknown[]): Promise<unknown> {
    const socket = await this.connection();
    const id = this.nextId++;
    const timeoutMs = this.opts.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new AppError(ErrorCodes.COMMAND_TIMEOUT, `ovsdb ${method} took over ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      socket.write(JSON.stringify({ method, params, id }));
    });
  }

  private connection(): Promise<Socket> {
    if (this.socket) return Promise.resolve(this.socket);
    this.connecting ??= new Promise<Socket>((resolve, reject) => {
      const s = connect(this.path);
      s.setEncoding('utf8');
      s.once('connect', () => {
        // An idle connection keeps no process alive (a call in flight does: its timer).
        s.unref();
        this.socket = s;
        this.connecting = undefined;
        resolve(s);
      });
      s.on('data', (chunk: string) => this.receive(chunk));
      s.on('error', (err) => {
        this.connecting = undefined;
        reject(new AppError(ErrorCodes.COMMAND_FAILED, `ovsdb ${this.path}: ${err.message}`));
        this.fail(err);
      });
      s.on('close', () => this.fail(new Error('connection closed')));
    });
    return this.connecting;
  }

  private fail(err: Error): void {
    this.socket = undefined;
    this.buffer = '';
    for (const p of this.pending.values()) p.reject(new AppError(ErrorCodes.COMMAND_FAILED, `ovsdb: ${err.message}`));
    this.pending.clear();
  }

  /** Messages are JSON objects back to back: split them where the braces balance outside strings. */
  private receive(chunk: string): void {
    this.buffer += chunk;
    let depth = 0;
    let inString = false;
    let escaped = false;
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (inString) {
        if (escaped) escaped = false;
        else if (c === '\\') escaped = true;
        else if (c === '"') inString = false;
      } else if (c === '"') inString = true;
      else if (c === '{') depth++;
      else if (c === '}' && --depth === 0) {
        this.dispatch(JSON.parse(this.buffer.slice(start, i + 1)) as Record<string, unknown>);
        start = i + 1;
      }
    }
    this.buffer = this.buffer.slice(start);
  }

  private dispatch(msg: Record<string, unknown>): void {
    // The server's keep-alive: answered in kind, or it closes the connection.
    if (msg.method === 'echo') {
      this.socket?.write(JSON.stringify({ id: msg.id, result: msg.params, error: null }));
      return;
    }
    const waiter = this.pending.get(msg.id as number);
    if (!waiter) return;
    this.pending.delete(msg.id as number);
    if (msg.error) waiter.reject(new AppError(ErrorCodes.COMMAND_FAILED, `ovsdb: ${JSON.stringify(msg.error)}`));
    else waiter.resolve(msg.result);
  }
}
