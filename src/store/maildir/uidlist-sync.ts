/**
 * Matching a maildrop's files with dovecot-uidlist: files without a record
 * get the next UIDs (in Dovecot's name order), missing sizes are measured
 * (before the lock is taken) and saved as W, records of files that are gone
 * are dropped; the new list is written under dovecot-uidlist.lock.
 */
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import type { Logger } from '../../observability/log.js';
import { dovecotUidl, UIDL, type Entry } from './entry.js';
import { listBaseNames } from './listing.js';
import { UidlistLock } from './locks.js';
import { compareMaildirNames, sizeFromName } from './names.js';
import { readRegular, parseSize } from './safe-fs.js';
import { uidlistKey } from './scan-cache.js';
import { fileCrlfSize, fileCrlfSizes } from './sizes.js';
import { extValue, formatUidlist, parseUidlist, setExt, UidlistFormatError, type Uidlist, type UidlistRecord } from './uidlist.js';

export interface UidlistSyncOptions {
  log: Logger;
  staleSeconds: number;
  fsync: boolean;
  signal?: AbortSignal | undefined;
}

/**
 * The messages of `byBase` (base name to file name in cur/) in POP3 order,
 * with their UIDs; `wrote`: the key (scan-key.ts uidlistKey) of the uidlist
 * this call wrote, if it did.
 */
export async function syncUidlist(dir: string, byBase: Map<string, string>, opts: UidlistSyncOptions): Promise<{ entries: Entry[]; wrote?: string }> {
  const cur = path.join(dir, 'cur');
  let uidlist = await readUidlist(dir, opts.log);
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
      opts.signal,
    );
    toMeasure.forEach((b, i) => {
      const size = measured[i];
      if (size !== undefined) sizes.set(b, size);
    });
    const lock = await UidlistLock.acquire(dir, { staleSeconds: opts.staleSeconds, ...(opts.signal ? { signal: opts.signal } : {}) });
    try {
      // Re-read under the lock: another server may have assigned UIDs meanwhile.
      uidlist = (await readUidlist(dir, opts.log)) ?? newUidlist();
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
      wrote = uidlistKey(await lock.replace(formatUidlist(uidlist), opts.fsync));
    } catch (e) {
      await lock.release();
      throw e;
    }
    plan = planSync(uidlist, byBase);
  }
  const entries = buildEntries(uidlist!, byBase, plan.known);
  return wrote === undefined ? { entries } : { entries, wrote };
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
