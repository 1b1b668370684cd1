import { execFile } from 'node:child_process';
import { accessSync, constants, readFileSync } from 'node:fs';
import path from 'node:path';
import { pino, type Logger } from 'pino';

/** Full path of an executable on PATH, or undefined. */
export function which(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (dir === '') continue;
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The interpreter a script names on its `#!` line (`#!/usr/bin/env python3` resolved through PATH). */
export function shebangInterpreter(script: string): string | undefined {
  const first = readFileSync(script, 'latin1').split('\n', 1)[0] ?? '';
  const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(first);
  if (!m) return undefined;
  if (path.basename(m[1]!) === 'env' && m[2] !== undefined) return which(m[2]);
  return m[1];
}

export interface RunResult {
  /** Exit code, or null when killed (timeout). */
  code: number | null;
  signal: string | null;
  stdout: Buffer;
  stderr: string;
  ms: number;
  /** One line for assertion messages: the command, how it ended, and the tail of its output. */
  describe: string;
}

/** Run a client; never rejects, so a test can put its output into the assertion message. */
export function run(
  file: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {},
): Promise<RunResult> {
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(
      file,
      args,
      {
        encoding: 'buffer',
        maxBuffer: 256 * 1024 * 1024,
        timeout: opts.timeoutMs ?? 60_000,
        killSignal: 'SIGKILL',
        env: opts.env ?? process.env,
        ...(opts.cwd !== undefined ? { cwd: opts.cwd } : {}),
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: string | null }) | null;
        const code = e === null ? 0 : typeof e.code === 'number' ? e.code : null;
        const signal = e?.signal ?? null;
        const errText = stderr.toString('latin1');
        const outText = stdout.toString('latin1');
        const ms = Date.now() - started;
        const describe =
          `$ ${file} ${args.join(' ')}\n` +
          `exit=${code ?? '-'} signal=${signal ?? '-'} ${ms} ms${e !== null && code === null && signal === null ? ` (${e.message})` : ''}\n` +
          `--- stderr (tail) ---\n${tail(errText, 4000)}\n--- stdout (tail) ---\n${tail(outText, 2000)}`;
        resolve({ code, signal, stdout, stderr: errText, ms, describe });
      },
    );
  });
}

function tail(s: string, n: number): string {
  return s.length <= n ? s : `[…${s.length - n} chars…]` + s.slice(-n);
}

export interface LogRecord {
  msg?: string;
  event?: string;
  [key: string]: unknown;
}

/** A pino logger at info level that keeps every record in memory, so tests can see what the server saw. */
export function capturingLogger(): { logger: Logger; records: LogRecord[] } {
  const records: LogRecord[] = [];
  const logger = pino({ level: 'info' }, { write: (line: string) => void records.push(JSON.parse(line) as LogRecord) });
  return { logger, records };
}
