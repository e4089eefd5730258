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
    const v = String(value);
    if (!KEY.test(key) || !/^[A-Za-z0-9_ -]{1,64}$/.test(v))
      throw new AppError(ErrorCodes.INVALID_INPUT, `bad sysctl ${key}=${v}`);
    if (this.netns === undefined && !this.runner.interceptsSysctl) {
      await writeFile(`/proc/sys/${key.replaceAll('.', '/')}`, v);
      return;
    }
    await this.runner.run({ argv: ['sysctl', '-q', '-w', `${key}=${v}`], netns: this.netns });
  }
}
