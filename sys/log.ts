import { pino, type Logger as PinoLogger, type DestinationStream } from 'pino';

/**
 * Structured JSON logging. Components receive a Logger (never import a global one) and derive child
 * loggers carrying `component`, and where known `tenant`, `vpc`, `container`.
 */
export type Logger = PinoLogger;

export interface LogContext {
  component: string;
  tenant?: string;
  vpc?: string;
  container?: string;
}

export function createLogger(opts: { level?: string; destination?: DestinationStream } = {}): Logger {
  const level = opts.level ?? process.env.LOG_LEVEL ?? 'info';
  return opts.destination ? pino({ level }, opts.destination) : pino({ level });
}

/** A logger that discards everything, for tests and library defaults. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

export function componentLogger(parent: Logger, ctx: LogContext): Logger {
  return parent.child(ctx);
}
