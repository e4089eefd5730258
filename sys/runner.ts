import { spawn } from 'node:child_process';
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
  ['unsupported', /Unknown device type|not supported|Operation not supported|Unknown qdisc|Unknown filter|Unknown action|Could not find module|No such file or directory.*\/lib\/modules/i],
  ['exists', /File exists|already exists|Address already assigned|RTNETLINK answers: File exists/i],
  ['not-found', /Cannot find device|does not exist|No such device|No such file or directory|No such process|Cannot find|not found|Invalid handle|Object not found|Cannot delete qdisc with handle of zero|No such table|No such chain/i],
  ['busy', /Device or resource busy|Resource temporarily unavailable|Another transaction is in progress|locking failed/i],
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

/**
 * Rewrites a command to run inside its network namespace. Exported so the fake runner and the real
 * one agree on the exact argv.
 */
const NAMED_NETNS_PATH = /^\/(?:var\/)?run\/netns\/([A-Za-z0-9_][A-Za-z0-9_.-]{0,199})$/;

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
        finish(() => {
          const missing = e.code === 'ENOENT';
          reject(
            missing
              ? new AppError(ErrorCodes.UNSUPPORTED, `${argv[0]} is not installed (spawn ENOENT)`, { argv }, { cause: e })
              : new CommandError({ argv, exitCode: null, stderr: e.message, netns: cmd.netns, cause: e }),
          );
        });
      });
      child.on('close', (code, sig) => {
        finish(() => {
          const stdout = Buffer.concat(out).toString('utf8');
          const stderr = Buffer.concat(err).toString('utf8');
          if (code === 0) {
            resolve({ stdout, stderr });
            return;
          }
          if (signal?.aborted && !timedOut) {
            reject(new AppError(ErrorCodes.ABORTED, `aborted: ${argv.join(' ')}`, { argv }));
            return;
          }
          const error = new CommandError({ argv, exitCode: code, signal: sig, stderr, stdout, netns: cmd.netns, timedOut });
          this.logger?.debug({ argv, exitCode: code, stderr }, 'exec failed');
          reject(error);
        });
      });
      // A tool that exits before reading stdin gives EPIPE; the exit status is what matters.
      child.stdin.on('error', () => undefined);
      child.stdin.end(cmd.stdin ?? '');
    });
  }
}
