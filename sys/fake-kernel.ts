import { AppError, ErrorCodes } from '../core/errors.js';
import { runBridge } from './fake-kernel/bridge.js';
import type { ToolContext, ToolResult } from './fake-kernel/batch.js';
import { dumpNetns, type NetnsDump } from './fake-kernel/dump.js';
import { FakeKernelUnmodelled, ToolFailure } from './fake-kernel/errors.js';
import { runIp } from './fake-kernel/ip.js';
import { applyNftScript, renderNftTable, renderNftTables } from './fake-kernel/nft.js';
import { destroyNetns, removeLink } from './fake-kernel/links.js';
import { KernelState, type FakeNetns } from './fake-kernel/state.js';
import { runSysctl } from './fake-kernel/sysctl.js';
import { runTc } from './fake-kernel/tc.js';
import {
  CommandError,
  netnsLabel,
  resolveArgv,
  type Command,
  type CommandResult,
  type CommandRunner,
  type NetnsTarget,
} from './runner.js';

export { FakeKernelUnmodelled } from './fake-kernel/errors.js';
export type { NetnsDump } from './fake-kernel/dump.js';

/**
 * A CommandRunner that is a kernel: it keeps the state that ip, tc, bridge, nft and sysctl would
 * change (per network namespace), applies the exact argv and batches the sys/ wrappers produce,
 * answers reads with iproute2 6.1's JSON and fails the way the real tools do (same stderr, same
 * batch semantics), in the spirit of knftables' Fake. So netd's ADD path and reconciler run in unit
 * tests without root, against state rather than scripted answers. A conformance test runs the same
 * scenario against the real kernel to keep it honest (test/integration/fake-kernel-conformance).
 *
 * What it does not model it refuses with FakeKernelUnmodelled (never a silent success).
 */

export interface FakeKernelOptions {
  /** veth devices get one queue per CPU (it shows in `num_tx_queues` and a root qdisc's refcnt). */
  cpus?: number;
}

export interface KernelCall {
  /** The argv as it would really run (`ip -n NAME ...`, `nsenter --net=PATH -- ...`). */
  argv: string[];
  stdin: string | undefined;
  netns: string | undefined;
  exitCode: number;
  stderr: string;
}

/** Which calls a fault or hook applies to: a RegExp on "argv joined by spaces" (+ "\n" + stdin), or a predicate. */
export type CallMatch = RegExp | ((call: { argv: readonly string[]; stdin: string | undefined }) => boolean);

/** Where in the fake: a namespace name (/run/netns/NAME), a NetnsTarget, or undefined for the root one. */
export type FakeNetnsRef = NetnsTarget | string | undefined;

interface Countdown {
  times: number;
}

export class FakeKernel implements CommandRunner {
  /** Own-namespace sysctls come here as `sysctl -w` instead of going to /proc/sys (see SysctlClient). */
  readonly interceptsSysctl = true;
  readonly calls: KernelCall[] = [];
  private readonly state: KernelState;
  private readonly commandFaults: Array<Countdown & { match: CallMatch; stderr: string; exitCode: number }> = [];
  private readonly lineFaults: Array<Countdown & { match: string | RegExp; failure: ToolFailure }> = [];
  private readonly hooks: Array<Countdown & { match: CallMatch; action: (k: FakeKernel) => unknown }> = [];

  constructor(opts: FakeKernelOptions = {}) {
    this.state = new KernelState(opts.cpus ?? 2);
  }

  // ---- namespaces ----

  /** A named namespace, as `ip netns add NAME` makes it (/run/netns/NAME, lo down). */
  addNetns(name: string): this {
    this.state.addNamed(name);
    return this;
  }

  /** A namespace known by a path only (what a runtime hands to CNI, e.g. /proc/PID/ns/net). */
  addNetnsAt(path: string): this {
    this.state.addAtPath(path);
    return this;
  }

  hasNetns(ref: FakeNetnsRef): boolean {
    return this.find(ref) !== undefined;
  }

  // ---- changes behind the caller's back (not recorded in `calls`) ----

  /** The namespace goes, with its links (and their veth peers elsewhere): a container died. */
  removeNetns(ref: FakeNetnsRef): void {
    destroyNetns(this.state, this.netns(ref));
  }

  deleteLink(ref: FakeNetnsRef, name: string): void {
    const link = this.netns(ref).link(name);
    if (!link) throw new Error(`FakeKernel: no link ${name} in ${this.netns(ref).label}`);
    removeLink(link);
  }

  /** Runs a command against the state without recording it or applying faults (someone else did it). */
  async tamper(cmd: Command): Promise<CommandResult> {
    const argv = resolveArgv(cmd);
    const r = this.execute(argv, cmd.stdin ?? '');
    if (r.exitCode !== 0) throw new CommandError({ argv, exitCode: r.exitCode, stderr: r.stderr, netns: cmd.netns });
    return { stdout: r.stdout, stderr: r.stderr };
  }

  // ---- fault injection ----

  /** The next `times` matching commands fail as a whole with this stderr; nothing of them applies. */
  failNext(match: CallMatch, failure: { stderr: string; exitCode?: number }, times = 1): this {
    this.commandFaults.push({ match, stderr: failure.stderr, exitCode: failure.exitCode ?? 2, times });
    return this;
  }

  /**
   * The next `times` matching lines (a batch line or a single command, as "ip link add ...", "tc
   * qdisc replace ...", "bridge fdb append ..."; a string matches as a prefix) fail as the kernel
   * refusing them would: the tool prints `stderr` (and "Command failed -:N" in a batch) and goes on
   * under -force. `fatal`: the tool exits there instead.
   */
  failLine(match: string | RegExp, failure: { stderr: string; exitCode?: number; fatal?: boolean }, times = 1): this {
    const f = new ToolFailure(failure.stderr, failure.exitCode ?? 2, failure.fatal ?? false);
    this.lineFaults.push({ match, failure: f, times });
    return this;
  }

  /** Runs `action` just before the next `times` matching commands are applied (a race, a deletion). */
  beforeNext(match: CallMatch, action: (kernel: FakeKernel) => unknown, times = 1): this {
    this.hooks.push({ match, action, times });
    return this;
  }

  // ---- reading the state ----

  /** Sorted, diff-friendly lines describing one namespace (the root one by default). */
  dump(ref?: FakeNetnsRef): NetnsDump {
    return dumpNetns(this.netns(ref));
  }

  /** A sysctl value set through the fake (undefined when never set). */
  sysctl(key: string, ref?: FakeNetnsRef): string | undefined {
    return this.netns(ref).sysctls.get(key);
  }

  /** Calls as "argv joined by spaces" (batches' stdin not included). */
  commandLines(): string[] {
    return this.calls.map((c) => c.argv.join(' '));
  }

  /** Every batch line sent (ip/tc/bridge stdin and nft scripts), in order, prefixed by the program. */
  batchLines(): string[] {
    return this.calls.flatMap((c) => {
      const program = c.argv[0] === 'nsenter' ? c.argv[3] : c.argv[0];
      return (c.stdin ?? '')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .map((l) => `${program} ${l}`);
    });
  }

  // ---- CommandRunner ----

  async run(cmd: Command, signal?: AbortSignal): Promise<CommandResult> {
    const argv = resolveArgv(cmd);
    if (signal?.aborted) throw new AppError(ErrorCodes.ABORTED, `aborted before start: ${argv.join(' ')}`);
    const call: KernelCall = {
      argv,
      stdin: cmd.stdin,
      netns: cmd.netns && netnsLabel(cmd.netns),
      exitCode: 0,
      stderr: '',
    };
    this.calls.push(call);
    // A process takes a turn of the event loop: concurrent callers interleave as with real ones.
    await new Promise((resolve) => setImmediate(resolve));
    for (const hook of this.take(this.hooks, (h) => this.matches(h.match, argv, cmd.stdin))) await hook.action(this);
    const [fault] = this.take(this.commandFaults, (f) => this.matches(f.match, argv, cmd.stdin));
    const result: ToolResult = fault
      ? {
          stdout: '',
          stderr: fault.stderr.endsWith('\n') ? fault.stderr : `${fault.stderr}\n`,
          exitCode: fault.exitCode,
        }
      : this.execute(argv, cmd.stdin ?? '');
    call.exitCode = result.exitCode;
    call.stderr = result.stderr;
    if (result.exitCode !== 0) {
      throw new CommandError({
        argv,
        exitCode: result.exitCode,
        stderr: result.stderr,
        stdout: result.stdout,
        ...(cmd.netns && { netns: cmd.netns }),
      });
    }
    return { stdout: result.stdout, stderr: result.stderr };
  }

  private execute(argv: string[], stdin: string): ToolResult {
    let ns = this.state.root;
    let words = argv;
    if (words[0] === 'nsenter') {
      const path = /^--net=(.+)$/.exec(words[1] ?? '')?.[1];
      if (path === undefined || words[2] !== '--')
        throw new FakeKernelUnmodelled(`nsenter ${words.slice(1).join(' ')}`);
      const target = this.state.atPath(path);
      if (!target)
        return { stdout: '', stderr: `nsenter: cannot open ${path}: No such file or directory\n`, exitCode: 1 };
      ns = target;
      words = words.slice(3);
    }
    const ctx: ToolContext = { kernel: this.state, ns, lineFault: (text) => this.lineFault(text) };
    const [program, ...args] = words;
    try {
      switch (program) {
        case 'ip':
          return runIp(ctx, args, stdin);
        case 'tc':
          return runTc(ctx, args, stdin);
        case 'bridge':
          return runBridge(ctx, args, stdin);
        case 'nft':
          return runNft(ns, args, stdin);
        case 'sysctl':
          return runSysctl(ns, args);
        default:
          throw new FakeKernelUnmodelled(`the program "${program}" (${words.join(' ')})`);
      }
    } catch (err) {
      // Failures outside a line (a missing `-n` namespace, nft's errors) end the tool.
      if (err instanceof ToolFailure)
        return {
          stdout: '',
          stderr: err.stderr.endsWith('\n') ? err.stderr : `${err.stderr}\n`,
          exitCode: err.exitCode,
        };
      throw err;
    }
  }

  private lineFault(text: string): ToolFailure | undefined {
    const [hit] = this.take(this.lineFaults, (f) =>
      typeof f.match === 'string' ? text.startsWith(f.match) : f.match.test(text),
    );
    return hit?.failure;
  }

  private matches(match: CallMatch, argv: readonly string[], stdin: string | undefined): boolean {
    if (typeof match === 'function') return match({ argv, stdin });
    return match.test(argv.join(' ') + (stdin !== undefined ? `\n${stdin}` : ''));
  }

  /** The matching entries with turns left, each using one turn; spent ones are dropped. */
  private take<T extends Countdown>(list: T[], pred: (x: T) => boolean): T[] {
    const hits = list.filter((x) => x.times > 0 && pred(x));
    for (const h of hits) h.times -= 1;
    for (let i = list.length - 1; i >= 0; i--) if (list[i]!.times <= 0) list.splice(i, 1);
    return hits;
  }

  private find(ref: FakeNetnsRef): FakeNetns | undefined {
    if (ref === undefined) return this.state.root;
    if (typeof ref === 'string') return this.state.byName(ref);
    return 'name' in ref ? this.state.byName(ref.name) : this.state.atPath(ref.path);
  }

  private netns(ref: FakeNetnsRef): FakeNetns {
    const ns = this.find(ref);
    if (!ns) throw new Error(`FakeKernel: no namespace ${typeof ref === 'string' ? ref : JSON.stringify(ref)}`);
    return ns;
  }
}

/** `nft -f -` (one atomic transaction) and `nft -j list tables|table F T`. */
function runNft(ns: FakeNetns, args: string[], stdin: string): ToolResult {
  const joined = args.join(' ');
  if (joined === '-f -') {
    applyNftScript(ns.nft, stdin);
    return { stdout: '', stderr: '', exitCode: 0 };
  }
  if (joined === '-j list tables') return { stdout: renderNftTables(ns.nft), stderr: '', exitCode: 0 };
  const m = /^-j list table (\S+) (\S+)$/.exec(joined);
  if (m) {
    const out = renderNftTable(ns.nft, m[1]!, m[2]!);
    if (out !== undefined) return { stdout: out, stderr: '', exitCode: 0 };
    const line = `list table ${m[1]} ${m[2]}`;
    const caret = ' '.repeat(line.length - m[2]!.length) + '^'.repeat(m[2]!.length);
    return { stdout: '', stderr: `Error: No such file or directory\n${line}\n${caret}\n`, exitCode: 1 };
  }
  throw new FakeKernelUnmodelled(`nft ${joined}`);
}
