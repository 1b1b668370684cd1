/**
 * An open maildrop (a POP3 session's view after login): reading messages
 * through the open cur/ directory, and at UPDATE deleting, flagging Seen and
 * expiring (commit).
 */
import { promises as fs, constants as C } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { MessageUnavailable, TemporaryFailure } from '../../errors.js';
import { fsyncDir } from '../../platform/fsync.js';
import type { CommitOptions, Maildrop, MessageInfo } from '../types.js';
import type { Entry } from './entry.js';
import { PROC_FD } from './listing.js';
import type { SessionLock } from './locks.js';
import { baseName } from './names.js';
import { openRegular } from './safe-fs.js';

/** What a maildrop needs of the store that opened it. */
export interface MaildropOwner {
  now(): number;
  readonly fsyncEnabled: boolean;
  unlock(dir: string, lock: SessionLock): void;
}

/** The Maildir info flags after `:2,`, kept in ASCII order as the Maildir format asks. */
function hasFlag(filename: string, flag: string): boolean {
  const i = filename.indexOf(':2,');
  return i !== -1 && filename.indexOf(flag, i + 3) !== -1;
}

function withFlag(filename: string, flag: string): string {
  const i = filename.indexOf(':2,');
  if (i === -1) return filename.includes(':') ? filename : `${filename}:2,${flag}`;
  const flags = filename.slice(i + 3);
  if (flags.includes(flag)) return filename;
  return filename.slice(0, i + 3) + [...flags, flag].sort().join('');
}

export class MaildirMaildrop implements Maildrop {
  readonly messages: readonly MessageInfo[];
  readonly #store: MaildropOwner;
  readonly #dir: string;
  readonly #entries: readonly Entry[];
  /** Current file names of messages found renamed (flags changed) in this session, by index. */
  readonly #names = new Map<number, string>();
  readonly #lock: SessionLock;
  /** cur/, opened (without following a link) at the first RETR, TOP or UPDATE, until release. */
  #cur: Promise<FileHandle> | undefined;
  #released = false;

  constructor(store: MaildropOwner, dir: string, entries: readonly Entry[], lock: SessionLock) {
    this.#store = store;
    this.#dir = dir;
    this.#entries = entries;
    this.#lock = lock;
    this.messages = entries; // an Entry is a MessageInfo (uidl, size), and never changes
  }

  #filename(index: number): string {
    return this.#names.get(index) ?? this.#entries[index]!.filename;
  }

  /**
   * The path of cur/ for message files. Through the open directory
   * (/proc/self/fd), so that a cur/ replaced by a link after login (the
   * maildrop's owner can do that) never leads anywhere else: every open,
   * unlink and rename of a message happens in the directory the session
   * checked. Names joined to it are plain file names (the scan sees to that).
   */
  async #curPath(): Promise<string> {
    const plain = path.join(this.#dir, 'cur');
    if (!PROC_FD) return plain;
    this.#cur ??= fs.open(plain, C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
    try {
      return `/proc/self/fd/${(await this.#cur).fd}`;
    } catch (e) {
      this.#cur = undefined;
      throw new TemporaryFailure('The maildrop cannot be read, try again later.', { cause: e });
    }
  }

  /** Another process may have renamed the file (flags changed); find it again by its base name. */
  async #relocate(index: number): Promise<boolean> {
    const basename = this.#entries[index]!.basename;
    const files = await fs.readdir(await this.#curPath());
    for (const f of files) {
      if (baseName(f) === basename) {
        this.#names.set(index, f);
        return true;
      }
    }
    return false;
  }

  async read(index: number, signal?: AbortSignal): Promise<Readable> {
    const fh = await this.openFile(index);
    return fh.createReadStream({ highWaterMark: 256 * 1024, ...(signal ? { signal } : {}) });
  }

  /**
   * The message's file, opened with O_NOFOLLOW and O_NONBLOCK and checked to
   * be a regular file: a link, a directory or a FIFO put in its place after
   * the scan is refused here, before any +OK.
   */
  async openFile(index: number): Promise<fs.FileHandle> {
    if (this.#entries[index] === undefined) throw new RangeError(`no message ${index}`);
    const cur = await this.#curPath();
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        return await openRegular(path.join(cur, this.#filename(index)));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== 'ENOENT') throw new MessageUnavailable('Message cannot be read.', { cause: err });
        if (attempt > 0 || !(await this.#relocate(index))) break;
      }
    }
    throw new MessageUnavailable('Message was removed by another process');
  }

  async commit(deleted: readonly number[], options: CommitOptions = {}): Promise<void> {
    // Nothing to remove, flag or expire (a session that only looked): no directory to open.
    if (deleted.length === 0 && (options.retrieved?.length ?? 0) === 0 && options.expireDays === undefined) return;
    const cur = await this.#curPath();
    const n = this.#entries.length;
    let failed = 0;
    for (const i of deleted) {
      if (i >= 0 && i < n && !(await this.#unlink(cur, i))) failed++;
    }
    const gone = new Set(deleted);
    // Seen flag for what was retrieved (as Dovecot does); the rename's ctime then dates the first retrieval.
    for (const i of options.retrieved ?? []) {
      if (i < 0 || i >= n || gone.has(i)) continue;
      const filename = this.#filename(i);
      const flagged = withFlag(filename, 'S');
      if (flagged === filename) continue;
      try {
        await fs.rename(path.join(cur, filename), path.join(cur, flagged));
        this.#names.set(i, flagged);
      } catch {
        // Renamed or removed by another process: the flag is a hint, not a promise.
      }
    }
    let changed = deleted.length > 0;
    if (options.expireDays !== undefined) {
      const limit = this.#store.now() - options.expireDays * 86_400_000;
      const fresh = new Set(options.retrieved ?? []);
      for (let i = 0; i < n; i++) {
        const filename = this.#filename(i);
        if (gone.has(i) || fresh.has(i) || !hasFlag(filename, 'S')) continue;
        const st = await fs.lstat(path.join(cur, filename)).catch(() => null);
        if (st !== null && st.ctimeMs < limit && (await this.#unlink(cur, i))) changed = true;
      }
    }
    if (changed && this.#store.fsyncEnabled) await fsyncDir(cur);
    if (failed > 0) throw new TemporaryFailure(`${failed} of ${deleted.length} messages could not be deleted`);
  }

  /** Unlink message `index` from `cur`; true when it is gone (also when someone else removed it first). */
  async #unlink(cur: string, index: number): Promise<boolean> {
    try {
      await fs.unlink(path.join(cur, this.#filename(index)));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return false;
    }
    // Renamed by another process (flags changed)? Find it by its base name.
    if (!(await this.#relocate(index).catch(() => false))) return true;
    try {
      await fs.unlink(path.join(cur, this.#filename(index)));
      return true;
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ENOENT';
    }
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    const cur = this.#cur;
    this.#cur = undefined;
    if (cur !== undefined) await cur.then((fh) => fh.close()).catch(() => undefined);
    this.#store.unlock(this.#dir, this.#lock);
  }
}
