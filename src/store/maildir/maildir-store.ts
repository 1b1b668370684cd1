import { promises as fs, constants as C, existsSync, lstatSync, realpathSync, type Dirent, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Principal } from '../../auth/types.js';
import { InUseError, MessageUnavailable, PermanentFailure, TemporaryFailure } from '../../errors.js';
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { native } from '../../protocol/native.js';
import type { Logger } from '../../observability/log.js';
import type { CommitOptions, MailStore, Maildrop, MessageInfo } from '../types.js';
import { fsyncDir } from '../../platform/fsync.js';
import { SessionLock, UidlistLock } from './locks.js';
import { publish, writeTmp } from './writer.js';
import { baseName, compareMaildirNames, sizeFromName, uniqueName } from './names.js';
import { extValue, formatUidlist, parseUidlist, setExt, UidlistFormatError, type Uidlist, type UidlistRecord } from './uidlist.js';
import { createExclusive, isPlainBaseName, isPlainFileName, openRegular, parseSize, readRegular, writeExclusive } from './safe-fs.js';

export interface MaildirStoreOptions {
  /** Maildrop of user U is ROOT/U unless the user database names one. */
  root: string;
  logger: Logger;
  /** fsync files and directories where durability needs it (default true). */
  fsync?: boolean;
  uidlistStaleSeconds?: number;
  /** Clock for EXPIRE (tests); default Date.now. */
  now?: () => number;
  /** Save scans of big maildrops in the maildrop for other processes (default true). */
  scanFiles?: boolean;
  /**
   * Open a maildrop directory that is a symbolic link leading out of the
   * Maildir root, or (for a path from the user database) one reached through a
   * symbolic link anywhere on its path (default false: the login is refused).
   */
  allowSymlinkedMaildrops?: boolean;
}

const SESSION_LOCK = 'poplar-pop3.lock';

/**
 * Remembered scans, by maildrop directory (see #scan). `unconfirmed` marks a
 * scan taken while the maildrop was still changing (typically by the scan's
 * own uidlist update): it is trusted only after a listing, taken once the
 * quiet time has passed, shows exactly its files.
 */
interface RememberedScan {
  key: string;
  entries: Entry[];
  /** newestDir and quietMs of the key it was taken under: the listing must come after both. */
  unconfirmed?: { newestDir: number; quietMs: number };
}
const SCAN_CACHE = new Map<string, RememberedScan>();
/** /proc/self/fd/N names the directory open as N, whatever has since been renamed or linked in its place. */
const PROC_FD = existsSync('/proc/self/fd');
const SCAN_CACHE_MAX = 2000;
/**
 * A directory must have been unchanged this long before a scan of it is
 * remembered: longer than the file system's timestamp granularity, so that a
 * change right after the scan can never carry the same time as the scan saw.
 * Whole-second timestamps (some network and older file systems) get 2 s;
 * finer ones (ext4, XFS, Btrfs, tmpfs: the kernel's clock tick) get 100 ms.
 */
const QUIET_MS = 2000;
const QUIET_FINE_MS = 100;

interface ScanKey {
  key: string;
  /** The latest change time of cur/ and new/. */
  newestDir: number;
  /** The uidlist's latest change time (0 when there is none). */
  newestUidlist: number;
  /** The uidlist's part of the key. */
  ukey: string;
  quietMs: number;
}

function uidlistKey(u: Stats | null): string {
  return u === null ? '-' : `${u.ino}:${u.size}:${u.mtimeMs}:${u.ctimeMs}`;
}

/** Three stat calls, synchronous: they run on every login and cost microseconds. */
function statScanKey(dir: string): ScanKey | null {
  try {
    // lstat: cur/ or new/ as a symbolic link is no maildrop (ensureMaildir refuses it).
    const c = lstatSync(path.join(dir, 'cur'));
    const n = lstatSync(path.join(dir, 'new'));
    if (!c.isDirectory() || !n.isDirectory()) return null;
    const u = lstatSync(path.join(dir, 'dovecot-uidlist'), { throwIfNoEntry: false }) ?? null;
    const ukey = uidlistKey(u);
    const dirTimes = [c.mtimeMs, c.ctimeMs, n.mtimeMs, n.ctimeMs];
    const times = [...dirTimes, u?.mtimeMs ?? 0, u?.ctimeMs ?? 0];
    return {
      key: `${c.ino}:${c.mtimeMs}:${c.ctimeMs}|${n.ino}:${n.mtimeMs}:${n.ctimeMs}|${ukey}`,
      newestDir: Math.max(...dirTimes),
      newestUidlist: Math.max(u?.mtimeMs ?? 0, u?.ctimeMs ?? 0),
      ukey,
      quietMs: times.some((t) => t % 1000 !== 0) ? QUIET_FINE_MS : QUIET_MS,
    };
  } catch {
    return null;
  }
}

/**
 * A remembered scan of a big maildrop is also saved in the maildrop, as
 * SCAN_FILE, under the same key (the times of cur/, new/ and the uidlist):
 * the other worker processes, and this server after a restart, read it
 * instead of listing the directory and matching the uidlist again. Small
 * maildrops are scanned faster than the file would be read.
 *
 *   poplar-scan 2 <number of messages> <key>
 *   <uid> <size> <order or -> <uidl> <file name>      one line per message, in POP3 order
 *
 * The key is no secret (anyone who can list the maildrop can stat it), so
 * the file is trusted only when this server's user owns it and nobody else
 * may write it, and even then every field is checked: a file name must be a
 * plain name of a file in cur/, and is only ever joined to cur/ (never a
 * path); sizes and UIDs are safe integers; no name, base name or UID twice.
 * Anything else is ignored, logged and removed, and the maildrop scanned.
 */
const SCAN_FILE = 'poplar-scan.cache';
const SCAN_FILE_MIN = 1000;
const SCAN_FILE_HEADER = 'poplar-scan 2 ';
const SCAN_LINE = /^([1-9][0-9]{0,14}) ([0-9]{1,15}) (-|[0-9]{1,15}) ([\x21-\x7e]{1,70}) ([^ ]+)$/;
/** RFC 1939 §7: a unique-id is 1 to 70 characters from 0x21 to 0x7E. */
const UIDL = /^[\x21-\x7e]{1,70}$/;

/** @internal Tests: forget the scans remembered in memory (as a fresh process would). */
export function forgetRememberedScans(): void {
  SCAN_CACHE.clear();
}

/**
 * @internal Tests: drop the last message from the remembered scan of `dir`, as
 * if the scan had missed a file that arrived within the same timestamp tick.
 * Returns whether that scan is still unconfirmed.
 */
export function forgetLastRememberedMessage(dir: string): boolean | undefined {
  const r = SCAN_CACHE.get(dir);
  r?.entries.pop();
  return r === undefined ? undefined : r.unconfirmed !== undefined;
}

/** The saved scan if it is there under `key` (null: none, or an older one), or why it is not to be trusted. */
async function readScanFile(dir: string, key: string): Promise<Entry[] | null | { untrusted: string }> {
  let text: string;
  let st: Stats;
  try {
    ({ text, stat: st } = await readRegular(path.join(dir, SCAN_FILE)));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? null : { untrusted: `cannot be read as a regular file (${code ?? String(e)})` };
  }
  const euid = process.geteuid?.();
  if ((euid !== undefined && st.uid !== euid) || (st.mode & 0o022) !== 0) return { untrusted: `owned by uid ${st.uid} with mode ${(st.mode & 0o777).toString(8)}, not written by this server` };
  const nl = text.indexOf('\n');
  if (nl < 0 || !text.startsWith(SCAN_FILE_HEADER)) return null; // another version's, or torn: scan instead
  const header = text.slice(SCAN_FILE_HEADER.length, nl);
  const sp = header.indexOf(' ');
  if (header.slice(sp + 1) !== key) return null; // the maildrop changed since: scan instead
  const count = parseSize(header.slice(0, sp));
  if (count === undefined || !text.endsWith('\n')) return { untrusted: 'damaged header or last line' };
  const entries: Entry[] = [];
  const uids = new Set<number>();
  const names = new Set<string>();
  const bases = new Set<string>();
  for (let pos = nl + 1; pos < text.length; ) {
    const end = text.indexOf('\n', pos);
    const line = text.slice(pos, end);
    pos = end + 1;
    const m = SCAN_LINE.exec(line);
    if (m === null) return { untrusted: `line ${entries.length + 2} is malformed` };
    const uid = Number(m[1]);
    const filename = m[5]!;
    const basename = baseName(filename);
    if (!isPlainFileName(filename) || !isPlainBaseName(basename)) return { untrusted: `line ${entries.length + 2} names no file of cur/` };
    if (uids.has(uid) || names.has(filename) || bases.has(basename)) return { untrusted: `line ${entries.length + 2} repeats a message` };
    uids.add(uid);
    names.add(filename);
    bases.add(basename);
    const order = m[3]!;
    entries.push({ uid, size: Number(m[2]), basename, filename, uidl: m[4]!, order: order === '-' ? undefined : Number(order) });
  }
  if (entries.length !== count) return { untrusted: `${entries.length} messages where the header says ${count}` };
  return entries;
}

async function writeScanFile(dir: string, key: string, entries: readonly Entry[]): Promise<void> {
  let text = `${SCAN_FILE_HEADER}${entries.length} ${key}\n`;
  for (const e of entries) text += `${e.uid} ${e.size} ${e.order ?? '-'} ${e.uidl} ${e.filename}\n`;
  // An unpredictable name, created exclusively: nothing planted in the maildrop is written through.
  const tmp = path.join(dir, `${SCAN_FILE}.${process.pid}.${randomBytes(8).toString('hex')}.tmp`);
  // No fsync: a cache. A torn or stale file fails the key or the parse and is ignored.
  await writeExclusive(tmp, text, { mode: 0o600 });
  try {
    await fs.rename(tmp, path.join(dir, SCAN_FILE));
  } catch (e) {
    await fs.unlink(tmp).catch(() => undefined);
    throw e;
  }
}

/** new/ has no message and cur/ holds exactly the messages of `entries` (names with flags included). */
async function listingMatches(dir: string, entries: readonly Entry[]): Promise<boolean> {
  try {
    const opts = { withFileTypes: true } as const;
    const [cur, fresh] = await Promise.all([fs.readdir(path.join(dir, 'cur'), opts), fs.readdir(path.join(dir, 'new'), opts)]);
    if (fresh.some(isMessage)) return false;
    const names = new Set(cur.filter(isMessage).map((d) => d.name));
    if (names.size !== entries.length) return false;
    for (const e of entries) if (!names.has(e.filename)) return false;
    return true;
  } catch {
    return false;
  }
}

/**
 * A message file in cur/ or new/: a regular file with a plain name (d_type
 * from the listing itself, so no system call per file). Hidden files are
 * no messages; anything else (a symbolic link, a directory, a FIFO, a device,
 * a name no uidlist could hold) is skipped, and reported by messageNames.
 */
function isMessage(d: Dirent): boolean {
  return d.name[0] !== '.' && d.isFile() && isPlainFileName(d.name) && isPlainBaseName(baseName(d.name));
}

function direntKind(d: Dirent): string {
  if (d.isSymbolicLink()) return 'symbolic link';
  if (d.isDirectory()) return 'directory';
  if (d.isFIFO()) return 'FIFO';
  if (d.isSocket()) return 'socket';
  if (d.isCharacterDevice() || d.isBlockDevice()) return 'device';
  return d.isFile() ? 'file with a name no uidlist can hold' : 'unknown';
}

/** Entries already reported as skipped, so that a login does not log them again (bounded). */
const REPORTED = new Set<string>();

/** Maildrops locked anywhere in this process, by any store instance (the lock file covers other processes). */
const LOCKED = new Set<string>();

/** Dovecot's default pop3_uidl_format `%08Xu%08Xv`: UID then UIDVALIDITY, 8 lower-case hex digits each. */
export function dovecotUidl(uid: number, uidValidity: number): string {
  return uid.toString(16).padStart(8, '0') + uidValidity.toString(16).padStart(8, '0');
}

/**
 * One message of a scan. Never changed once made: a remembered scan hands the
 * same objects to every session that reuses it, and a session keeps its own
 * record of files it found renamed (MaildirMaildrop#names).
 */
interface Entry {
  readonly uid: number;
  readonly basename: string;
  readonly filename: string;
  readonly size: number;
  readonly uidl: string;
  readonly order: number | undefined;
}

export class MaildirStore implements MailStore {
  readonly #root: string;
  readonly #log: Logger;
  readonly #fsync: boolean;
  readonly #stale: number;
  readonly #now: () => number;
  readonly #scanFiles: boolean;
  readonly #allowSymlinks: boolean;

  constructor(opts: MaildirStoreOptions) {
    this.#scanFiles = opts.scanFiles ?? true;
    this.#root = opts.root;
    this.#log = opts.logger;
    this.#fsync = opts.fsync ?? true;
    this.#stale = opts.uidlistStaleSeconds ?? 120;
    this.#now = opts.now ?? Date.now;
    this.#allowSymlinks = opts.allowSymlinkedMaildrops ?? false;
  }

  maildropPath(username: string, maildir?: string): string {
    if (maildir !== undefined) return maildir;
    if (username === '' || username === '.' || username === '..' || /[/\0]/.test(username)) {
      throw new PermanentFailure('Invalid user name for a maildrop');
    }
    return path.join(this.#root, username);
  }

  async open(user: Principal, signal?: AbortSignal): Promise<Maildrop> {
    const dir = this.maildropPath(user.username, user.maildir);
    if (LOCKED.has(dir)) throw new InUseError('Maildrop is locked by another session');
    LOCKED.add(dir);
    let lock: SessionLock | null = null;
    try {
      // Before anything is created or opened in it.
      this.#checkMaildrop(dir);
      const lockFile = path.join(dir, SESSION_LOCK);
      try {
        lock = SessionLock.tryAcquire(lockFile);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await this.#ensureMaildir(dir); // a new user: no maildrop yet
        lock = SessionLock.tryAcquire(lockFile);
      }
      if (lock === null) throw new InUseError('Maildrop is locked by another session');
      // Under the lock, cur/ and new/ are stat'ed for the scan; only when they are missing (or not
      // directories) is there anything to create (or to refuse).
      const key = statScanKey(dir);
      if (key === null) await this.#ensureMaildir(dir);
      signal?.throwIfAborted();
      const entries = await this.#scan(dir, signal, key ?? undefined);
      return new MaildirMaildrop(this, dir, entries, lock);
    } catch (e) {
      lock?.release();
      LOCKED.delete(dir);
      throw e;
    }
  }

  /**
   * Refuse a maildrop directory that leads somewhere it should not: ROOT/U
   * that is a symbolic link out of the root, or any symbolic link on the
   * path of a maildrop given by the user database outside the root (where
   * the owner of a parent directory could point it at /etc). One lstat for
   * ROOT/U that is a plain directory, the usual case.
   */
  #checkMaildrop(dir: string): void {
    if (this.#allowSymlinks) return;
    const lexical = path.resolve(dir);
    const root = path.resolve(this.#root);
    const underRoot = lexical.startsWith(root + path.sep);
    if (underRoot && path.dirname(lexical) === root) {
      const st = lstatSync(lexical, { throwIfNoEntry: false });
      if (st === undefined || !st.isSymbolicLink()) return; // created under the root, or a real directory
    }
    // Where it really is: the nearest existing part of the path, resolved, and the rest as it stands.
    let existing = lexical;
    let rest = '';
    let real: string | undefined;
    while (real === undefined) {
      try {
        real = realpathSync.native(existing);
      } catch (e) {
        const parent = path.dirname(existing);
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || parent === existing) throw e;
        rest = path.join(path.basename(existing), rest);
        existing = parent;
      }
    }
    const resolved = path.join(real, rest);
    let inside: boolean;
    if (underRoot) {
      let realRoot = root;
      try {
        realRoot = realpathSync.native(root);
      } catch {
        // no root yet: compared as configured
      }
      inside = resolved.startsWith(realRoot + path.sep);
    } else {
      inside = resolved === lexical;
    }
    if (inside) return;
    this.#log.error(
      { dir, resolved },
      underRoot
        ? 'maildrop refused: it is a symbolic link leading out of the Maildir root (set [store] allow_symlinked_maildrops = true to allow it)'
        : 'maildrop refused: its path goes through a symbolic link (set [store] allow_symlinked_maildrops = true to allow it)',
    );
    throw new TemporaryFailure('Cannot open the maildrop, try again later.');
  }

  /** cur/, new/ and tmp/ (created when missing), which must be directories, not links. */
  async #ensureMaildir(dir: string): Promise<void> {
    try {
      await ensureMaildir(dir);
    } catch (e) {
      if (!(e instanceof UnsafeMaildrop)) throw e;
      this.#log.error({ dir }, `maildrop refused: ${e.message}`);
      throw new TemporaryFailure('Cannot open the maildrop, try again later.');
    }
  }

  /** Names of the messages in `sub` (cur/ or new/); any other entry is skipped and logged once. */
  async #messageNames(dir: string, sub: 'cur' | 'new', list = path.join(dir, sub)): Promise<string[]> {
    const out: string[] = [];
    for (const d of await fs.readdir(list, { withFileTypes: true })) {
      if (isMessage(d)) {
        out.push(d.name);
        continue;
      }
      if (d.name[0] === '.') continue;
      const file = path.join(dir, sub, d.name);
      if (REPORTED.has(file)) continue;
      if (REPORTED.size >= 10_000) REPORTED.clear();
      REPORTED.add(file);
      this.#log.warn({ file, kind: direntKind(d) }, 'skipped a maildrop entry that is not a regular file with a plain Maildir name');
    }
    return out;
  }

  /** @internal */
  unlock(dir: string, lock: SessionLock): void {
    try {
      lock.release();
    } finally {
      LOCKED.delete(dir);
    }
  }

  now(): number {
    return this.#now();
  }

  get fsyncEnabled(): boolean {
    return this.#fsync;
  }

  /**
   * The maildrop's messages. A scan is remembered per directory together with
   * the modification times of cur/, new/ and dovecot-uidlist; while none of
   * them changed, the next login reuses it (three stat calls instead of two
   * directory listings and the uidlist). A scan is only remembered when the
   * directories had been quiet for a while, so a change within the file
   * system's timestamp granularity can never hide behind an equal mtime.
   */
  async #scan(dir: string, signal?: AbortSignal, key?: { key: string }): Promise<Entry[]> {
    const before = key ?? statScanKey(dir);
    const cached = SCAN_CACHE.get(dir);
    if (cached !== undefined && before !== null && cached.key === before.key) {
      const u = cached.unconfirmed;
      if (u === undefined || (Date.now() - u.newestDir > u.quietMs && (await listingMatches(dir, cached.entries)))) {
        if (u !== undefined) {
          // Confirmed: the listing came after the quiet time, so a later change cannot carry the key's times.
          delete cached.unconfirmed;
          this.#saveScan(dir, cached.key, cached.entries);
        }
        SCAN_CACHE.delete(dir); // re-insert: most recently used last
        SCAN_CACHE.set(dir, cached);
        return cached.entries;
      }
    }
    if (before !== null && this.#scanFiles) {
      // Another process (a --workers sibling, or this server before a restart) may have left the scan on disk.
      const saved = await readScanFile(dir, before.key);
      if (Array.isArray(saved)) {
        this.#remember(dir, before.key, saved);
        return saved;
      }
      if (saved !== null) {
        this.#log.warn({ dir, reason: saved.untrusted }, `ignored and removed ${SCAN_FILE}: not trusted; the maildrop is scanned instead`);
        await fs.unlink(path.join(dir, SCAN_FILE)).catch(() => undefined);
      }
    }
    const started = Date.now();
    const { entries, wrote } = await this.#fullScan(dir, signal);
    const after = statScanKey(dir);
    if (after === null) {
      SCAN_CACHE.delete(dir);
      return entries;
    }
    // The uidlist is settled when this scan wrote it itself (stat taken under its lock, and still
    // the same file: it holds exactly what the scan used) or when it had been quiet before the scan.
    const uidlistSettled = (wrote !== undefined && after.ukey === wrote) || started - after.newestUidlist > after.quietMs;
    if (!uidlistSettled) {
      // Changed while it was being read: only a new scan can tell what it holds now.
      SCAN_CACHE.delete(dir);
    } else if (started - after.newestDir > after.quietMs) {
      this.#remember(dir, after.key, entries);
      this.#saveScan(dir, after.key, entries);
    } else {
      // cur/ or new/ changed during the scan or just before it (messages moved from new/ at this
      // login, a delivery): kept, to be confirmed by a listing at the next login instead of a whole
      // new scan. A listing can confirm the files, so only the directories may still be moving.
      this.#remember(dir, after.key, entries, { newestDir: after.newestDir, quietMs: after.quietMs });
    }
    return entries;
  }

  #remember(dir: string, key: string, entries: Entry[], unconfirmed?: RememberedScan['unconfirmed']): void {
    SCAN_CACHE.delete(dir); // (re-)insert: most recently used last
    SCAN_CACHE.set(dir, { key, entries, ...(unconfirmed ? { unconfirmed } : {}) });
    if (SCAN_CACHE.size > SCAN_CACHE_MAX) SCAN_CACHE.delete(SCAN_CACHE.keys().next().value!);
  }

  /** A big maildrop's trusted scan is saved for the sibling workers and the next start. */
  #saveScan(dir: string, key: string, entries: readonly Entry[]): void {
    if (entries.length < SCAN_FILE_MIN || !this.#scanFiles) return;
    writeScanFile(dir, key, entries).catch((e: unknown) => this.#log.debug({ err: e, dir }, 'could not save the maildrop scan'));
  }

  /** List the maildrop and match it with the uidlist; `wrote`: the key of the uidlist it wrote, if it did. */
  async #fullScan(dir: string, signal?: AbortSignal): Promise<{ entries: Entry[]; wrote?: string }> {
    const cur = path.join(dir, 'cur');
    // new/ and cur/ are listed and renamed in through their open directories: one swapped for a
    // link after the login's lstat cannot send a message file anywhere else.
    const pinned = await pinDirectories(dir);
    try {
      await moveNewToCur(pinned.new, pinned.cur, await this.#messageNames(dir, 'new', pinned.new));
    } catch (e) {
      await pinned.close();
      throw e;
    }
    const files = await this.#messageNames(dir, 'cur', pinned.cur).finally(() => pinned.close());
    const byBase = new Map<string, string>();
    for (const f of files) byBase.set(baseName(f), f);

    let uidlist = await readUidlist(dir, this.#log);
    let wrote: string | undefined;
    let plan = planSync(uidlist, byBase);
    if (plan.unassigned.length > 0 || plan.missingSize.length > 0 || uidlist === null) {
      // Compute missing sizes before taking the lock: reading files can be slow, and a
      // lock held for minutes would be taken for stale by other servers (staleSeconds).
      // That includes files that get their UID now: a first login reads them all.
      const sizes = new Map<string, number>();
      const toMeasure = [
        ...plan.missingSize.map((r) => r.basename),
        ...plan.unassigned.filter((b) => sizeFromName(byBase.get(b)!) === undefined),
      ];
      const measured = await fileCrlfSizes(
        toMeasure.map((b) => path.join(cur, byBase.get(b)!)),
        signal,
      );
      toMeasure.forEach((b, i) => {
        const size = measured[i];
        if (size !== undefined) sizes.set(b, size);
      });
      const lock = await UidlistLock.acquire(dir, { staleSeconds: this.#stale, ...(signal ? { signal } : {}) });
      try {
        // Re-read under the lock: another server may have assigned UIDs meanwhile.
        uidlist = (await readUidlist(dir, this.#log)) ?? newUidlist();
        plan = planSync(uidlist, byBase);
        for (const r of plan.missingSize) {
          const s = sizes.get(r.basename) ?? (await fileCrlfSize(path.join(cur, byBase.get(r.basename)!)).catch(() => undefined));
          if (s !== undefined) setExt(r, 'W', String(s));
        }
        for (const basename of plan.unassigned) {
          const filename = byBase.get(basename)!;
          const rec: UidlistRecord = { uid: uidlist.nextUid++, ext: [], basename };
          if (sizeFromName(filename) === undefined) {
            const s = sizes.get(basename) ?? (await fileCrlfSize(path.join(cur, filename)).catch(() => undefined));
            if (s !== undefined) rec.ext.push(['W', String(s)]);
          }
          uidlist.records.push(rec);
        }
        // Records of files that no longer exist are dropped, as Dovecot does. Whether a
        // file exists is judged by a listing taken now, under the lock: a file another
        // server moved to cur/ (or saved to new/) after our listing, and gave a UID
        // meanwhile, must keep its record, or it would get a new UID later.
        const present = await listBaseNames(dir);
        uidlist.records = uidlist.records.filter((r) => byBase.has(r.basename) || present.has(r.basename));
        wrote = uidlistKey(await lock.replace(formatUidlist(uidlist), this.#fsync));
      } catch (e) {
        await lock.release();
        throw e;
      }
      plan = planSync(uidlist, byBase);
    }
    const entries = buildEntries(uidlist!, byBase, plan.known);
    return wrote === undefined ? { entries } : { entries, wrote };
  }

  async deliver(user: string, message: Readable | Buffer, signal?: AbortSignal): Promise<void> {
    const dir = this.maildropPath(user);
    this.#checkMaildrop(dir);
    if (!isDirectory(path.join(dir, 'tmp')) || !isDirectory(path.join(dir, 'new'))) await this.#ensureMaildir(dir);
    const source = Buffer.isBuffer(message) ? [message] : (message as AsyncIterable<Buffer>);
    await publish(await writeTmp(dir, source, { mode: 0o600, fsync: this.#fsync, signal }));
    if (this.#fsync) await fsyncDir(path.join(dir, 'new'));
  }
}

interface SyncPlan {
  known: Map<string, UidlistRecord>;
  unassigned: string[];
  missingSize: UidlistRecord[];
}

function planSync(u: Uidlist | null, byBase: Map<string, string>): SyncPlan {
  const known = new Map<string, UidlistRecord>();
  const missingSize: UidlistRecord[] = [];
  if (u !== null) {
    for (const r of u.records) {
      const f = byBase.get(r.basename);
      if (f === undefined) continue;
      known.set(r.basename, r);
      // A W that is no size (W-5, Wx, W1.5, too many digits) is measured again and replaced.
      if (sizeFromName(f) === undefined && parseSize(extValue(r, 'W')) === undefined) missingSize.push(r);
    }
  }
  const unassigned: string[] = [];
  for (const b of byBase.keys()) if (!known.has(b)) unassigned.push(b);
  unassigned.sort(compareMaildirNames);
  return { known, unassigned, missingSize };
}

function buildEntries(u: Uidlist, byBase: Map<string, string>, known: Map<string, UidlistRecord>): Entry[] {
  const entries: Entry[] = [];
  for (const r of known.values()) {
    const filename = byBase.get(r.basename)!;
    const w = sizeFromName(filename) ?? parseSize(extValue(r, 'W'));
    if (w === undefined) continue; // unreadable file: not offered rather than mis-sized
    const p = extValue(r, 'P');
    const o = extValue(r, 'O');
    entries.push({
      uid: r.uid,
      basename: r.basename,
      filename,
      size: w,
      // A saved UIDL is used only if it is one (RFC 1939 §7), so nothing else reaches the wire.
      uidl: p !== undefined && UIDL.test(p) ? p : dovecotUidl(r.uid, u.uidValidity),
      order: o !== undefined && /^[0-9]+$/.test(o) ? Number(o) : undefined,
    });
  }
  // POP3 order: a saved O order first (kept from a migration), then by UID.
  entries.sort((a, b) => {
    if (a.order !== undefined || b.order !== undefined) {
      if (a.order === undefined) return 1;
      if (b.order === undefined) return -1;
      if (a.order !== b.order) return a.order - b.order;
    }
    return a.uid - b.uid;
  });
  return entries;
}

function newUidlist(): Uidlist {
  return {
    uidValidity: Math.floor(Date.now() / 1000),
    nextUid: 1,
    headerExtra: [`G${randomBytes(16).toString('hex')}`],
    records: [],
  };
}

async function readUidlist(dir: string, log: Logger): Promise<Uidlist | null> {
  const file = path.join(dir, 'dovecot-uidlist');
  let text: string;
  try {
    ({ text } = await readRegular(file));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return null;
    if (code !== 'ELOOP' && code !== 'EISDIR' && code !== 'EINVAL') throw e;
    // A link or something else than a file: never followed, never trusted; the rename of the new list replaces it.
    log.warn({ file, err: e }, 'dovecot-uidlist is not a regular file: rebuilt');
    return null;
  }
  try {
    return parseUidlist(text);
  } catch (e) {
    if (!(e instanceof UidlistFormatError)) throw e;
    // Like Dovecot: a corrupt list is rebuilt rather than locking the user out for good.
    // UIDs (and UIDLs) start afresh under a new UIDVALIDITY; clients may download again.
    log.warn({ file, reason: e.message }, 'dovecot-uidlist is damaged or not trustworthy: rebuilt');
    return null;
  }
}

/** Base names of every message file in cur/ and new/ right now. */
async function listBaseNames(dir: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const sub of ['cur', 'new']) {
    for (const f of await fs.readdir(path.join(dir, sub))) if (f[0] !== '.') out.add(baseName(f));
  }
  return out;
}

/** A maildrop that cannot be used safely (cur/, new/ or tmp/ not a directory). */
class UnsafeMaildrop extends Error {}

function isDirectory(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/** Create what is missing of the maildrop; cur/, new/ and tmp/ must be real directories (lstat), never links. */
async function ensureMaildir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  for (const sub of ['cur', 'new', 'tmp']) {
    const p = path.join(dir, sub);
    try {
      await fs.mkdir(p, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const st = await fs.lstat(p);
    if (!st.isDirectory()) throw new UnsafeMaildrop(`${p} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}`);
  }
}

/**
 * new/ and cur/ opened without following a link (O_DIRECTORY|O_NOFOLLOW), as
 * paths that name those very directories (/proc/self/fd/N) until close().
 */
async function pinDirectories(dir: string): Promise<{ new: string; cur: string; close(): Promise<void> }> {
  if (!PROC_FD) return { new: path.join(dir, 'new'), cur: path.join(dir, 'cur'), close: async () => undefined };
  const open = (sub: string): Promise<FileHandle> => fs.open(path.join(dir, sub), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
  const [n, c] = await Promise.allSettled([open('new'), open('cur')]);
  const close = async (): Promise<void> => {
    for (const r of [n, c]) if (r.status === 'fulfilled') await r.value.close().catch(() => undefined);
  };
  if (n.status === 'rejected' || c.status === 'rejected') {
    await close();
    throw n.status === 'rejected' ? n.reason : (c as PromiseRejectedResult).reason;
  }
  return { new: `/proc/self/fd/${n.value.fd}`, cur: `/proc/self/fd/${c.value.fd}`, close };
}

/** Messages in new/ become cur/ at login, as every Maildir reader does. */
async function moveNewToCur(newDir: string, curDir: string, names: readonly string[]): Promise<void> {
  for (const n of names) {
    const target = n.includes(':') ? n : `${n}:2,`;
    try {
      await fs.rename(path.join(newDir, n), path.join(curDir, target));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // moved by another reader
    }
  }
}

/** The Maildir info flags after `:2,` (kept sorted, as the spec asks). */
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

/** Files per thread-pool job of the native measurer, and such jobs at a time. */
const SIZE_BATCH = 256;
const SIZE_BATCHES_IN_FLIGHT = 2;

/**
 * POP3 sizes of many files (undefined for one that cannot be read). With the
 * native module, batches of files are measured on the thread pool in C (open,
 * read, count, close in one job per batch, instead of four thread-pool round
 * trips per file); without it, 16 files at a time with fileCrlfSize. A first
 * login on a big Maildir is bound by this.
 */
export async function fileCrlfSizes(files: readonly string[], signal?: AbortSignal): Promise<(number | undefined)[]> {
  const out = new Array<number | undefined>(files.length);
  const measure = native?.crlfSizes;
  let next = 0;
  if (measure !== undefined) {
    const worker = async (): Promise<void> => {
      while (next < files.length) {
        signal?.throwIfAborted();
        const from = next;
        next = Math.min(files.length, next + SIZE_BATCH);
        const sizes = await measure(files.slice(from, next) as string[]);
        for (let i = 0; i < sizes.length; i++) out[from + i] = sizes[i]! >= 0 ? sizes[i] : undefined;
      }
    };
    await Promise.all(Array.from({ length: SIZE_BATCHES_IN_FLIGHT }, worker));
    return out;
  }
  const worker = async (): Promise<void> => {
    while (next < files.length) {
      signal?.throwIfAborted();
      const i = next++;
      out[i] = await fileCrlfSize(files[i]!).catch(() => undefined);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, files.length) }, worker));
  return out;
}

/** POP3 size of one message file (a regular file, opened without following a link or blocking: openRegular). */
export async function fileCrlfSize(file: string): Promise<number> {
  const counter = new CrlfSizeCounter();
  const fh = await openRegular(file);
  try {
    // Most messages fit in one read; big ones are counted chunk by chunk with bounded memory.
    const chunk = Buffer.allocUnsafe(256 * 1024);
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      counter.push(chunk.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return counter.size;
}

class MaildirMaildrop implements Maildrop {
  readonly messages: readonly MessageInfo[];
  readonly #store: MaildirStore;
  readonly #dir: string;
  readonly #entries: readonly Entry[];
  /** Current file names of messages found renamed (flags changed) in this session, by index. */
  readonly #names = new Map<number, string>();
  readonly #lock: SessionLock;
  /** cur/, opened (without following a link) at the first RETR, TOP or UPDATE, until release. */
  #cur: Promise<FileHandle> | undefined;
  #released = false;

  constructor(store: MaildirStore, dir: string, entries: readonly Entry[], lock: SessionLock) {
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
