import { promises as fs, constants as C, statSync, accessSync, type Stats } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Principal } from '../../auth/types.js';
import { Pop3Error } from '../../protocol/codes.js';
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { native } from '../../protocol/native.js';
import type { Logger } from '../../observability/log.js';
import type { CommitOptions, MailStore, Maildrop, MessageInfo } from '../types.js';
import { SessionLock, UidlistLock } from './locks.js';
import { baseName, compareMaildirNames, sizeFromName, uniqueName } from './names.js';
import { extValue, formatUidlist, parseUidlist, setExt, UidlistFormatError, type Uidlist, type UidlistRecord } from './uidlist.js';

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
    const c = statSync(path.join(dir, 'cur'));
    const n = statSync(path.join(dir, 'new'));
    const u = statSync(path.join(dir, 'dovecot-uidlist'), { throwIfNoEntry: false }) ?? null;
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
 *   poplar-scan 1 <key>
 *   <uid> <size> <order or -> <uidl> <file name>      one line per message, in POP3 order
 */
const SCAN_FILE = 'poplar-scan.cache';
const SCAN_FILE_MIN = 1000;
const SCAN_FILE_HEADER = 'poplar-scan 1 ';

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

async function readScanFile(dir: string, key: string): Promise<Entry[] | null> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dir, SCAN_FILE), 'utf8');
  } catch {
    return null;
  }
  const nl = text.indexOf('\n');
  if (nl < 0 || text.slice(0, nl) !== SCAN_FILE_HEADER + key || !text.endsWith('\n')) return null;
  const entries: Entry[] = [];
  for (let pos = nl + 1; pos < text.length; ) {
    const end = text.indexOf('\n', pos);
    const line = text.slice(pos, end);
    pos = end + 1;
    const a = line.indexOf(' ');
    const b = line.indexOf(' ', a + 1);
    const c = line.indexOf(' ', b + 1);
    const d = line.indexOf(' ', c + 1);
    if (a < 0 || b < 0 || c < 0 || d < 0) return null; // not ours, or damaged: scan instead
    const uid = Number(line.slice(0, a));
    const size = Number(line.slice(a + 1, b));
    const order = line.slice(b + 1, c);
    const filename = line.slice(d + 1);
    if (!Number.isSafeInteger(uid) || !Number.isSafeInteger(size) || filename === '') return null;
    entries.push({ uid, size, basename: baseName(filename), filename, uidl: line.slice(c + 1, d), order: order === '-' ? undefined : Number(order) });
  }
  return entries;
}

async function writeScanFile(dir: string, key: string, entries: readonly Entry[]): Promise<void> {
  let text = SCAN_FILE_HEADER + key + '\n';
  for (const e of entries) text += `${e.uid} ${e.size} ${e.order ?? '-'} ${e.uidl} ${e.filename}\n`;
  const tmp = path.join(dir, `${SCAN_FILE}.${process.pid}.tmp`);
  // No fsync: a cache. A torn or stale file fails the key or the parse and is ignored.
  await fs.writeFile(tmp, text, { mode: 0o600 });
  await fs.rename(tmp, path.join(dir, SCAN_FILE));
}

/** new/ is empty and cur/ holds exactly the files of `entries` (names with flags included). */
async function listingMatches(dir: string, entries: readonly Entry[]): Promise<boolean> {
  try {
    const [cur, fresh] = await Promise.all([fs.readdir(path.join(dir, 'cur')), fs.readdir(path.join(dir, 'new'))]);
    if (fresh.some((f) => f[0] !== '.')) return false;
    const names = new Set(cur.filter((f) => f[0] !== '.'));
    if (names.size !== entries.length) return false;
    for (const e of entries) if (!names.has(e.filename)) return false;
    return true;
  } catch {
    return false;
  }
}

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

  constructor(opts: MaildirStoreOptions) {
    this.#scanFiles = opts.scanFiles ?? true;
    this.#root = opts.root;
    this.#log = opts.logger;
    this.#fsync = opts.fsync ?? true;
    this.#stale = opts.uidlistStaleSeconds ?? 120;
    this.#now = opts.now ?? Date.now;
  }

  maildropPath(username: string, maildir?: string): string {
    if (maildir !== undefined) return maildir;
    if (username === '' || username === '.' || username === '..' || /[/\0]/.test(username)) {
      throw new Pop3Error('Invalid user name for a maildrop', 'SYS/PERM');
    }
    return path.join(this.#root, username);
  }

  async open(user: Principal, signal?: AbortSignal): Promise<Maildrop> {
    const dir = this.maildropPath(user.username, user.maildir);
    if (LOCKED.has(dir)) throw new Pop3Error('Maildrop is locked by another session', 'IN-USE');
    LOCKED.add(dir);
    let lock: SessionLock | null = null;
    try {
      const lockFile = path.join(dir, SESSION_LOCK);
      try {
        lock = SessionLock.tryAcquire(lockFile);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
        await ensureMaildir(dir); // a new user: no maildrop yet
        lock = SessionLock.tryAcquire(lockFile);
      }
      if (lock === null) throw new Pop3Error('Maildrop is locked by another session', 'IN-USE');
      // Under the lock, cur/ and new/ are stat'ed for the scan; only when they are missing is there anything to create.
      const key = statScanKey(dir);
      if (key === null) await ensureMaildir(dir);
      signal?.throwIfAborted();
      const entries = await this.#scan(dir, signal, key ?? undefined);
      return new MaildirMaildrop(this, dir, entries, lock);
    } catch (e) {
      lock?.release();
      LOCKED.delete(dir);
      throw e;
    }
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
      if (saved !== null) {
        this.#remember(dir, before.key, saved);
        return saved;
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
    await moveNewToCur(dir);
    const files = (await fs.readdir(cur)).filter((f) => f[0] !== '.');
    const byBase = new Map<string, string>();
    for (const f of files) byBase.set(baseName(f), f);

    let uidlist = await readUidlist(dir);
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
        uidlist = (await readUidlist(dir)) ?? newUidlist();
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
    await ensureMaildir(dir);
    const base = uniqueName();
    const tmp = path.join(dir, 'tmp', base);
    const fh = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
    const counter = new CrlfSizeCounter();
    let physical = 0;
    try {
      const source = Buffer.isBuffer(message) ? [message] : message;
      for await (const chunk of source as AsyncIterable<Buffer>) {
        signal?.throwIfAborted();
        counter.push(chunk);
        physical += chunk.length;
        await fh.write(chunk);
      }
      if (this.#fsync) await fh.sync();
      await fh.close();
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fs.unlink(tmp).catch(() => undefined);
      throw e;
    }
    const final = path.join(dir, 'new', `${base},S=${physical},W=${counter.size}`);
    try {
      await fs.link(tmp, final);
    } finally {
      await fs.unlink(tmp).catch(() => undefined);
    }
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
      if (sizeFromName(f) === undefined && extValue(r, 'W') === undefined) missingSize.push(r);
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
    const w = sizeFromName(filename) ?? Number(extValue(r, 'W'));
    if (!Number.isFinite(w)) continue; // unreadable file: not offered rather than mis-sized
    const p = extValue(r, 'P');
    const o = extValue(r, 'O');
    entries.push({
      uid: r.uid,
      basename: r.basename,
      filename,
      size: w,
      uidl: p !== undefined && p !== '' ? p : dovecotUidl(r.uid, u.uidValidity),
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

async function readUidlist(dir: string): Promise<Uidlist | null> {
  let text: string;
  try {
    text = await fs.readFile(path.join(dir, 'dovecot-uidlist'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  try {
    return parseUidlist(text);
  } catch (e) {
    if (!(e instanceof UidlistFormatError)) throw e;
    // Like Dovecot: a corrupt list is rebuilt rather than locking the user out for good.
    // UIDs (and UIDLs) start afresh under a new UIDVALIDITY; clients may download again.
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

async function ensureMaildir(dir: string): Promise<void> {
  try {
    accessSync(path.join(dir, 'tmp'));
    return;
  } catch {
    // fall through: create what is missing
  }
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub), { recursive: true, mode: 0o700 });
}

/** Messages in new/ become cur/ at login, as every Maildir reader does. */
async function moveNewToCur(dir: string): Promise<void> {
  const newDir = path.join(dir, 'new');
  const curDir = path.join(dir, 'cur');
  const names = await fs.readdir(newDir);
  for (const n of names) {
    if (n[0] === '.') continue;
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

export async function fileCrlfSize(file: string): Promise<number> {
  const counter = new CrlfSizeCounter();
  const fh = await fs.open(file, 'r');
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

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

class MaildirMaildrop implements Maildrop {
  readonly messages: readonly MessageInfo[];
  readonly #store: MaildirStore;
  readonly #dir: string;
  readonly #entries: readonly Entry[];
  /** Current file names of messages found renamed (flags changed) in this session, by index. */
  readonly #names = new Map<number, string>();
  readonly #lock: SessionLock;
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

  /** Another process may have renamed the file (flags changed); find it again by its base name. */
  async #relocate(index: number): Promise<boolean> {
    const basename = this.#entries[index]!.basename;
    const files = await fs.readdir(path.join(this.#dir, 'cur'));
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

  async openFile(index: number): Promise<fs.FileHandle> {
    if (this.#entries[index] === undefined) throw new RangeError(`no message ${index}`);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        return await fs.open(path.join(this.#dir, 'cur', this.#filename(index)), 'r');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt > 0) break;
        if (!(await this.#relocate(index))) break;
      }
    }
    throw new Pop3Error('Message was removed by another process');
  }

  async commit(deleted: readonly number[], options: CommitOptions = {}): Promise<void> {
    const cur = path.join(this.#dir, 'cur');
    const n = this.#entries.length;
    let failed = 0;
    for (const i of deleted) {
      if (i >= 0 && i < n && !(await this.#unlink(i))) failed++;
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
        const st = await fs.stat(path.join(cur, filename)).catch(() => null);
        if (st !== null && st.ctimeMs < limit && (await this.#unlink(i))) changed = true;
      }
    }
    if (changed && this.#store.fsyncEnabled) await fsyncDir(cur);
    if (failed > 0) throw new Pop3Error(`${failed} of ${deleted.length} messages could not be deleted`, 'SYS/TEMP');
  }

  /** Unlink message `index`; true when it is gone (also when someone else removed it first). */
  async #unlink(index: number): Promise<boolean> {
    const cur = path.join(this.#dir, 'cur');
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
    this.#store.unlock(this.#dir, this.#lock);
  }
}
