import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync } from 'node:fs';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { Logger } from './log.js';

/**
 * The only place in the code base that starts processes. Everything that talks to the kernel or to a
 * CLI (ip, tc, bridge, nft, ovs-vsctl, gluster) goes through a CommandRunner, so tests can swap in
 * FakeRunner and check the exact argv/stdin that would have been sent.
 */

/** Where a command runs: a named netns (/run/netns/NAME) or a netns file path (as CNI passes it). */
export type NetnsTarget = { name: string } | { path: string };

export interface Command {
  /** argv[0] is the program; never a shell string. */
  readonly argv: readonly string[];
  readonly stdin?: string;
  readonly netns?: NetnsTarget;
  /** Extra environment (e.g. CNI_*), on top of ours and LC_ALL=C. */
  readonly env?: Readonly<Record<string, string>>;
  /** Kill the process (SIGKILL) after this long. Default 30 s. */
  readonly timeoutMs?: number;
}

export interface CommandResult {
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  run(cmd: Command, signal?: AbortSignal): Promise<CommandResult>;
  /**
   * Set by runners that model the kernel (FakeKernel): SysctlClient then asks them for sysctls of
   * the caller's own namespace too (`sysctl -w`), instead of writing /proc/sys itself.
   */
  readonly interceptsSysctl?: boolean;
}

/** How a failed command failed, so callers can make mutations idempotent. */
export type FailureKind = 'not-found' | 'exists' | 'busy' | 'unsupported' | 'other';

export class CommandError extends AppError {
  readonly argv: readonly string[];
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stderr: string;
  readonly stdout: string;
  readonly netns: string | undefined;
  readonly kind: FailureKind;

  constructor(init: {
    argv: readonly string[];
    exitCode: number | null;
    signal?: NodeJS.Signals | null;
    stderr: string;
    stdout?: string;
    netns?: NetnsTarget;
    timedOut?: boolean;
    cause?: unknown;
  }) {
    const where = init.netns ? ` in netns ${netnsLabel(init.netns)}` : '';
    const how = init.timedOut
      ? 'timed out'
      : init.exitCode === null
        ? `was killed by ${init.signal ?? 'a signal'}`
        : `exited ${init.exitCode}`;
    const detail = firstLines(init.stderr) || firstLines(init.stdout ?? '');
    super(
      init.timedOut ? ErrorCodes.COMMAND_TIMEOUT : ErrorCodes.COMMAND_FAILED,
      `${init.argv.join(' ')}${where} ${how}${detail ? `: ${detail}` : ''}`,
      { argv: init.argv, exitCode: init.exitCode, stderr: init.stderr, netns: init.netns && netnsLabel(init.netns) },
      { cause: init.cause },
    );
    this.name = 'CommandError';
    this.argv = init.argv;
    this.exitCode = init.exitCode;
    this.signal = init.signal ?? null;
    this.stderr = init.stderr;
    this.stdout = init.stdout ?? '';
    this.netns = init.netns && netnsLabel(init.netns);
    this.kind = classifyFailure(init.stderr);
  }
}

export function isCommandError(err: unknown, kind?: FailureKind): err is CommandError {
  return err instanceof CommandError && (kind === undefined || err.kind === kind);
}

const FAILURE_PATTERNS: ReadonlyArray<[FailureKind, RegExp]> = [
  // Order matters: "No such file or directory" from nft means a missing object, while
  // "Unknown device type" means a missing kernel feature.
  [
    'unsupported',
    /Unknown device type|not supported|Operation not supported|Unknown qdisc|Unknown filter|Unknown action|Could not find module|No such file or directory.*\/lib\/modules/i,
  ],
  ['exists', /File exists|already exists|Address already assigned|RTNETLINK answers: File exists/i],
  [
    'not-found',
    /Cannot find device|does not exist|No such device|No such file or directory|No such process|Cannot find|not found|Invalid handle|Object not found|Cannot delete qdisc with handle of zero|No such table|No such chain/i,
  ],
  [
    'busy',
    /Device or resource busy|Resource temporarily unavailable|Another transaction is in progress|locking failed/i,
  ],
];

/** Classifies a tool's stderr. Exported for wrappers whose tools report errors on stdout. */
export function classifyFailure(stderr: string): FailureKind {
  for (const [kind, pattern] of FAILURE_PATTERNS) if (pattern.test(stderr)) return kind;
  return 'other';
}

export function netnsLabel(target: NetnsTarget): string {
  return 'name' in target ? target.name : target.path;
}

function firstLines(text: string, max = 3): string {
  return text.trim().split('\n').slice(0, max).join(' | ');
}

/** Tools that take `-n NAME` themselves, which saves an nsenter exec. */
const NETNS_AWARE_TOOLS = new Set(['ip', 'tc', 'bridge']);

/** A netns path that `ip netns` made: ip/tc/bridge can take its name instead (one exec, not two). */
const NAMED_NETNS_PATH = /^\/(?:var\/)?run\/netns\/([A-Za-z0-9_][A-Za-z0-9_.-]{0,199})$/;

/**
 * Rewrites a command to run inside its network namespace. Exported so the fake runner and the real
 * one agree on the exact argv.
 */

export function resolveArgv(cmd: Command): string[] {
  const [program, ...rest] = cmd.argv;
  if (program === undefined) throw new AppError(ErrorCodes.INTERNAL, 'empty argv');
  if (!cmd.netns) return [program, ...rest];
  if ('name' in cmd.netns && NETNS_AWARE_TOOLS.has(program)) return [program, '-n', cmd.netns.name, ...rest];
  // A path under the named-netns directory is a name to ip/tc/bridge: one exec instead of two.
  const named = 'path' in cmd.netns ? NAMED_NETNS_PATH.exec(cmd.netns.path) : null;
  if (named && NETNS_AWARE_TOOLS.has(program)) return [program, '-n', named[1]!, ...rest];
  const path = 'name' in cmd.netns ? `/run/netns/${cmd.netns.name}` : cmd.netns.path;
  return ['nsenter', `--net=${path}`, '--', program, ...rest];
}

export interface ExecRunnerOptions {
  logger?: Logger;
  defaultTimeoutMs?: number;
  /** Cap on captured stdout/stderr; a runaway tool must not exhaust the daemon's memory. */
  maxOutputBytes?: number;
}

/** Runs commands for real, with LC_ALL=C so error texts are classifiable. */
export class ExecRunner implements CommandRunner {
  private readonly logger: Logger | undefined;
  private readonly defaultTimeoutMs: number;
  private readonly maxOutputBytes: number;

  constructor(opts: ExecRunnerOptions = {}) {
    this.logger = opts.logger;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 30_000;
    this.maxOutputBytes = opts.maxOutputBytes ?? 64 * 1024 * 1024;
  }

  run(cmd: Command, signal?: AbortSignal): Promise<CommandResult> {
    const argv = resolveArgv(cmd);
    const timeoutMs = cmd.timeoutMs ?? this.defaultTimeoutMs;
    this.logger?.debug({ argv, stdin: cmd.stdin, netns: cmd.netns && netnsLabel(cmd.netns) }, 'exec');
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new AppError(ErrorCodes.ABORTED, `aborted before start: ${argv.join(' ')}`));
        return;
      }
      const child = spawn(argv[0]!, argv.slice(1), {
        env: { ...process.env, ...cmd.env, LC_ALL: 'C', LANG: 'C' },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let outBytes = 0;
      let timedOut = false;
      let settled = false;
      const kill = (): void => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      };
      const timer = setTimeout(() => {
        timedOut = true;
        kill();
      }, timeoutMs);
      const onAbort = (): void => kill();
      signal?.addEventListener('abort', onAbort, { once: true });
      const collect = (into: Buffer[]) => (chunk: Buffer) => {
        outBytes += chunk.length;
        if (outBytes > this.maxOutputBytes) kill();
        else into.push(chunk);
      };
      child.stdout.on('data', collect(out));
      child.stderr.on('data', collect(err));
      const finish = (fn: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      child.on('error', (e: NodeJS.ErrnoException) => {
        finish(() => reject(spawnFailure(argv, cmd, e.code, e.message, e)));
      });
      child.on('close', (code, sig) => {
        finish(() => {
          const outcome = commandOutcome({
            argv,
            cmd,
            exitCode: code,
            signal: sig,
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8'),
            timedOut,
            aborted: signal?.aborted ?? false,
          });
          if (outcome instanceof Error) {
            this.logger?.debug(
              { argv, exitCode: code, stderr: outcome instanceof CommandError ? outcome.stderr : undefined },
              'exec failed',
            );
            reject(outcome);
          } else resolve(outcome);
        });
      });
      // A tool that exits before reading stdin gives EPIPE; the exit status is what matters.
      child.stdin.on('error', () => undefined);
      child.stdin.end(cmd.stdin ?? '');
    });
  }
}

/** The result of a finished command, or the error it amounts to (shared by both runners). */
function commandOutcome(o: {
  argv: string[];
  cmd: Command;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  aborted: boolean;
}): CommandResult | Error {
  if (o.exitCode === 0) return { stdout: o.stdout, stderr: o.stderr };
  if (o.aborted && !o.timedOut)
    return new AppError(ErrorCodes.ABORTED, `aborted: ${o.argv.join(' ')}`, { argv: o.argv });
  return new CommandError({
    argv: o.argv,
    exitCode: o.exitCode,
    signal: o.signal,
    stderr: o.stderr,
    stdout: o.stdout,
    netns: o.cmd.netns,
    timedOut: o.timedOut,
  });
}

/** A command that could not be started: a missing program is E_UNSUPPORTED. */
function spawnFailure(
  argv: string[],
  cmd: Command,
  errnoCode: string | undefined,
  message: string,
  cause?: unknown,
): Error {
  return errnoCode === 'ENOENT'
    ? new AppError(ErrorCodes.UNSUPPORTED, `${argv[0]} is not installed (spawn ENOENT)`, { argv }, { cause })
    : new CommandError({ argv, exitCode: null, stderr: message, netns: cmd.netns, cause });
}

/** Children the helper runs at once (MAX_CHILDREN in netd-spawner.c). */
const SPAWNER_SLOTS = 256;
const SPAWNER_PATH = fileURLToPath(new URL('./netd-spawner', import.meta.url));
const ERRNO_NAMES: Record<number, string> = { 2: 'ENOENT', 13: 'EACCES', 11: 'EAGAIN', 22: 'EINVAL', 24: 'EMFILE' };
const SIGNAL_NAMES: Record<number, NodeJS.Signals> = {
  9: 'SIGKILL',
  15: 'SIGTERM',
  6: 'SIGABRT',
  11: 'SIGSEGV',
  2: 'SIGINT',
  13: 'SIGPIPE',
};

interface Pending {
  argv: string[];
  cmd: Command;
  resolve: (r: CommandResult) => void;
  reject: (e: Error) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/**
 * Runs commands through netd-spawner (sys/spawner/netd-spawner.c), a small helper process that
 * starts them with posix_spawn. Node's own spawn forks the whole Node process on the event loop,
 * which costs in proportion to its memory (~5 ms at 150 MiB); the helper's cost does not grow
 * with the daemon. Same semantics as ExecRunner (LC_ALL=C, timeouts, abort, output cap).
 * Falls back to nothing: use `SpawnerRunner.available()` to choose.
 */
export class SpawnerRunner implements CommandRunner {
  private helper: ChildProcessWithoutNullStreams | undefined;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private inbox: Buffer = Buffer.alloc(0);
  private readonly logger: Logger | undefined;
  private readonly defaultTimeoutMs: number;

  constructor(opts: ExecRunnerOptions & { path?: string } = {}) {
    this.logger = opts.logger;
    this.defaultTimeoutMs = opts.defaultTimeoutMs ?? 30_000;
    this.path = opts.path ?? SPAWNER_PATH;
  }

  private readonly path: string;

  static available(path = SPAWNER_PATH): boolean {
    return existsSync(path);
  }

  run(cmd: Command, signal?: AbortSignal): Promise<CommandResult> {
    const argv = resolveArgv(cmd);
    const timeoutMs = cmd.timeoutMs ?? this.defaultTimeoutMs;
    this.logger?.debug({ argv, stdin: cmd.stdin, netns: cmd.netns && netnsLabel(cmd.netns) }, 'exec');
    if (signal?.aborted)
      return Promise.reject(new AppError(ErrorCodes.ABORTED, `aborted before start: ${argv.join(' ')}`));
    return new Promise((resolve, reject) => {
      const id = this.nextId++;
      if (this.nextId > 0x7fffffff) this.nextId = 1;
      const p: Pending = { argv, cmd, resolve, reject, ...(signal && { signal }) };
      const helper = this.start();
      this.pending.set(id, p);
      helper.ref();
      (helper.stdout as unknown as Socket).ref();
      if (signal) {
        p.onAbort = () => this.helper?.stdin.write(frame([2, id]));
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      const env = Object.entries({ ...cmd.env, LC_ALL: 'C', LANG: 'C' }).map(([k, v]) => `${k}=${v}`);
      const request = frame([1, id, timeoutMs], [argv, env, [cmd.stdin ?? '']]);
      // The helper runs at most SPAWNER_SLOTS children; the rest wait here, in order.
      if (this.pending.size - this.waiting.length > SPAWNER_SLOTS) this.waiting.push(request);
      else helper.stdin.write(request);
    });
  }

  /** Requests held back while the helper's slots are full. */
  private readonly waiting: Buffer[] = [];

  /** Stops the helper; pending commands fail. */
  close(): void {
    this.helper?.stdin.end();
    this.helper = undefined;
  }

  private start(): ChildProcessWithoutNullStreams {
    if (this.helper) return this.helper;
    const helper = spawn(this.path, [], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C', LANG: 'C' },
    });
    this.helper = helper;
    helper.stdout.on('data', (chunk: Buffer) => this.receive(chunk));
    helper.stderr.on('data', (chunk: Buffer) => this.logger?.warn({ stderr: chunk.toString('utf8') }, 'netd-spawner'));
    helper.stdin.on('error', () => undefined);
    helper.on('error', (e) => this.lost(helper, e.message));
    helper.on('exit', (code, sig) => this.lost(helper, `netd-spawner exited (${code ?? sig})`));
    helper.unref();
    return helper;
  }

  /** The helper died: fail what it was running (a command may or may not have run) and start afresh next time. */
  private lost(helper: ChildProcessWithoutNullStreams, why: string): void {
    if (this.helper === helper) this.helper = undefined;
    this.inbox = Buffer.alloc(0);
    this.waiting.length = 0;
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new CommandError({ argv: p.argv, exitCode: null, stderr: why, netns: p.cmd.netns }));
    }
  }

  private receive(chunk: Buffer): void {
    this.inbox = this.inbox.length ? Buffer.concat([this.inbox, chunk]) : chunk;
    while (this.inbox.length >= 4) {
      const len = this.inbox.readUInt32LE(0);
      if (this.inbox.length < 4 + len) break;
      const body = this.inbox.subarray(4, 4 + len);
      this.inbox = this.inbox.subarray(4 + len);
      const id = body.readUInt32LE(0);
      const status = body.readInt32LE(4);
      const timedOut = body.readUInt32LE(8) === 1;
      const outLen = body.readUInt32LE(12);
      const stdout = body.subarray(16, 16 + outLen).toString('utf8');
      const stderr = body.subarray(20 + outLen, 20 + outLen + body.readUInt32LE(16 + outLen)).toString('utf8');
      const p = this.pending.get(id);
      if (!p) continue;
      this.pending.delete(id);
      const next = this.waiting.shift();
      if (next) this.helper?.stdin.write(next);
      if (p.onAbort) p.signal?.removeEventListener('abort', p.onAbort);
      if (this.pending.size === 0 && this.helper) {
        // Idle, the helper does not keep the process alive.
        this.helper.unref();
        (this.helper.stdout as unknown as Socket).unref();
      }
      let outcome: CommandResult | Error;
      if (status <= -1000) outcome = spawnFailure(p.argv, p.cmd, ERRNO_NAMES[-status - 1000], stderr);
      else {
        const exitCode = status >= 0 ? status : null;
        const sig = status < 0 ? (SIGNAL_NAMES[-status] ?? 'SIGKILL') : null;
        outcome = commandOutcome({
          argv: p.argv,
          cmd: p.cmd,
          exitCode,
          signal: sig,
          stdout,
          stderr,
          timedOut,
          aborted: p.signal?.aborted ?? false,
        });
      }
      if (outcome instanceof Error) {
        this.logger?.debug({ argv: p.argv, status, stderr }, 'exec failed');
        p.reject(outcome);
      } else p.resolve(outcome);
    }
  }
}

/** One request frame: u32 fields, then groups of length-prefixed strings (each group counted). */
function frame(fields: number[], groups: string[][] = []): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    parts.push(b);
  };
  for (const f of fields) u32(f);
  groups.forEach((g, i) => {
    // The last group (stdin) is a single string, not counted.
    if (i < groups.length - 1) u32(g.length);
    for (const s of g) {
      const bytes = Buffer.from(s, 'utf8');
      u32(bytes.length);
      parts.push(bytes);
    }
  });
  const body = Buffer.concat(parts);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  return Buffer.concat([head, body]);
}
