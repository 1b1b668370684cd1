/**
 * Delivery into a Maildir (and its Maildir++ sub-folders), the way Poplar's
 * own store and Dovecot's deliver do it:
 *
 *   tmp/<unique>  written, fsynced, closed
 *   new/<unique>,S=<octets>,W=<crlf octets>   hard link (rename where links are not supported)
 *   tmp/<unique>  unlinked
 *   new/          fsynced, so the link itself survives a crash
 *
 * The message is visible (in new/) only once it is complete; a failure before
 * the link removes the tmp file, and a failure after it (the directory fsync)
 * removes the link again, so a rejected delivery leaves nothing in new/.
 *
 * Group commit (`fsync: 'group'`): `deliver` writes and links without any
 * fsync and remembers the file and its directories; `flush()` fsyncs every
 * pending file, then each directory once. The fetcher records UIDLs (and
 * sends DELE) only after `flush()` resolves, so a batch costs a handful of
 * directory fsyncs instead of two fsyncs per message.
 *
 * Line ends: the POP3 client hands over message content with CRLF line ends.
 * By default (`lineEnding: 'lf'`) CRLF is stored as LF, which is what Unix
 * mail readers and MDAs (mutt, Dovecot, procmail) write and expect in a
 * Maildir; Poplar's own server and Dovecot send either form as CRLF. With
 * `lineEnding: 'crlf'` the bytes are stored exactly as received. Either way
 * `,W=` is the size the message has on the wire (every line end as CRLF), so
 * a POP3 server serving this Maildir answers LIST without reading the file.
 */
import fsSync, { promises as fs, constants as C } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { getSystemErrorName } from 'node:util';
import { fsyncDir, fsyncFd } from '../../platform/fsync.js';
import { native } from '../../protocol/native.js';
import { uniqueName } from '../../store/maildir/names.js';
import { discardTmpSync, publish, publishSync, writeTmp, writeTmpSync } from '../../store/maildir/writer.js';
import { findInMaildirs } from '../reconcile.js';
import type { DeliveryInfo, PendingMessage, Sink } from './types.js';
import { chunksOf, CrlfToLf, crlfToLf, destroyOnAbort, SinkError } from './util.js';

export interface MaildirSinkOptions {
  /** The Maildir (the directory holding cur/, new/ and tmp/). */
  readonly path: string;
  /**
   * true (default): each delivery is durable when `deliver` resolves.
   * 'group': durable only after `flush()` (see above). false: never fsync
   * (tests, or a file system that is not worth it).
   */
  readonly fsync?: boolean | 'group';
  /** Create the Maildir (and missing parents) when it does not exist (default true). Sub-folders are always created on demand. */
  readonly create?: boolean;
  /** How line ends are stored: 'lf' (default) or 'crlf' (exactly as received). */
  readonly lineEnding?: 'lf' | 'crlf';
  /** Permission bits of new message files (default 0o600) ; directories get 0o700. */
  readonly fileMode?: number;
}

/** How many pending files `flush` fsyncs at once: the journal commits them together. */
const FLUSH_CONCURRENCY = 32;
/** Group mode keeps up to this many written files open until `flush` (so it need not open them again). */
const MAX_OPEN_PENDING = 128;
/** With the native module: how many thread-pool jobs `flush` splits the open descriptors into (the pool has 16 threads under bin/poplar). */
const FLUSH_CONCURRENCY_NATIVE = 16;
const NO_DIRS: readonly string[] = [];
/** writeMessage's results: descriptor, octets, CRLF octets (reused: read right after each call). */
const WRITE_OUT = new Float64Array(3);

/**
 * The directory of a Maildir++ folder name such as ".Lists.node" (a leading
 * dot is added when missing; "", "." and "INBOX" mean the Maildir itself).
 * Names that could leave the Maildir are refused.
 */
export function maildirFolderPath(root: string, folder: string | undefined): string {
  if (folder === undefined || folder === '' || folder === '.' || folder.toUpperCase() === 'INBOX') return root;
  const name = folder.startsWith('.') ? folder : `.${folder}`;
  // "." alone, "..", "/", NUL, and empty hierarchy levels (".a..b", ".a.") are not folder names.
  if (name === '..' || /[/\0]/.test(name) || name.length < 2 || name.slice(1).split('.').some((part) => part === '')) {
    throw new SinkError(`invalid Maildir++ folder name ${JSON.stringify(folder)}`, { temporary: false });
  }
  return path.join(root, name);
}

export class MaildirSink implements Sink {
  readonly #root: string;
  readonly #fsync: boolean | 'group';
  readonly #create: boolean;
  readonly #lf: boolean;
  readonly #mode: number;
  /** Folders known to exist with cur/, new/ and tmp/. */
  readonly #ready = new Set<string>();
  /** Group commit: linked files not yet fsynced (with their descriptor while it is kept open), and directories whose entries are not. */
  #pendingFiles = new Map<string, number | undefined>();
  #pendingDirs = new Set<string>();
  #closed = false;
  /** Directory fsyncs under way, and the one queued behind each (see #syncDir). */
  readonly #dirSyncs = new Map<string, { running: Promise<void>; queued: Promise<void> | undefined }>();

  constructor(opts: MaildirSinkOptions) {
    this.#root = path.resolve(opts.path);
    this.#fsync = opts.fsync ?? true;
    this.#create = opts.create ?? true;
    this.#lf = (opts.lineEnding ?? 'lf') === 'lf';
    this.#mode = opts.fileMode ?? 0o600;
  }

  /** One file per message: deliveries may overlap (the fetcher writes small messages in parallel). */
  readonly concurrentDeliveries = true;

  /** Files delivered in group mode and not yet made durable by `flush`. */
  get pending(): number {
    return this.#pendingFiles.size;
  }

  async deliver(message: Readable, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new SinkError('the Maildir sink is closed', { temporary: true });
    signal?.throwIfAborted();
    const dir = maildirFolderPath(this.#root, info.folder);
    const newDirs = await this.#ensureFolder(dir);
    // The file steps are the Maildir writer's (store/maildir/writer.ts); the fsync of new/ is #linked's.
    const stopWatching = destroyOnAbort(message, signal);
    let tmp;
    try {
      tmp = await writeTmp(dir, chunksOf(message), { mode: this.#mode, fsync: this.#fsync === true, convert: this.#lf ? new CrlfToLf() : null, signal });
    } finally {
      stopWatching();
    }
    // Last chance to give up cleanly; from the link on the message is delivered.
    const final = await publish(tmp, signal);
    await this.#linked(dir, final, undefined, newDirs);
  }

  /**
   * The message is in new/: in group mode remember it (and its descriptor, if
   * still open) for `flush`; with fsync on, make the directory entries
   * durable, or take the message back so that the rejection means "not delivered".
   */
  #linked(dir: string, final: string, fd: number | undefined, newDirs: readonly string[]): Promise<void> | undefined {
    if (this.#fsync === 'group') {
      this.#pendingFiles.set(final, fd);
      this.#pendingDirs.add(`${dir}/new`);
      for (const d of newDirs) this.#pendingDirs.add(d);
      return undefined;
    }
    if (this.#fsync !== true) return undefined;
    return this.#syncLinked(dir, final, newDirs);
  }

  async #syncLinked(dir: string, final: string, newDirs: readonly string[]): Promise<void> {
    try {
      await this.#syncDir(path.join(dir, 'new'));
      for (const d of newDirs) await fsyncDir(d);
    } catch (e) {
      await fs.unlink(final).catch(() => undefined);
      if (newDirs.length > 0) this.#ready.delete(dir);
      throw e;
    }
  }

  /**
   * A message already in memory: the same steps as `deliver` (tmp/, link
   * into new/, unlink; fsync as configured), but the file is created and
   * written with direct system calls instead of a stream, which is most of
   * the cost for small messages. In group mode the file stays open until
   * `flush` fsyncs it.
   */
  async deliverBuffer(message: Buffer, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    if (this.#closed) throw new SinkError('the Maildir sink is closed', { temporary: true });
    signal?.throwIfAborted();
    const dir = maildirFolderPath(this.#root, info.folder);
    const newDirs = this.#ready.has(dir) ? NO_DIRS : await this.#ensureFolder(dir);
    const write = native?.writeMessage;
    if (write !== undefined && this.#fsync !== true) {
      // One native call: the file written (CRLF stored as LF), linked into new/, tmp/ unlinked; nothing left on failure.
      signal?.throwIfAborted(); // last chance to give up cleanly; from the link on the message is delivered
      const base = uniqueName();
      const final = write(`${dir}/tmp/${base}`, `${dir}/new/${base}`, message, this.#lf, this.#mode, WRITE_OUT)!;
      let fd: number | undefined = WRITE_OUT[0]!;
      if (this.#fsync !== 'group' || this.#pendingFiles.size >= MAX_OPEN_PENDING) {
        fsSync.closeSync(fd);
        fd = undefined;
      }
      this.#linked(dir, final, fd, newDirs);
      return;
    }
    const tmp = writeTmpSync(dir, this.#lf ? crlfToLf(message) : message, this.#mode);
    let fd: number | undefined = tmp.fd;
    let final: string;
    try {
      if (this.#fsync === true) await fsyncFd(fd);
      if (this.#fsync !== 'group' || this.#pendingFiles.size >= MAX_OPEN_PENDING) {
        fsSync.closeSync(fd);
        fd = undefined;
      }
      signal?.throwIfAborted(); // last chance to give up cleanly; from the link on the message is delivered
      final = publishSync(tmp);
    } catch (e) {
      if (fd !== undefined) fsSync.closeSync(fd);
      discardTmpSync(tmp.tmp);
      throw e;
    }
    await this.#linked(dir, final, fd, newDirs);
  }

  /**
   * Make every message delivered since the last flush durable: fsync each
   * file, then each directory once. If anything fails, the pending messages
   * are removed again (best effort) and flush rejects, so that none of them
   * counts as delivered and a later fetch brings them without duplicates.
   */
  async flush(): Promise<void> {
    let pending = [...this.#pendingFiles];
    const dirs = [...this.#pendingDirs];
    this.#pendingFiles = new Map();
    this.#pendingDirs = new Set();
    if (pending.length === 0 && dirs.length === 0) return;
    const files = pending.map(([f]) => f);
    try {
      let next = 0;
      let failure: unknown;
      const syncClose = native?.fsyncClose;
      const batches: Promise<void>[] = [];
      if (syncClose !== undefined) {
        // Open descriptors are fsynced and closed in C, a few to a thread-pool job, the jobs running side by side.
        const open = pending.filter(([, fd]) => fd !== undefined);
        const jobs = Math.min(FLUSH_CONCURRENCY_NATIVE, open.length);
        for (let j = 0, at = 0; j < jobs; j++) {
          const part = open.slice(at, (at = Math.round(((j + 1) * open.length) / jobs)));
          try {
            batches.push(
              syncClose(Int32Array.from(part, ([, fd]) => fd!)).then((errs) => {
                const k = errs.findIndex((e) => e !== 0);
                if (k >= 0) failure ??= errnoError(errs[k]!, 'fsync', part[k]![0]);
              }),
            );
          } catch (e) {
            failure ??= e;
            for (const [, fd] of part) closeQuietly(fd!);
          }
        }
        pending = pending.filter(([, fd]) => fd === undefined);
      }
      const worker = async (): Promise<void> => {
        while (next < pending.length) {
          const [file, fd] = pending[next++]!;
          try {
            if (failure === undefined) await (fd !== undefined ? fsyncFd(fd) : fsyncFile(file));
          } catch (e) {
            failure ??= e;
          } finally {
            // Closing a file already synced does no I/O: done here rather than as one more thread-pool job per message.
            if (fd !== undefined) closeQuietly(fd);
          }
        }
      };
      await Promise.all([...batches, ...Array.from({ length: Math.min(FLUSH_CONCURRENCY, pending.length) }, worker)]);
      if (failure !== undefined) throw failure;
      // Deepest first: new/ holds the file names, the folder holds new/, the root holds the folder.
      dirs.sort((a, b) => b.length - a.length);
      for (const d of dirs) await fsyncDir(d);
    } catch (e) {
      await Promise.all(files.map((f) => fs.unlink(f).catch(() => undefined)));
      for (const d of dirs) await fsyncDir(d).catch(() => undefined);
      this.#ready.clear();
      throw e;
    }
  }

  /**
   * The crash probe: which pending messages are already in one of their
   * folders (a file no older than the intent with the same content; see
   * reconcile.ts). A folder name that is not valid here cannot hold anything.
   */
  async findDelivered(pending: readonly PendingMessage[]): Promise<Set<string>> {
    return findInMaildirs(
      pending.map((p) => ({
        uidl: p.uidl,
        since: p.since,
        content: p.content,
        dirs: p.folders.flatMap((f) => {
          try {
            return [maildirFolderPath(this.#root, f)];
          } catch {
            return [];
          }
        }),
      })),
    );
  }

  /** Flushes what group mode still holds (so nothing delivered stays half-durable), then refuses further deliveries. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.flush();
  }

  /**
   * fsync a directory for a caller whose entry is already in it. Parallel
   * deliveries share fsyncs: a request that arrives while one is running may
   * not be covered by it (its link may have come after the fsync began), so
   * it waits for the next one, which every such request shares.
   */
  #syncDir(dir: string): Promise<void> {
    const cur = this.#dirSyncs.get(dir);
    if (cur === undefined) {
      const state = { running: Promise.resolve(), queued: undefined as Promise<void> | undefined };
      state.running = fsyncDir(dir).finally(() => {
        if (state.queued === undefined) this.#dirSyncs.delete(dir);
      });
      this.#dirSyncs.set(dir, state);
      return state.running;
    }
    cur.queued ??= cur.running
      .catch(() => undefined)
      .then(() => {
        const next = fsyncDir(dir).finally(() => {
          if (this.#dirSyncs.get(dir) === cur && cur.running === next) this.#dirSyncs.delete(dir);
        });
        cur.running = next;
        cur.queued = undefined;
        return next;
      });
    return cur.queued;
  }

  /**
   * Make sure `dir` is a Maildir (a Maildir++ folder, with its `maildirfolder`
   * marker, when it is not the root). Returns the directories whose entries
   * changed and need an fsync for the new parts to be durable.
   */
  async #ensureFolder(dir: string): Promise<string[]> {
    if (this.#ready.has(dir)) return [];
    const changed: string[] = [];
    const isRoot = dir === this.#root;
    if (!isRoot) await this.#ensureFolder(this.#root).then((d) => changed.push(...d));
    else if (!this.#create) {
      const st = await fs.stat(dir).catch(() => null);
      if (st === null || !st.isDirectory()) {
        throw new SinkError(`Maildir ${dir} does not exist (and create is off)`, { temporary: true });
      }
    }
    // mkdir without recursion tells exactly which levels are new.
    changed.push(...(await mkdirTracked(dir, isRoot)));
    for (const sub of ['cur', 'new', 'tmp']) changed.push(...(await mkdirTracked(path.join(dir, sub), false)));
    if (!isRoot) {
      try {
        const fh = await fs.open(path.join(dir, 'maildirfolder'), C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
        await fh.close();
        changed.push(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    this.#ready.add(dir);
    return [...new Set(changed)];
  }
}

/**
 * mkdir that reports the directories whose entries it changed (the parent of
 * each directory it created); `parents` creates missing ancestors too.
 */
async function mkdirTracked(dir: string, parents: boolean): Promise<string[]> {
  try {
    if (parents) {
      const first = await fs.mkdir(dir, { recursive: true, mode: 0o700 });
      if (first === undefined) return [];
      const out: string[] = [];
      for (let d = dir; ; d = path.dirname(d)) {
        out.push(path.dirname(d));
        if (d === first || path.dirname(d) === d) break;
      }
      return out;
    }
    await fs.mkdir(dir, { mode: 0o700 });
    return [path.dirname(dir)];
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return [];
    throw e;
  }
}

/** An error like Node's for a failed system call. */
function errnoError(errno: number, syscall: string, file: string): NodeJS.ErrnoException {
  const code = getSystemErrorName(-errno);
  return Object.assign(new Error(`${code}: ${syscall} '${file}'`), { code, errno: -errno, syscall, path: file });
}

function closeQuietly(fd: number): void {
  try {
    fsSync.closeSync(fd);
  } catch {
    // the error that matters is the fsync's
  }
}

async function fsyncFile(file: string): Promise<void> {
  const fh = await fs.open(file, C.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
