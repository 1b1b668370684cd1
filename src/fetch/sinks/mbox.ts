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
 * whole mbox AND a dotlock `<mbox>.lock` (created exclusively, by a hard link
 * from a file already holding "<pid> <host name>"; one older than
 * `dotlockStaleSeconds` is taken for left over by a crash and removed, and so
 * is one of ours whose process, on this host, no longer exists; ours is
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
 *
 * After a crash (SIGKILL, power loss) the fetcher asks `findDelivered` which
 * of the deliveries it had started are in the mbox. Under the same locks the
 * whole mbox is read through and split at its From_ lines (a line starting
 * "From " at the start of the file or after an empty line; in the content
 * mboxrd quotes all such lines), and what follows a From_ line is compared
 * with each pending message as `#append` would write it (LF line ends,
 * mboxrd quoting, a final LF, the blank line); only messages of a matching
 * length are read again to be compared. The From_ line itself is not
 * compared (its date is the delivery time). Identical messages match as a
 * multiset. A kill in the middle of an append leaves a torn last message;
 * when the mbox ends with a message that is a strict prefix of a pending
 * message's rendering (From_ line included, but for its date), and nothing
 * follows it, the file is cut back to the start of its From_ line, so the
 * message delivered again is the only copy. A torn message that other mail
 * follows is left alone. The probe also removes the file a process killed
 * while creating the dotlock left behind. Its cost is one read of the whole
 * mbox (and of the messages of a matching length), paid only after a crash.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { fsyncDir } from '../../platform/fsync.js';
import { LOCK_FORMATS, LockBusyError, LockFile, removeDeadLinkTemps } from '../../platform/lock-file.js';
import { tryLockExclusive, unlock } from './fcntl-lock.js';
import type { DeliveryInfo, PendingMessage, Sink } from './types.js';
import { chunksOf, destroyOnAbort, digestOf, EMPTY, fileRange, KeyedMutex, lfOf, SinkError, toError } from './util.js';

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
/** The crash probe reads the mbox in pieces of this size. */
const SCAN_SIZE = 1024 * 1024;
/** Length of an asctime() date on the From_ line ("Thu Nov  6 09:05:01 2025"). */
const DATE_LENGTH = 24;

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
    const key = await this.#queueKey();
    if (!this.#spool) {
      const stop = destroyOnAbort(message, signal);
      try {
        return await inProcess.run(key, () => this.#append(lfOf(chunksOf(message)), signal));
      } finally {
        stop();
      }
    }
    const spool = await this.#spoolMessage(message, signal);
    try {
      await inProcess.run(key, () => this.#append(readAll(spool), signal));
    } finally {
      await spool.close().catch(() => undefined);
    }
  }

  /**
   * The crash probe (see the header): which pending messages the mbox holds,
   * after cutting off a torn last message that one of them explains. Costs a
   * read of the whole mbox under its locks; the fetcher asks only after a crash.
   */
  async findDelivered(pending: readonly PendingMessage[]): Promise<Set<string>> {
    if (this.#closed) throw new SinkError('the mbox sink is closed', { temporary: true });
    if (pending.length === 0) return new Set();
    return inProcess.run(await this.#queueKey(), () => this.#probe(pending));
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** One queue per real file: two names of one mbox must not bypass it (see fcntl-lock.ts). */
  async #queueKey(): Promise<string> {
    this.#key ??= await fs.realpath(this.#path).catch(() => this.#path);
    return this.#key;
  }

  /** Take the fcntl lock and the dotlock (as configured) on the open mbox; resolves to their release. */
  async #lock(fh: FileHandle, signal: AbortSignal | undefined): Promise<() => Promise<void>> {
    const deadline = Date.now() + this.#lockTimeoutMs;
    if (this.#fcntl) await this.#lockFcntl(fh, deadline, signal);
    let dotlock: LockFile | undefined;
    try {
      if (this.#dotlock) dotlock = await acquireDotlock(`${this.#path}.lock`, deadline, this.#staleMs, signal);
    } catch (e) {
      if (this.#fcntl) await unlock(fh.fd).catch(() => undefined);
      throw e;
    }
    return async () => {
      await dotlock?.release();
      // Closing the descriptor drops the fcntl lock too; unlock first so the order is explicit.
      if (this.#fcntl) await unlock(fh.fd).catch(() => undefined);
    };
  }

  async #probe(pending: readonly PendingMessage[]): Promise<Set<string>> {
    const found = new Set<string>();
    let fh: FileHandle;
    try {
      fh = await fs.open(this.#path, C.O_RDWR | C.O_NOCTTY);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return found; // nothing was ever appended
      throw e;
    }
    let release: (() => Promise<void>) | undefined;
    try {
      if (!(await fh.stat()).isFile()) throw new SinkError(`${this.#path} is not a regular file`, { temporary: false });
      release = await this.#lock(fh, undefined);
      if (this.#dotlock) await removeDeadLinkTemps(`${this.#path}.lock`);
      let size = (await fh.stat()).size;
      const messages = await scanMbox(fh, size);
      // Each pending message is read as a stream (it may be of any size): its From_ prefix, and the length and digest of what would follow its From_ line.
      const wanted: Wanted[] = [];
      for (const p of pending) {
        const head = await readHead(lfOf(p.content.chunks())[Symbol.asyncIterator]());
        const body = await digestOf(renderedMboxrd(p.content));
        wanted.push({ p, fromPrefix: Buffer.from(`From ${senderFromHead(head.data)} `, 'latin1'), bodyLength: body.length, bodyKey: body.key });
      }

      // A torn last message: cut it off, so that delivering it again leaves one whole copy.
      const last = messages.at(-1);
      const longest = wanted.reduce((n, w) => Math.max(n, w.fromPrefix.length + DATE_LENGTH + 1 + w.bodyLength), 0);
      if (last !== undefined && size - last.from < longest) {
        let torn = false;
        for (const w of wanted) if (!torn) torn = await isTornCopy(fh, last.from, size - last.from, w);
        if (torn) {
          await fh.truncate(last.from);
          if (this.#fsync) await fh.sync();
          messages.pop();
          size = last.from;
        }
      }

      // Whole messages of a length some pending message has, by digest of what follows the From_ line.
      const lengths = new Set(wanted.map((w) => w.bodyLength));
      const stored = new Map<string, number>();
      for (const [i, m] of messages.entries()) {
        const end = messages[i + 1]?.from ?? size;
        if (m.body < 0 || !lengths.has(end - m.body)) continue;
        const { key } = await digestOf(fileRange(fh, m.body, end - m.body));
        stored.set(key, (stored.get(key) ?? 0) + 1);
      }
      for (const w of wanted) {
        const key = w.bodyKey;
        const n = stored.get(key) ?? 0;
        if (n > 0) {
          stored.set(key, n - 1); // claimed: identical copies match one stored message each
          found.add(w.p.uidl);
        }
      }
      return found;
    } finally {
      await release?.();
      await fh.close().catch(() => undefined);
    }
  }

  /** Copy the message, with LF line ends, to a fresh file that has no name. */
  async #spoolMessage(message: Readable, signal: AbortSignal | undefined): Promise<FileHandle> {
    const name = path.join(this.#spoolDir, `poplar-mbox-${process.pid}-${randomBytes(8).toString('hex')}`);
    const fh = await fs.open(name, C.O_RDWR | C.O_CREAT | C.O_EXCL, 0o600);
    await fs.unlink(name).catch(() => undefined);
    const stop = destroyOnAbort(message, signal);
    try {
      for await (const chunk of lfOf(chunksOf(message))) {
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
    let release: (() => Promise<void>) | undefined;
    let origSize = -1;
    let failure: unknown;
    try {
      if (!(await fh.stat()).isFile()) throw new SinkError(`${this.#path} is not a regular file`, { temporary: false });
      release = await this.#lock(fh, signal);

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
      await release?.();
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

/**
 * The dotlock `<mbox>.lock`, "<pid> <host>\n", made as MTAs make it (linked
 * into place from a file already holding its content); a lock file, see
 * platform/lock-file.ts for when one is stale and how it is kept fresh.
 */
async function acquireDotlock(file: string, deadline: number, staleMs: number, signal: AbortSignal | undefined): Promise<LockFile> {
  try {
    return await LockFile.acquire(file, { format: LOCK_FORMATS.mbox, mode: 0o644, staleMs, waitMs: Math.max(0, deadline - Date.now()), signal });
  } catch (e) {
    if (e instanceof LockBusyError) throw new SinkError(`timed out waiting for the dotlock ${file}`, { temporary: true, cause: e });
    if ((e as Error).name === 'AbortError') throw e;
    throw new SinkError(`cannot create the dotlock ${file}: ${(e as Error).message}`, { temporary: true, cause: e });
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

/**
 * What `#append` writes after the From_ line for a message with LF line ends
 * `lf`: the mboxrd-quoted content, a final LF when it lacks one, and the
 * blank line that ends every message.
 */
export function renderMboxrd(lf: Buffer): Buffer {
  const q = new MboxrdQuoter();
  return Buffer.concat([...q.push(lf), ...q.end(), Buffer.from('\n')]);
}

/** A message in an mbox: where its From_ line starts, and where what follows that line starts (-1: the line has no end). */
interface MboxEntry {
  readonly from: number;
  readonly body: number;
}

/**
 * The messages of the first `size` octets of an mbox, read in pieces: each
 * starts at a line beginning "From " that is the first line of the file or
 * follows an empty line. A last line without its line end that is no more
 * than the start of such a line ("Fro") counts as one too: an append that
 * stopped there.
 */
async function scanMbox(fh: FileHandle, size: number): Promise<MboxEntry[]> {
  const out: MboxEntry[] = [];
  const buf = Buffer.allocUnsafe(Math.min(SCAN_SIZE, Math.max(size, 1)));
  let lineStart = 0; // file offset of the line being read
  let head = ''; // its first (up to) five octets
  let prevEmpty = true; // the line before it was empty (or it is the first)
  for (let pos = 0; pos < size; ) {
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
    if (bytesRead === 0) break;
    for (let i = 0; i < bytesRead; ) {
      const nl = buf.indexOf(LF, i);
      const end = nl === -1 || nl >= bytesRead ? bytesRead : nl;
      if (head.length < FROM_.length) head += buf.toString('latin1', i, Math.min(end, i + FROM_.length - head.length));
      if (end === bytesRead) break;
      if (prevEmpty && head === 'From ') out.push({ from: lineStart, body: pos + end + 1 });
      prevEmpty = pos + end === lineStart;
      lineStart = pos + end + 1;
      head = '';
      i = end + 1;
    }
    pos += bytesRead;
  }
  // A From_ line cut off by the end of the file (a torn append), even within its first five octets.
  if (lineStart < size && prevEmpty && 'From '.startsWith(head)) out.push({ from: lineStart, body: -1 });
  return out;
}

/** A pending message as the probe compares it: From_ prefix, and what follows the From_ line (length, SHA-256). */
interface Wanted {
  readonly p: PendingMessage;
  readonly fromPrefix: Buffer;
  readonly bodyLength: number;
  readonly bodyKey: string;
}

/** What `#append` writes after the From_ line for `content` (renderMboxrd of its LF form), as a stream. */
async function* renderedMboxrd(content: PendingMessage['content']): AsyncGenerator<Buffer> {
  const q = new MboxrdQuoter();
  for await (const c of lfOf(content.chunks())) yield* q.push(c);
  yield* q.end();
  yield Buffer.from('\n');
}

/** The first `n` octets of a stream of pieces. */
async function* firstOctets(chunks: AsyncIterable<Buffer>, n: number): AsyncGenerator<Buffer> {
  if (n <= 0) return;
  for await (const c of chunks) {
    if (c.length >= n) {
      yield c.subarray(0, n);
      return;
    }
    yield c;
    n -= c.length;
  }
}

/**
 * Whether the `tailLength` octets at `from` (a From_ line to the end of the
 * file) are a strict prefix of "From_ line + body" for `w`, whose From_ line
 * starts with `fromPrefix` ("From <sender> "): every octet equal except the
 * date's, which may be anything but a line end. The body part is compared by
 * digest, reading both sides in pieces.
 */
async function isTornCopy(fh: FileHandle, from: number, tailLength: number, w: Wanted): Promise<boolean> {
  const { fromPrefix } = w;
  const dateEnd = fromPrefix.length + DATE_LENGTH;
  if (tailLength >= dateEnd + 1 + w.bodyLength) return false; // whole, or longer: not a torn copy
  const tail = await readAt(fh, from, Math.min(tailLength, dateEnd + 1));
  const n = Math.min(tail.length, fromPrefix.length);
  if (!tail.subarray(0, n).equals(fromPrefix.subarray(0, n))) return false;
  if (tail.length <= fromPrefix.length) return true;
  if (tail.subarray(fromPrefix.length, Math.min(tail.length, dateEnd)).includes(LF)) return false;
  if (tail.length <= dateEnd) return true;
  if (tail[dateEnd] !== LF) return false;
  const restLength = tailLength - dateEnd - 1;
  const onDisk = await digestOf(fileRange(fh, from + dateEnd + 1, restLength));
  const expected = await digestOf(firstOctets(renderedMboxrd(w.p.content), restLength));
  return onDisk.key === expected.key;
}

async function readAt(fh: FileHandle, pos: number, length: number): Promise<Buffer> {
  const buf = Buffer.allocUnsafe(length);
  let off = 0;
  while (off < length) {
    const { bytesRead } = await fh.read(buf, off, length - off, pos + off);
    if (bytesRead === 0) throw new SinkError('mbox shrank while it was being read', { temporary: true });
    off += bytesRead;
  }
  return buf;
}

