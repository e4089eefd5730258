import { invalidInput } from '../core/errors.js';

/**
 * Batch files (`ip -batch`, `tc -batch`, `bridge -batch`) are split on whitespace by the tools, so
 * every token we render must be a single word with nothing a tool could read as syntax. Checking
 * here means input can never smuggle an extra command into a batch.
 */
const UNSAFE = /[\s"'#\\;]/;

export function token(value: string | number | bigint): string {
  const text = String(value);
  if (text.length === 0 || text.length > 256 || UNSAFE.test(text)) {
    throw invalidInput(`unsafe token ${JSON.stringify(text)} for a command batch`);
  }
  return text;
}

/** Renders one batch line from tokens, checking each. */
export function line(...words: Array<string | number | bigint>): string {
  return words.map(token).join(' ');
}

/** Linux interface names: 1-15 bytes, no '/', whitespace or ':'. */
export function ifname(name: string): string {
  if (!/^[A-Za-z0-9_.@+-]{1,15}$/.test(name) || name === '.' || name === '..') {
    throw invalidInput(`"${name}" is not a valid interface name (1-15 of A-Z a-z 0-9 _ . - @ +)`);
  }
  return name;
}

/** Lines for one `ip|tc|bridge -batch -`; every token is checked as it is added. */
export class LineBatch {
  readonly lines: string[] = [];

  get empty(): boolean {
    return this.lines.length === 0;
  }

  add(...words: Array<string | number>): this {
    this.lines.push(line(...words));
    return this;
  }

  render(): string {
    return this.lines.join('\n') + '\n';
  }
}
