import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ExecRunner, type CommandRunner } from '../sys/runner.js';

/**
 * Small helpers shared by the integration tests of every component. A tap `Test` is typed
 * structurally here so this module does not depend on tap.
 */

interface TestLike {
  fail(message: string): unknown;
  /** tap: `plan(0, reason)` marks the test skipped. */
  plan(n: number, comment?: string): unknown;
  teardown(fn: () => unknown): unknown;
}

/**
 * Integration tests need root (namespaces, links, nft). Outside CI they skip without it; under
 * CI=true a missing privilege is a failure, never a silent skip. Returns false when the test must stop.
 */
export function requireRoot(t: TestLike): boolean {
  if (process.getuid?.() === 0) return true;
  if (process.env.CI === 'true') {
    t.fail('this integration test needs root, and CI=true forbids skipping it');
  } else {
    t.plan(0, 'skipped: needs root (run the tests as root, or in CI)');
  }
  return false;
}

/**
 * Polls `check` every `stepMs` until it holds: resolves true as soon as it does, false once
 * `timeoutMs` has passed (the caller asserts on the result: `t.ok(await eventually(...), 'what')`).
 * A test waits on the condition it needs, never for a fixed time. A check that throws rejects.
 */
export async function eventually(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  stepMs = 50,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() >= deadline) return false;
    await sleep(stepMs);
  }
}

/** A short random name part, so parallel test files never collide. */
export function uniqueSuffix(bytes = 3): string {
  return randomBytes(bytes).toString('hex');
}

/**
 * A throwaway network namespace named `tn-s<random>`, deleted at teardown even when the test fails.
 * (Namespaces start with `tn-` so `test-netns leaks` finds anything a crashed test left.)
 */
export async function scratchNetns(t: TestLike, runner: CommandRunner = new ExecRunner()): Promise<string> {
  const name = `tn-s${uniqueSuffix()}`;
  await runner.run({ argv: ['ip', 'netns', 'add', name] });
  t.teardown(async () => {
    await runner.run({ argv: ['ip', 'netns', 'del', name] }).catch(() => undefined);
  });
  await runner.run({ argv: ['ip', 'link', 'set', 'lo', 'up'], netns: { name } });
  return name;
}
