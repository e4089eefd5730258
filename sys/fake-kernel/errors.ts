import { AppError, ErrorCodes } from '../../core/errors.js';

/**
 * How the fake fails. A `ToolFailure` is what the real tool prints when one request fails (the
 * texts CommandError's `kind` classification reads); `FakeKernelUnmodelled` is the fake refusing a
 * command it does not model, which must never pass for a kernel answer (it is not a CommandError).
 */

export class ToolFailure extends Error {
  constructor(
    /** The tool's stderr for this request, without the batch's "Command failed -:N". */
    readonly stderr: string,
    /** The exit status when this was the whole command (a failed batch exits 1). */
    readonly exitCode: number,
    /**
     * The tool exits at once: no "Command failed" line and no further batch lines, even with -force
     * (iproute2 calls exit() on argument errors, and `ip neigh` on any kernel error).
     */
    readonly fatal = false,
  ) {
    super(stderr);
    this.name = 'ToolFailure';
  }
}

/** A kernel error as iproute2 prints it without an extended ack. */
export const rtnl = (what: string, opts: { fatal?: boolean } = {}): ToolFailure =>
  new ToolFailure(`RTNETLINK answers: ${what}`, 2, opts.fatal ?? false);

/** A kernel error with an extended ack message ("Error: ..."). */
export const extack = (what: string): ToolFailure => new ToolFailure(`Error: ${what}`, 2);

export const cannotFindDevice = (name: string): ToolFailure => new ToolFailure(`Cannot find device "${name}"`, 1);

/** iproute2's invarg(): the whole tool exits 255 (its message ends with an empty line). */
export const badArgument = (value: string, why: string): ToolFailure =>
  new ToolFailure(`Error: argument "${value}" is wrong: ${why}\n\n`, 255, true);

export class FakeKernelUnmodelled extends AppError {
  constructor(what: string) {
    super(ErrorCodes.INTERNAL, `FakeKernel does not model ${what}`, { what });
    this.name = 'FakeKernelUnmodelled';
  }
}
