import { pino, type Logger, type Level } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/**
 * JSON lines for machines; readable lines when stderr is a terminal (or when asked).
 * Logs go to stderr so that stdout stays free for what a command prints for the user.
 */
export function createLogger(opts: { level: Level | 'silent'; format?: 'auto' | 'json' | 'pretty'; file?: string }): Logger {
  const usePretty = opts.format === 'pretty' || ((opts.format ?? 'auto') === 'auto' && process.stderr.isTTY === true);
  const base = {
    level: opts.level,
    base: { pid: process.pid },
    // Belt and braces: even if a secret-bearing field slips into a log call, it is never written.
    redact: { paths: ['password', '*.password', 'secret', '*.secret', 'token', '*.token'], censor: '[redacted]' },
  };
  if (opts.file !== undefined) return pino(base, pino.destination({ dest: opts.file, sync: true, mkdir: true }));
  if (usePretty) {
    return pino(base, pretty({ destination: 2, sync: true, colorize: process.stderr.isTTY === true, ignore: 'pid,hostname', translateTime: 'SYS:HH:MM:ss.l' }));
  }
  return pino(base, pino.destination({ dest: 2, sync: false }));
}

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
