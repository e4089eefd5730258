import { CommandError, resolveArgv, type Command, type CommandResult, type CommandRunner } from './runner.js';

/**
 * A CommandRunner for unit tests: records every call with the argv it would really have run (netns
 * rewriting included) and answers from scripted responses. Golden tests compare `calls` exactly.
 */

export interface RecordedCall {
  argv: string[];
  stdin: string | undefined;
  env?: Readonly<Record<string, string>>;
}

type Responder = (call: RecordedCall) => CommandResult | Promise<CommandResult>;

interface Rule {
  matches: (call: RecordedCall) => boolean;
  respond: Responder;
  remaining: number;
}

export class FakeRunner implements CommandRunner {
  readonly calls: RecordedCall[] = [];
  private readonly rules: Rule[] = [];

  /** Answers calls whose argv starts with `prefix` (first matching rule wins, in order added). */
  on(prefix: readonly string[], respond: Responder | CommandResult, times = Infinity): this {
    this.rules.push({
      matches: (call) => prefix.every((word, i) => call.argv[i] === word),
      respond: typeof respond === 'function' ? respond : () => respond,
      remaining: times,
    });
    return this;
  }

  /** Makes calls starting with `prefix` fail like the real tool would. */
  failOn(prefix: readonly string[], stderr: string, exitCode = 2, times = Infinity): this {
    return this.on(
      prefix,
      (call) => {
        throw new CommandError({ argv: call.argv, exitCode, stderr });
      },
      times,
    );
  }

  async run(cmd: Command): Promise<CommandResult> {
    const call: RecordedCall = { argv: resolveArgv(cmd), stdin: cmd.stdin, ...(cmd.env && { env: cmd.env }) };
    this.calls.push(call);
    const rule = this.rules.find((r) => r.remaining > 0 && r.matches(call));
    if (!rule) return { stdout: '', stderr: '' };
    rule.remaining -= 1;
    return rule.respond(call);
  }

  /** The calls as "argv joined by spaces", which reads well in test diffs. */
  commandLines(): string[] {
    return this.calls.map((c) => c.argv.join(' '));
  }

  reset(): void {
    this.calls.length = 0;
  }
}
