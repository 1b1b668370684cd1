/**
 * Delivery by appending to an mbox file in the mboxrd format:
 *
 *   From <envelope sender> <asctime date>\n     the separator ("From_ line")
 *   <message, line ends LF, every line matching /^>*From / with one more '>'>
 *   \n                                          a blank line ends the message
 *
 * The sender is the address in the message's first Return-Path header
 * ("MAILER-DAEMON" when there is none, when it is <>, or when it is not a
 * single token). The date is the delivery time in local time, as ctime(3)
 * writes it. Reading back, a reader removes one '>' from every line matching
 * /^>+From /, which gives back the message exactly (mboxrd is reversible,
 * unlike mboxo/mboxcl).
 *
 * Locking, as Postfix local(8) and mutt do it on Linux: an fcntl lock on the
 * whole mbox AND a dotlock `<mbox>.lock` (created with O_EXCL; one older than
 * `dotlockStaleSeconds` is taken for left over by a crash and removed; ours is
 * touched while held so that a long append never looks stale). Both are
 * retried with a growing delay for up to `lockTimeoutMs`, after which delivery
 * fails as temporary. Inside this process a queue per mbox path keeps sinks
 * from overlapping (fcntl locks do not exclude their own process).
 *
 * Writing: the message is first spooled (CRLF → LF) to an unlinked file in
 * `spoolDir`, so the locks are held only for a local copy, never while the
 * POP3 server trickles the message in, and a broken download never touches
 * the mbox. Under the locks the mbox (opened O_APPEND) gets the separator and
 * the quoted message, is fsynced, and only then are the locks released. A
 * failure or an abort in between truncates the file back to the length it had
 * when the lock was taken, so no half message remains. (`spool: false` streams
 * straight from the source under the lock instead.)
 */
import { promises as fs, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fsyncDir } from '../../store/maildir/maildir-store.js';
import { tryLockExclusive, unlock } from './fcntl-lock.js';
import type { DeliveryInfo, Sink } from './types.js';
import { chunksOf, CrlfToLf, destroyOnAbort, EMPTY, KeyedMutex, SinkError, toError } from './util.js';

export interface MboxSinkOptions {
  readonly path: string;
  /** Create the mbox file when it does not exist (default true); its directory must exist. */
  readonly create?: boolean;
  /** fsync the mbox before unlocking (default true). */
  readonly fsync?: boolean;
  /** Take an fcntl lock on the mbox (default true). */
  readonly fcntlLock?: boolean;
  /** Take the dotlock `<path>.lock` (default true); its directory must be writable. */
  readonly dotlock?: boolean;
  /** How long to wait for the locks before failing as temporary (default 60 000 ms). */
  readonly lockTimeoutMs?: number;
  /** A dotlock older than this is removed as left over (default 300 s). */
  readonly dotlockStaleSeconds?: number;
  /** Spool the message to a temporary file before locking (default true). */
  readonly spool?: boolean;
  /** Where the spool file goes (default the system temporary directory); it is unlinked as soon as it is open. */
  readonly spoolDir?: string;
  /** Permission bits of a newly created mbox (default 0o600). */
  readonly fileMode?: number;
}

/** Headers beyond this size are not searched for Return-Path. */
const HEAD_LIMIT = 64 * 1024;
/** Output is gathered into writes of about this size. */
const WRITE_SIZE = 256 * 1024;

const LF = 0x0a;
const GT = 0x3e;
const FROM_ = Buffer.from('From ', 'latin1');

/** Writers of one mbox inside this process, one at a time. */
const inProcess = new KeyedMutex();

/**
 * Streaming mboxrd quoting of LF-terminated content: a line that starts with
 * any number of '>' followed by "From " gets one more '>' in front. The
 * decision about a line start may span chunks; what is undecided is held as a
 * count of '>' and how much of "From " has matched.
 */
export class MboxrdQuoter {
  /** At the start of a line, still deciding. */
  #atStart = true;
  #gts = 0;
  #matched = 0;
  #last = LF;

  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (!this.#atStart) {
        const nl = chunk.indexOf(LF, i);
        if (nl === -1) {
          out.push(chunk.subarray(i));
          break;
        }
        out.push(chunk.subarray(i, nl + 1));
        i = nl + 1;
        this.#atStart = true;
        continue;
      }
      const c = chunk[i]!;
      if (this.#matched === 0 && c === GT) {
        this.#gts++;
        i++;
        continue;
      }
      if (c === FROM_[this.#matched]) {
        this.#matched++;
        i++;
        if (this.#matched === FROM_.length) {
          out.push(Buffer.alloc(this.#gts + 1, GT), FROM_);
          this.#resetLine(false);
        }
        continue;
      }
      // Not a From_ line: give back what was held, then copy the rest of the line.
      out.push(...this.#held());
      this.#resetLine(false);
    }
    if (n > 0) this.#last = chunk[n - 1]!;
    return out;
  }

  /** Whatever was held, and a final LF if the content did not end with one. */
  end(): Buffer[] {
    const out = this.#atStart ? this.#held() : [];
    this.#resetLine(true);
    if (this.#last !== LF) {
      out.push(Buffer.from('\n'));
      this.#last = LF;
    }
    return out;
  }

  #held(): Buffer[] {
    const out: Buffer[] = [];
    if (this.#gts > 0) out.push(Buffer.alloc(this.#gts, GT));
    if (this.#matched > 0) out.push(FROM_.subarray(0, this.#matched));
    return out;
  }

  #resetLine(atStart: boolean): void {
    this.#atStart = atStart;
    this.#gts = 0;
    this.#matched = 0;
  }
}

/** The separator line's date: ctime(3) without its newline, in local time ("Thu Nov  6 09:05:01 2025"). */
export function asctime(d: Date): string {
  const day = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'][d.getDay()]!;
  const mon = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'][d.getMonth()]!;
  const p2 = (n: number): string => String(n).padStart(2, '0');
  return `${day} ${mon} ${String(d.getDate()).padStart(2, ' ')} ${p2(d.getHours())}:${p2(d.getMinutes())}:${p2(d.getSeconds())} ${d.getFullYear()}`;
}

/**
 * The envelope sender for the separator line, from the first Return-Path in
 * the header section `head` (LF line ends). MAILER-DAEMON when there is none,
 * when it is the null path, or when it would not be one token on the line.
 */
export function senderFromHead(head: Buffer): string {
  const blank = head.indexOf('\n\n');
  const text = head.subarray(0, head[0] === LF ? 0 : blank === -1 ? head.length : blank).toString('latin1');
  const m = /(?:^|\n)return-path[ \t]*:((?:[^\n]*)(?:\n[ \t][^\n]*)*)/i.exec(text);
  if (m === null) return 'MAILER-DAEMON';
  const value = m[1]!.replace(/\r?\n[ \t]/g, ' ').trim();
  const angle = /<([^>]*)>/.exec(value);
  const addr = (angle !== null ? angle[1]! : value).trim();
  if (addr === '' || !/^[\x21-\x7e]+$/.test(addr)) return 'MAILER-DAEMON';
  return addr;
}

export class MboxSink implements Sink {
  readonly #path: string;
  readonly #create: boolean;
  readonly #fsync: boolean;
  readonly #fcntl: boolean;
  readonly #dotlock: boolean;
  readonly #lockTimeoutMs: number;
  readonly #staleMs: number;
  readonly #spool: boolean;
  readonly #spoolDir: string;
  readonly #mode: number;
  #key: string | undefined;
  #closed = false;

  constructor(opts: MboxSinkOptions) {
    this.#path = path.resolve(opts.path);
    this.#create = opts.create ?? true;
    this.#fsync = opts.fsync ?? true;
    this.#fcntl = opts.fcntlLock ?? true;
    this.#dotlock = opts.dotlock ?? true;
    this.#lockTimeoutMs = opts.lockTimeoutMs ?? 60_000;
    this.#staleMs = (opts.dotlockStaleSeconds ?? 300) * 1000;
    this.#spool = opts.spool ?? true;
    this.#spoolDir = opts.spoolDir ?? os.tmpdir();
    this.#mode = opts.fileMode ?? 0o600;
  }

  async deliver(message: Readable, _info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new SinkError('the mbox sink is closed', { temporary: true });
    signal?.throwIfAborted();
    // One queue per real file: two names of one mbox must not bypass it (see fcntl-lock.ts).
    this.#key ??= await fs.realpath(this.#path).catch(() => this.#path);
    if (!this.#spool) {
      const stop = destroyOnAbort(message, signal);
      try {
        return await inProcess.run(this.#key, () => this.#append(lfChunks(chunksOf(message)), signal));
      } finally {
        stop();
      }
    }
    const spool = await this.#spoolMessage(message, signal);
    try {
      await inProcess.run(this.#key, () => this.#append(readAll(spool), signal));
    } finally {
      await spool.close().catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** Copy the message, with LF line ends, to a fresh file that has no name. */
  async #spoolMessage(message: Readable, signal: AbortSignal | undefined): Promise<FileHandle> {
    const name = path.join(this.#spoolDir, `poplar-mbox-${process.pid}-${randomBytes(8).toString('hex')}`);
    const fh = await fs.open(name, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600);
    await fs.unlink(name).catch(() => undefined);
    const stop = destroyOnAbort(message, signal);
    try {
      for await (const chunk of lfChunks(chunksOf(message))) {
        signal?.throwIfAborted();
        await writeFully(fh, chunk);
      }
      return fh;
    } catch (e) {
      await fh.close().catch(() => undefined);
      throw e;
    } finally {
      stop();
    }
  }

  /** Under both locks: append separator and quoted content; on any failure cut the file back. */
  async #append(content: AsyncIterable<Buffer>, signal: AbortSignal | undefined): Promise<void> {
    const it = content[Symbol.asyncIterator]();
    // The header section decides the separator line, so read it before writing anything.
    const head = await readHead(it);
    signal?.throwIfAborted();

    const existed = await fs.stat(this.#path).then(
      () => true,
      () => false,
    );
    if (!existed && !this.#create) {
      throw new SinkError(`mbox ${this.#path} does not exist (and create is off)`, { temporary: true });
    }
    const fh = await fs.open(this.#path, C.O_RDWR | C.O_APPEND | C.O_NOCTTY | (this.#create ? C.O_CREAT : 0), this.#mode);
    let dotlock: Dotlock | undefined;
    let origSize = -1;
    let failure: unknown;
    try {
      if (!(await fh.stat()).isFile()) throw new SinkError(`${this.#path} is not a regular file`, { temporary: false });
      const deadline = Date.now() + this.#lockTimeoutMs;
      if (this.#fcntl) await this.#lockFcntl(fh, deadline, signal);
      if (this.#dotlock) dotlock = await Dotlock.acquire(`${this.#path}.lock`, deadline, this.#staleMs, signal);

      origSize = (await fh.stat()).size;
      const out = new OutputBuffer(fh);
      out.add(await leadIn(fh, origSize));
      out.add(Buffer.from(`From ${senderFromHead(head.data)} ${asctime(new Date())}\n`, 'latin1'));
      const quoter = new MboxrdQuoter();
      out.add(...quoter.push(head.data));
      await out.maybeFlush();
      if (!head.done) {
        for (;;) {
          const r = await it.next();
          if (r.done === true) break;
          signal?.throwIfAborted();
          out.add(...quoter.push(r.value));
          await out.maybeFlush();
        }
      }
      out.add(...quoter.end(), Buffer.from('\n'));
      await out.flush();
      signal?.throwIfAborted();
      if (this.#fsync) {
        await fh.sync();
        if (!existed) await fsyncDir(path.dirname(this.#path));
      }
    } catch (e) {
      failure = e;
      if (origSize >= 0) {
        try {
          await fh.truncate(origSize);
          if (this.#fsync) await fh.sync();
        } catch (te) {
          failure = new SinkError(`mbox ${this.#path}: could not cut a failed append back to ${origSize} octets (${toError(te).message})`, {
            temporary: true,
            cause: e,
          });
        }
      }
    } finally {
      await dotlock?.release();
      // Closing the descriptor drops the fcntl lock too; unlock first so the order is explicit.
      if (this.#fcntl && origSize >= 0) await unlock(fh.fd).catch(() => undefined);
      await fh.close().catch(() => undefined);
      if (failure === undefined) await it.return?.();
    }
    if (failure !== undefined) throw failure;
  }

  async #lockFcntl(fh: FileHandle, deadline: number, signal: AbortSignal | undefined): Promise<void> {
    let delay = 10;
    for (;;) {
      signal?.throwIfAborted();
      if (await tryLockExclusive(fh.fd)) return;
      if (Date.now() >= deadline) {
        throw new SinkError(`timed out waiting for the fcntl lock on ${this.#path}`, { temporary: true });
      }
      await sleep(jitter(delay), undefined, signal ? { signal } : undefined);
      delay = Math.min(delay * 2, 1000);
    }
  }
}

/** A dotlock file held by this process, kept fresh while held. */
class Dotlock {
  readonly #file: string;
  readonly #timer: NodeJS.Timeout;

  private constructor(file: string, refreshMs: number) {
    this.#file = file;
    this.#timer = setInterval(() => {
      const now = new Date();
      fs.utimes(file, now, now).catch(() => undefined);
    }, refreshMs);
    this.#timer.unref();
  }

  static async acquire(file: string, deadline: number, staleMs: number, signal: AbortSignal | undefined): Promise<Dotlock> {
    let delay = 10;
    for (;;) {
      signal?.throwIfAborted();
      try {
        const fh = await fs.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o644);
        try {
          await fh.writeFile(`${process.pid}\n`);
        } finally {
          await fh.close();
        }
        return new Dotlock(file, Math.max(1000, Math.floor(staleMs / 3)));
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EEXIST') {
          throw new SinkError(`cannot create the dotlock ${file}: ${(e as Error).message}`, { temporary: true, cause: e });
        }
      }
      const st = await fs.stat(file).catch(() => null);
      if (st !== null && Date.now() - st.mtimeMs > staleMs) {
        // Left over by a crash. Removing it can race with another remover; the fcntl lock still excludes.
        await fs.unlink(file).catch(() => undefined);
        continue;
      }
      if (st === null) continue; // released meanwhile
      if (Date.now() >= deadline) throw new SinkError(`timed out waiting for the dotlock ${file}`, { temporary: true });
      await sleep(jitter(delay), undefined, signal ? { signal } : undefined);
      delay = Math.min(delay * 2, 1000);
    }
  }

  async release(): Promise<void> {
    clearInterval(this.#timer);
    await fs.unlink(this.#file).catch(() => undefined);
  }
}

function jitter(ms: number): number {
  return ms / 2 + Math.random() * ms;
}

/**
 * What must precede the separator so that it starts after an empty line:
 * nothing for an empty file or one ending in "\n\n", else one or two LFs.
 */
async function leadIn(fh: FileHandle, size: number): Promise<Buffer> {
  if (size === 0) return EMPTY;
  const buf = Buffer.alloc(2);
  const n = Math.min(2, size);
  await fh.read(buf, 0, n, size - n);
  const tail = buf.subarray(0, n);
  if (tail[n - 1] !== LF) return Buffer.from('\n\n');
  if (n === 2 && tail[0] === LF) return EMPTY;
  return n === 1 ? EMPTY : Buffer.from('\n');
}

/** Collects output pieces and writes them in large writes. */
class OutputBuffer {
  readonly #fh: FileHandle;
  #pieces: Buffer[] = [];
  #size = 0;

  constructor(fh: FileHandle) {
    this.#fh = fh;
  }

  add(...bufs: Buffer[]): void {
    for (const b of bufs) {
      if (b.length === 0) continue;
      this.#pieces.push(b);
      this.#size += b.length;
    }
  }

  async maybeFlush(): Promise<void> {
    if (this.#size >= WRITE_SIZE) await this.flush();
  }

  async flush(): Promise<void> {
    if (this.#size === 0) return;
    const buf = this.#pieces.length === 1 ? this.#pieces[0]! : Buffer.concat(this.#pieces, this.#size);
    this.#pieces = [];
    this.#size = 0;
    await writeFully(this.#fh, buf);
  }
}

async function writeFully(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    off += bytesWritten;
  }
}

/** The first part of the content: up to the blank line after the header (or HEAD_LIMIT octets, or the end). */
async function readHead(it: AsyncIterator<Buffer>): Promise<{ data: Buffer; done: boolean }> {
  const parts: Buffer[] = [];
  let size = 0;
  for (;;) {
    const r = await it.next();
    if (r.done === true) return { data: Buffer.concat(parts, size), done: true };
    parts.push(r.value);
    size += r.value.length;
    if (size >= HEAD_LIMIT) break;
    const joined = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
    if (joined[0] === LF || joined.indexOf('\n\n') !== -1) break;
  }
  return { data: Buffer.concat(parts, size), done: false };
}

async function* lfChunks(source: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const conv = new CrlfToLf();
  for await (const chunk of source) {
    const b = conv.push(chunk);
    if (b.length > 0) yield b;
  }
  const tail = conv.end();
  if (tail.length > 0) yield tail;
}

/** The spool file's content from its start. */
async function* readAll(fh: FileHandle): AsyncGenerator<Buffer> {
  let pos = 0;
  for (;;) {
    const buf = Buffer.allocUnsafe(WRITE_SIZE);
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) return;
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}
