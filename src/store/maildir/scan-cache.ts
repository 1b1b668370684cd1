/**
 * Remembered scans: a maildrop's messages, kept in memory (and for big
 * maildrops in the maildrop, as poplar-scan.cache) under a key made of the
 * times of cur/, new/ and dovecot-uidlist, so that a login whose maildrop did
 * not change costs three stat calls instead of two listings and the uidlist.
 * A big maildrop's scan is saved before the login that made it answers, and
 * announced (onSavedScan): `serve --workers` siblings load it ahead of their
 * first login there (preloadSavedScan).
 */
import { promises as fs, lstatSync, type Stats } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../observability/log.js';
import type { Entry } from './entry.js';
import { isMessage } from './listing.js';
import { readScanFile, SCAN_FILE, writeScanFile, type ReadPace, type SavedScan } from './scan-file.js';

export interface ScanCacheOptions {
  log: Logger;
  /** Save scans of big maildrops in the maildrop (SCAN_FILE). */
  scanFiles: boolean;
  /** List the maildrop and match it with the uidlist; `wrote`: the key of the uidlist it wrote, if it did. */
  fullScan: () => Promise<{ entries: Entry[]; wrote?: string }>;
}

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

export interface ScanKey {
  key: string;
  /** The latest change time of cur/ and new/. */
  newestDir: number;
  /** The uidlist's latest change time (0 when there is none). */
  newestUidlist: number;
  /** The uidlist's part of the key. */
  ukey: string;
  quietMs: number;
}

export function uidlistKey(u: Stats | null): string {
  return u === null ? '-' : `${u.ino}:${u.size}:${u.mtimeMs}:${u.ctimeMs}`;
}

/** Three stat calls, synchronous: they run on every login and cost microseconds. */
export function statScanKey(dir: string): ScanKey | null {
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
 * SCAN_FILE (scan-file.ts), under the same key (the times of cur/, new/ and
 * the uidlist): the other worker processes, and this server after a restart,
 * read it instead of listing the directory and matching the uidlist again.
 * Small maildrops are scanned faster than the file would be read.
 */
const SCAN_FILE_MIN = 1000;

/** Told when a big maildrop's scan is in its saved file under `key` (saved, or read, by this process). */
export type SavedScanListener = (dir: string, key: string) => void;
const SAVED_LISTENERS = new Set<SavedScanListener>();

/**
 * Be told of every scan this process saves in a maildrop or reads from one
 * (serve --workers: the siblings load it before their first login there,
 * see preloadSavedScan). Returns the function that stops it.
 */
export function onSavedScan(listener: SavedScanListener): () => void {
  SAVED_LISTENERS.add(listener);
  return () => SAVED_LISTENERS.delete(listener);
}

function announce(dir: string, key: string): void {
  for (const l of SAVED_LISTENERS) {
    try {
      l(dir, key);
    } catch {
      // a listener's failure is its own
    }
  }
}

/**
 * Load the scan another process saved in `dir` under `key`, before any login
 * asks for it, if the maildrop is still as that scan saw it (its key now)
 * and the file is trusted; the next login here then costs three stat calls.
 * Anything else is left for that login to deal with (and report). Resolves
 * true when the scan is remembered now.
 */
export async function preloadSavedScan(dir: string, key: string): Promise<boolean> {
  const have = SCAN_CACHE.get(dir);
  if (have !== undefined && have.key === key && have.unconfirmed === undefined) return true;
  if (statScanKey(dir)?.key !== key) return false; // changed since: the next login scans
  const saved = await loadSavedScan(dir, key, true);
  // Still the maildrop the file describes (a login here may have changed it meanwhile).
  if (!Array.isArray(saved) || statScanKey(dir)?.key !== key) return false;
  remember(dir, key, saved);
  return true;
}

/** Saved scans being read, by maildrop: a login and a preload of the same file share one read. */
const LOADING = new Map<string, { key: string; pace: ReadPace; result: Promise<SavedScan> }>();

/** The saved scan of `dir` under `key`, read in the background (a preload) or for a login, which never waits for a paced read. */
function loadSavedScan(dir: string, key: string, background = false): Promise<SavedScan> {
  const loading = LOADING.get(dir);
  if (loading !== undefined && loading.key === key) {
    if (!background) loading.pace.background = false; // a login waits for it now: at full speed
    return loading.result;
  }
  const pace: ReadPace = { background };
  const result = readScanFile(dir, key, pace).finally(() => {
    if (LOADING.get(dir)?.result === result) LOADING.delete(dir);
  });
  LOADING.set(dir, { key, pace, result });
  return result;
}

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
 * The maildrop's messages. A scan is remembered per directory together with
 * the modification times of cur/, new/ and dovecot-uidlist; while none of
 * them changed, the next login reuses it (three stat calls instead of two
 * directory listings and the uidlist). A scan is only remembered when the
 * directories had been quiet for a while, so a change within the file
 * system's timestamp granularity can never hide behind an equal mtime.
 */
export async function scanWithCache(dir: string, before: ScanKey | null, opts: ScanCacheOptions): Promise<Entry[]> {
  const cached = SCAN_CACHE.get(dir);
  if (cached !== undefined && before !== null && cached.key === before.key) {
    const u = cached.unconfirmed;
    if (u === undefined || (Date.now() - u.newestDir > u.quietMs && (await listingMatches(dir, cached.entries)))) {
      if (u !== undefined) {
        // Confirmed: the listing came after the quiet time, so a later change cannot carry the key's times.
        delete cached.unconfirmed;
        void saveScan(opts, dir, cached.key, cached.entries);
      }
      SCAN_CACHE.delete(dir); // re-insert: most recently used last
      SCAN_CACHE.set(dir, cached);
      return cached.entries;
    }
  }
  if (before !== null && opts.scanFiles) {
    // Another process (a --workers sibling, or this server before a restart) may have left the scan on disk.
    const saved = await loadSavedScan(dir, before.key);
    if (Array.isArray(saved)) {
      remember(dir, before.key, saved);
      announce(dir, before.key); // the siblings load it too, before their first login here
      return saved;
    }
    if (saved !== null) {
      opts.log.warn({ dir, reason: saved.untrusted }, `ignored and removed ${SCAN_FILE}: not trusted; the maildrop is scanned instead`);
      await fs.unlink(path.join(dir, SCAN_FILE)).catch(() => undefined);
    }
  }
  const started = Date.now();
  const { entries, wrote } = await opts.fullScan();
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
    remember(dir, after.key, entries);
    // Saved before this login answers: a login on a sibling worker right after it finds the file.
    await saveScan(opts, dir, after.key, entries);
  } else {
    // cur/ or new/ changed during the scan or just before it (messages moved from new/ at this
    // login, a delivery): kept, to be confirmed by a listing at the next login instead of a whole
    // new scan. A listing can confirm the files, so only the directories may still be moving.
    // A big maildrop's scan is confirmed as soon as the quiet time has passed, off the login path.
    const r = remember(dir, after.key, entries, { newestDir: after.newestDir, quietMs: after.quietMs });
    if (opts.scanFiles && entries.length >= SCAN_FILE_MIN) confirmLater(opts, dir, r);
  }
  return entries;
}

/**
 * The listing that confirms an unconfirmed scan of a big maildrop (see
 * scanWithCache), taken in the background once the quiet time has passed
 * rather than at the next login, which then finds a trusted scan (in this
 * process, and through the saved file in the others). No session lock is
 * needed: it only reads, and whatever changes after the listing changes the
 * key. A listing that differs drops the scan (the next login scans).
 */
function confirmLater(opts: ScanCacheOptions, dir: string, r: RememberedScan): void {
  const u = r.unconfirmed;
  if (u === undefined) return;
  const confirm = async (): Promise<void> => {
    if (SCAN_CACHE.get(dir) !== r || r.unconfirmed !== u) return; // replaced, or confirmed by a login
    if (Date.now() - u.newestDir <= u.quietMs) return confirmLater(opts, dir, r);
    if (statScanKey(dir)?.key !== r.key) return; // changed since: the next login scans
    const matches = await listingMatches(dir, r.entries);
    if (SCAN_CACHE.get(dir) !== r || r.unconfirmed !== u) return;
    if (!matches) {
      SCAN_CACHE.delete(dir);
      return;
    }
    delete r.unconfirmed;
    await saveScan(opts, dir, r.key, r.entries);
  };
  const wait = Math.max(0, u.newestDir + u.quietMs - Date.now()) + 10;
  setTimeout(() => void confirm().catch((e: unknown) => opts.log.debug({ err: e, dir }, 'could not confirm the maildrop scan')), wait).unref();
}

function remember(dir: string, key: string, entries: Entry[], unconfirmed?: RememberedScan['unconfirmed']): RememberedScan {
  const r: RememberedScan = { key, entries, ...(unconfirmed ? { unconfirmed } : {}) };
  SCAN_CACHE.delete(dir); // (re-)insert: most recently used last
  SCAN_CACHE.set(dir, r);
  if (SCAN_CACHE.size > SCAN_CACHE_MAX) SCAN_CACHE.delete(SCAN_CACHE.keys().next().value!);
  return r;
}

/** A big maildrop's trusted scan is saved for the sibling workers and the next start, who are then told. */
async function saveScan(opts: ScanCacheOptions, dir: string, key: string, entries: readonly Entry[]): Promise<void> {
  if (entries.length < SCAN_FILE_MIN || !opts.scanFiles) return;
  try {
    await writeScanFile(dir, key, entries);
  } catch (e) {
    opts.log.debug({ err: e, dir }, 'could not save the maildrop scan');
    return;
  }
  announce(dir, key);
}
