/**
 * Remembered scans: a maildrop's messages, kept in memory (and for big
 * maildrops in the maildrop, as poplar-scan.cache) under a key made of the
 * times of cur/, new/ and dovecot-uidlist, so that a login whose maildrop did
 * not change costs three stat calls instead of two listings and the uidlist.
 */
import { promises as fs, lstatSync, type Stats } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../observability/log.js';
import type { Entry } from './entry.js';
import { isMessage } from './listing.js';
import { baseName } from './names.js';
import { isPlainBaseName, isPlainFileName, parseSize, readRegular, writeExclusive } from './safe-fs.js';

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
        saveScan(opts, dir, cached.key, cached.entries);
      }
      SCAN_CACHE.delete(dir); // re-insert: most recently used last
      SCAN_CACHE.set(dir, cached);
      return cached.entries;
    }
  }
  if (before !== null && opts.scanFiles) {
    // Another process (a --workers sibling, or this server before a restart) may have left the scan on disk.
    const saved = await readScanFile(dir, before.key);
    if (Array.isArray(saved)) {
      remember(dir, before.key, saved);
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
    saveScan(opts, dir, after.key, entries);
  } else {
    // cur/ or new/ changed during the scan or just before it (messages moved from new/ at this
    // login, a delivery): kept, to be confirmed by a listing at the next login instead of a whole
    // new scan. A listing can confirm the files, so only the directories may still be moving.
    remember(dir, after.key, entries, { newestDir: after.newestDir, quietMs: after.quietMs });
  }
  return entries;
}

function remember(dir: string, key: string, entries: Entry[], unconfirmed?: RememberedScan['unconfirmed']): void {
  SCAN_CACHE.delete(dir); // (re-)insert: most recently used last
  SCAN_CACHE.set(dir, { key, entries, ...(unconfirmed ? { unconfirmed } : {}) });
  if (SCAN_CACHE.size > SCAN_CACHE_MAX) SCAN_CACHE.delete(SCAN_CACHE.keys().next().value!);
}

/** A big maildrop's trusted scan is saved for the sibling workers and the next start. */
function saveScan(opts: ScanCacheOptions, dir: string, key: string, entries: readonly Entry[]): void {
  if (entries.length < SCAN_FILE_MIN || !opts.scanFiles) return;
  writeScanFile(dir, key, entries).catch((e: unknown) => opts.log.debug({ err: e, dir }, 'could not save the maildrop scan'));
}
