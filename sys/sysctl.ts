import { writeFile } from 'node:fs/promises';
import { AppError, ErrorCodes } from '../core/errors.js';
import type { CommandRunner, NetnsTarget } from './runner.js';

/**
 * Kernel parameters of one network namespace. In the caller's own namespace a write to /proc/sys
 * (no process started); in another one `sysctl` through the runner (it enters the namespace). A
 * runner that models the kernel (`interceptsSysctl`, the FakeKernel) gets every write as `sysctl -w`.
 */

const KEY = /^net\.[a-z0-9_]+(\.[A-Za-z0-9_-]+){1,4}$/;

export class SysctlClient {
  constructor(
    private readonly runner: CommandRunner,
    private readonly netns?: NetnsTarget,
  ) {}

  async set(key: string, value: string | number): Promise<void> {
    await this.setAll([[key, value]]);
  }

  /** Several parameters at once (one `sysctl` process when it must enter another namespace). */
  async setAll(entries: ReadonlyArray<readonly [string, string | number]>): Promise<void> {
    const checked = entries.map(([key, value]) => {
      const v = String(value);
      if (!KEY.test(key) || !/^[A-Za-z0-9_ -]{1,64}$/.test(v))
        throw new AppError(ErrorCodes.INVALID_INPUT, `bad sysctl ${key}=${v}`);
      return [key, v] as const;
    });
    if (this.netns === undefined && !this.runner.interceptsSysctl) {
      for (const [key, v] of checked) await writeFile(`/proc/sys/${key.replaceAll('.', '/')}`, v);
      return;
    }
    await this.runner.run({
      argv: ['sysctl', '-q', '-w', ...checked.map(([key, v]) => `${key}=${v}`)],
      netns: this.netns,
    });
  }
}
