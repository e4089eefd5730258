import { describeError } from '../../core/errors.js';
import type { Logger } from '../../sys/log.js';

/**
 * What an ADD has done so far, as the steps that take it back. On failure they run in reverse
 * order; a step that fails is logged and the others still run (each step is an "ensure absent").
 */
export class UndoStack {
  private readonly steps: Array<{ label: string; run: () => Promise<unknown> }> = [];

  push(label: string, run: () => Promise<unknown>): void {
    this.steps.push({ label, run });
  }

  get size(): number {
    return this.steps.length;
  }

  async unwind(log: Logger): Promise<void> {
    for (const step of this.steps.splice(0).reverse()) {
      await step
        .run()
        .catch((err: unknown) => log.error({ err: describeError(err), step: step.label }, 'rollback step failed'));
    }
  }
}
