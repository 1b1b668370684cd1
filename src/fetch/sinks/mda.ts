/**
 * Delivery through a mail delivery agent (procmail, maildrop, dovecot-lda,
 * a script): `/bin/sh -c <command>` gets the message on its standard input.
 *
 * - Line ends: CRLF → LF by default (what Unix MDAs expect); `lineEnding:
 *   'crlf'` passes the bytes exactly as received.
 * - Environment: the sink's own environment plus `env`, plus POPLAR_ACCOUNT,
 *   POPLAR_UIDL, POPLAR_SIZE (the size the server announced) and, when a rule
 *   chose one, POPLAR_FOLDER. Account and UIDL identify the message: this
 *   sink cannot be asked after a crash whether a message arrived, so the
 *   fetcher delivers an interrupted one again (at most one per crash, see
 *   deliver.ts), and an MDA that must store each message once can remember
 *   the pairs it has stored.
 * - Exit status 0 means delivered. Anything else rejects with a SinkError
 *   that carries the exit status (or signal) and the last lines of stderr.
 *   EX_TEMPFAIL (75), death by a signal, and a timeout are temporary; every
 *   other status is permanent.
 * - Spooling (default): the message is first written to a temporary file
 *   that is unlinked at once, and the MDA is started only when the message
 *   is complete, with that file as its stdin. A broken download or an abort
 *   before that point never starts it; and if this process dies (even by
 *   SIGKILL) while the MDA runs, the MDA still reads the whole message:
 *   with a pipe it would see an early EOF and could store a truncated message
 *   as if it were complete. Whether the MDA reads all of its stdin is then
 *   its own business: exit 0 means delivered.
 * - `spool: false` pipes the message while it arrives, with backpressure. If
 *   the MDA closes its stdin early (EPIPE), the rest of the message is still
 *   read from the source (so the POP3 session stays in step and a broken
 *   download is still noticed) and the exit status decides: an MDA that
 *   exits 0 without reading everything (a filter that discards, or one that
 *   decided on the header alone) has taken responsibility for the message,
 *   so this counts as delivered, with a warning in the log. If the source
 *   fails meanwhile, the MDA's stdin is NOT closed (no EOF that would look
 *   like the end of the message): it is stopped as below.
 * - When the abort signal fires or the timeout expires while the MDA runs,
 *   its whole process group gets SIGTERM, then SIGKILL after `killGraceMs`,
 *   and `deliver` rejects once it is gone. A careful MDA (procmail,
 *   dovecot-lda) delivers nothing then; what a careless script already wrote
 *   is beyond our reach.
 * - Durability is the MDA's promise: exit 0 must mean "stored".
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '../../observability/log.js';
import type { DeliveryInfo, Sink } from './types.js';
import { abortReason, chunksOf, CrlfToLf, destroyOnAbort, onAbort, SinkError, toError } from './util.js';

export interface MdaSinkOptions {
  /** Run with `/bin/sh -c`. */
  readonly command: string;
  /** Added to (and overriding) the inherited environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** Working directory of the MDA (default: this process's). */
  readonly cwd?: string;
  /** 'lf' (default) or 'crlf' (exactly as received). */
  readonly lineEnding?: 'lf' | 'crlf';
  /** The longest one delivery may take, from start to exit (default 10 minutes; 0 = no limit). */
  readonly timeoutMs?: number;
  /** Between SIGTERM and SIGKILL when the MDA has to be stopped (default 5000 ms). */
  readonly killGraceMs?: number;
  /** Spool the whole message to a temporary file and give the MDA that as stdin (default true). */
  readonly spool?: boolean;
  /** Where the spool file goes (default the system temporary directory); it is unlinked as soon as it is open. */
  readonly spoolDir?: string;
  /** Where early-exit warnings go (pipe mode). */
  readonly logger?: Logger;
}

/** The stderr kept for the error message: the last this many octets, of which the last lines are shown. */
const STDERR_KEEP = 8 * 1024;
const STDERR_LINES = 10;
const EX_TEMPFAIL = 75;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class MdaSink implements Sink {
  readonly #opts: MdaSinkOptions;
  readonly #running = new Set<ChildProcess>();
  #closed = false;

  constructor(opts: MdaSinkOptions) {
    if (opts.command.trim() === '') throw new TypeError('MdaSink: empty command');
    this.#opts = opts;
  }

  async deliver(message: Readable, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new SinkError('the MDA sink is closed', { temporary: true });
    signal?.throwIfAborted();
    if (this.#opts.spool === false) return this.#run(info, signal, { pipe: message });
    const input = await this.#spoolMessage(message, signal);
    try {
      signal?.throwIfAborted();
      await this.#run(info, signal, { file: input });
    } finally {
      await input.close().catch(() => undefined);
    }
  }

  /**
   * The message (line ends converted) in a file without a name, returned open
   * for reading from its start: a descriptor of its own, so its offset is 0
   * whatever was written through the other one.
   */
  async #spoolMessage(message: Readable, signal: AbortSignal | undefined): Promise<FileHandle> {
    const name = path.join(this.#opts.spoolDir ?? os.tmpdir(), `poplar-mda-${process.pid}-${randomBytes(8).toString('hex')}`);
    const w = await fs.open(name, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
    let r: FileHandle | undefined;
    const stop = destroyOnAbort(message, signal);
    try {
      r = await fs.open(name, C.O_RDONLY);
      await fs.unlink(name);
      const conv = this.#opts.lineEnding === 'crlf' ? null : new CrlfToLf();
      for await (const chunk of chunksOf(message)) {
        signal?.throwIfAborted();
        await writeFully(w, conv ? conv.push(chunk) : chunk);
      }
      if (conv) await writeFully(w, conv.end());
      return r;
    } catch (e) {
      await r?.close().catch(() => undefined);
      await fs.unlink(name).catch(() => undefined);
      throw e;
    } finally {
      stop();
      await w.close().catch(() => undefined);
    }
  }

  /** Run the MDA with `input` (a spool file, or the message to pipe) on its stdin, and judge its exit. */
  async #run(info: DeliveryInfo, signal: AbortSignal | undefined, input: { file: FileHandle } | { pipe: Readable }): Promise<void> {
    const o = this.#opts;
    const message = 'pipe' in input ? input.pipe : null;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...o.env,
      POPLAR_ACCOUNT: info.account,
      POPLAR_UIDL: info.uidl,
      POPLAR_SIZE: String(info.size),
    };
    if (info.folder !== undefined) env.POPLAR_FOLDER = info.folder;
    else delete env.POPLAR_FOLDER;

    const child = spawn('/bin/sh', ['-c', o.command], {
      stdio: ['file' in input ? input.file.fd : 'pipe', 'ignore', 'pipe'],
      env,
      ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
      // Its own process group, so that stopping it reaches whatever it started.
      detached: true,
    });
    this.#running.add(child);

    let stderr = Buffer.alloc(0);
    child.stderr!.on('data', (b: Buffer) => {
      stderr = Buffer.concat([stderr, b]);
      if (stderr.length > STDERR_KEEP * 2) stderr = stderr.subarray(stderr.length - STDERR_KEEP);
    });
    const exited = new Promise<Exit>((resolve, reject) => {
      child.once('error', reject); // spawn failed (no /bin/sh, no such cwd)
      child.once('exit', (code, sig) => {
        // Let stderr drain, but do not wait for a background process that inherited it.
        const t = setTimeout(done, 500);
        function done(): void {
          clearTimeout(t);
          resolve({ code, signal: sig });
        }
        if (child.stderr!.readableEnded || child.stderr!.destroyed) done();
        else child.stderr!.once('close', done);
      });
    });
    exited.catch(() => undefined);

    // Stop reasons that end the delivery before the MDA exits by itself.
    let stopReason: unknown;
    let killTimer: NodeJS.Timeout | undefined;
    let rejectStopped: (e: unknown) => void = () => undefined;
    const stopped = new Promise<never>((_, reject) => {
      rejectStopped = reject;
    });
    stopped.catch(() => undefined);
    const stop = (reason: unknown): void => {
      if (stopReason !== undefined) return;
      stopReason = reason;
      rejectStopped(reason);
      killGroup(child, 'SIGTERM');
      killTimer = setTimeout(() => killGroup(child, 'SIGKILL'), o.killGraceMs ?? 5000);
      killTimer.unref();
      if (message && !message.destroyed) message.destroy(toError(reason));
    };
    const timeoutMs = o.timeoutMs ?? 600_000;
    const timer =
      timeoutMs > 0
        ? setTimeout(
            () => stop(new SinkError(`MDA timed out after ${timeoutMs} ms: ${o.command}`, { temporary: true, stderr: tail(stderr) })),
            timeoutMs,
          )
        : undefined;
    const removeAbort = onAbort(signal, () => stop(abortReason(signal!)));

    let earlyExit = false;

    try {
      if (message) earlyExit = await pump(message, child, o.lineEnding === 'crlf' ? null : new CrlfToLf(), () => stopReason, stop);

      let exit: Exit;
      try {
        exit = await Promise.race([exited, stopped]);
      } catch (e) {
        throw stopReason ?? new SinkError(`cannot run the MDA: ${toError(e).message}`, { temporary: true, cause: e });
      }
      if (stopReason !== undefined) throw stopReason;
      if (exit.code === 0) {
        if (earlyExit) {
          o.logger?.warn({ account: info.account, uidl: info.uidl, command: o.command }, 'MDA exited 0 without reading the whole message; counted as delivered');
        }
        return;
      }
      const errText = tail(stderr);
      if (exit.signal !== null) {
        throw new SinkError(`MDA killed by ${exit.signal}: ${o.command}${errText ? `: ${errText}` : ''}`, {
          temporary: true,
          exitSignal: exit.signal,
          stderr: errText,
        });
      }
      const code = exit.code ?? -1;
      throw new SinkError(`MDA exited with status ${code}${code === EX_TEMPFAIL ? ' (EX_TEMPFAIL)' : ''}: ${o.command}${errText ? `: ${errText}` : ''}`, {
        temporary: code === EX_TEMPFAIL,
        exitCode: code,
        stderr: errText,
      });
    } finally {
      if (timer) clearTimeout(timer);
      removeAbort();
      if (stopReason !== undefined) {
        // Wait for it to be gone, so that "rejected" also means "not running any more".
        await exited.catch(() => undefined);
      }
      if (killTimer) clearTimeout(killTimer);
      this.#running.delete(child);
    }
  }

  /** Stops MDAs still running (only when a delivery was abandoned without its signal). */
  async close(): Promise<void> {
    this.#closed = true;
    for (const c of this.#running) killGroup(c, 'SIGKILL');
  }
}

/**
 * Pipe mode: copy the message into the MDA's stdin with backpressure. Returns
 * whether the MDA closed its stdin before the end (the rest was read and
 * dropped). When the source fails, the MDA is stopped and stdin is left
 * without EOF.
 */
async function pump(message: Readable, child: ChildProcess, conv: CrlfToLf | null, stopReason: () => unknown, stop: (reason: unknown) => void): Promise<boolean> {
  const stdin = child.stdin!;
  let stdinClosed = false;
  stdin.on('error', () => {
    stdinClosed = true; // EPIPE: the MDA stopped reading; the exit status will tell
  });
  stdin.on('close', () => {
    stdinClosed = true;
  });
  let sourceError: unknown;
  try {
    for await (const chunk of chunksOf(message)) {
      const b = conv ? conv.push(chunk) : chunk;
      if (stdinClosed || b.length === 0) continue;
      if (!stdin.write(b)) await drainOrClose(stdin);
    }
    if (conv && !stdinClosed) {
      const rest = conv.end();
      if (rest.length > 0) stdin.write(rest);
    }
  } catch (e) {
    sourceError = e;
  }
  const stopped = stopReason();
  if (stopped !== undefined) throw stopped;
  if (sourceError !== undefined) {
    // The message is incomplete: the MDA must not see an EOF that looks like its end.
    stop(sourceError);
    throw sourceError;
  }
  const early = stdinClosed;
  stdin.end();
  return early;
}

async function writeFully(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    off += bytesWritten;
  }
}

function killGroup(child: ChildProcess, sig: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, sig);
  } catch {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  }
}

/** Resolves once the pipe has room again, or once it is closed (EPIPE, exit). */
function drainOrClose(stdin: NodeJS.WritableStream & { destroyed?: boolean }): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stdin.off('drain', done);
      stdin.off('close', done);
      stdin.off('error', done);
      resolve();
    };
    if (stdin.destroyed === true) return resolve();
    stdin.on('drain', done);
    stdin.on('close', done);
    stdin.on('error', done);
  });
}

function tail(buf: Buffer): string {
  const text = buf.subarray(Math.max(0, buf.length - STDERR_KEEP)).toString('utf8').trimEnd();
  if (text === '') return '';
  return text.split('\n').slice(-STDERR_LINES).join('\n');
}
