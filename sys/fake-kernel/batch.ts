import { FakeKernelUnmodelled, ToolFailure } from './errors.js';
import type { FakeNetns, KernelState } from './state.js';

/**
 * What the ip, tc and bridge fakes share: running one command or a `-batch -` the way iproute2
 * does (a failed line prints "Command failed -:N" and stops the batch unless -force; a fatal one
 * ends the tool at once), and a strict reader of a line's words.
 */

export interface ToolResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface ToolContext {
  kernel: KernelState;
  /** The namespace the tool runs in (before its own `-n NAME`). */
  ns: FakeNetns;
  /** An injected failure for this line ("ip link add ..."), if any. */
  lineFault(text: string): ToolFailure | undefined;
}

const nl = (text: string) => (text.endsWith('\n') ? text : `${text}\n`);

export function runLines(opts: {
  tool: string;
  batch: boolean;
  force: boolean;
  lines: string[][];
  ctx: ToolContext;
  exec: (words: string[]) => string | void;
}): ToolResult {
  let stdout = '';
  let stderr = '';
  let failed = false;
  for (const [i, words] of opts.lines.entries()) {
    if (words.length === 0) continue;
    try {
      const injected = opts.ctx.lineFault(`${opts.tool} ${words.join(' ')}`);
      if (injected) throw injected;
      stdout += opts.exec(words) ?? '';
    } catch (err) {
      if (!(err instanceof ToolFailure)) throw err;
      stderr += nl(err.stderr);
      if (err.fatal || !opts.batch) return { stdout, stderr, exitCode: err.exitCode };
      stderr += `Command failed -:${i + 1}\n`;
      failed = true;
      if (!opts.force) break;
    }
  }
  return { stdout, stderr, exitCode: failed ? 1 : 0 };
}

/** The lines of a batch as the tools split them (whitespace; the wrappers never quote). */
export function batchLines(stdin: string): string[][] {
  return stdin.split('\n').map((l) => l.trim().split(/\s+/).filter(Boolean));
}

/** The global options of ip/tc/bridge, and the namespace `-n NAME` selects. */
export function toolOptions(
  tool: string,
  args: string[],
  ctx: ToolContext,
  known: readonly string[],
): { options: Set<string>; rest: string[]; ctx: ToolContext; stdin: boolean } {
  const options = new Set<string>();
  let i = 0;
  let stdin = false;
  while (i < args.length && args[i]!.startsWith('-')) {
    const o = args[i++]!;
    if (o === '-n') {
      const name = args[i++] ?? '';
      const ns = ctx.kernel.byName(name);
      if (!ns) throw new ToolFailure(`Cannot open network namespace "${name}": No such file or directory`, 255, true);
      ctx = { ...ctx, ns };
    } else if (o === '-batch') {
      if (args[i++] !== '-') throw new FakeKernelUnmodelled(`${tool} -batch from a file`);
      stdin = true;
    } else if (known.includes(o)) options.add(o);
    else throw new FakeKernelUnmodelled(`the ${tool} option ${o}`);
  }
  return { options, rest: args.slice(i), ctx, stdin };
}

/** Reads one command line word by word; anything it does not expect is unmodelled, never skipped. */
export class Words {
  private i = 0;

  constructor(
    private readonly tool: string,
    private readonly words: readonly string[],
  ) {}

  get done(): boolean {
    return this.i >= this.words.length;
  }

  peek(): string | undefined {
    return this.words[this.i];
  }

  next(what = 'an argument'): string {
    const w = this.words[this.i++];
    if (w === undefined) throw this.unmodelled(`missing ${what}`);
    return w;
  }

  /** Consumes `word` when it comes next. */
  take(word: string): boolean {
    if (this.words[this.i] !== word) return false;
    this.i++;
    return true;
  }

  expect(word: string): void {
    if (!this.take(word)) throw this.unmodelled(`expected "${word}"`);
  }

  int(what: string): number {
    const w = this.next(what);
    if (!/^-?\d+$/.test(w)) throw this.unmodelled(`"${w}" is not an integer ${what}`);
    return Number(w);
  }

  end(): void {
    if (!this.done) throw this.unmodelled(`unexpected "${this.words[this.i]}"`);
  }

  unmodelled(why: string): FakeKernelUnmodelled {
    return new FakeKernelUnmodelled(`the ${this.tool} command "${this.words.join(' ')}" (${why})`);
  }
}
