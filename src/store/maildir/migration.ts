/**
 * The Maildir side of `poplar migrate` (src/store/migration.ts): the users
 * under the root, a maildrop read in POP3 order, and messages added under a
 * given UIDL.
 *
 * Both directions open the maildrop as a POP3 session does (MaildirStore.open:
 * the session lock, the scan, dovecot-uidlist brought up to date), and hold
 * that lock until close(), so no POP3 session of Poplar sees a maildrop half
 * migrated.
 *
 * Adding a message, crash-safe at every step:
 *
 *   tmp/<base>                            written, fsynced, mtime = arrival
 *   cur/<base>:2,[S]                      hard link (S: it was retrieved), cur/ fsynced; tmp/ unlinked
 *   dovecot-uidlist                       `<uid> P<uidl> :<base>`, written in batches under its lock
 *
 * where <base> is `<sec>.M<usec>P<pid>V<hex of the UIDL>.poplar-migrated,S=<octets>,W=<crlf octets>`:
 * the names sort in the order messages were added (Dovecot and Poplar give new
 * files UIDs in name order), and the UIDL can be read back from the name. A
 * message is durable when add() returns, even before its uidlist record is
 * written: a migration opening the maildrop again finds such a file, by its
 * name, with a missing or wrong P field (a POP3 login in between may have given
 * it a UID of its own) and writes the UIDL the name carries. A UIDL is added
 * only when no message of the maildrop already reports it, so a rerun after a
 * kill at any point ends with every message exactly once.
 */
import { promises as fs, readdirSync, lstatSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { PermanentFailure, TemporaryFailure } from '../../errors.js';
import type { Logger } from '../../observability/log.js';
import { fsyncDir } from '../../platform/fsync.js';
import { CREATE_FLAGS } from '../../platform/safe-file.js';
import { crlfSize } from '../../protocol/message-size.js';
import type { MigratableStore, MigratedMessage, MigrationSource, MigrationTarget } from '../migration.js';
import type { Maildrop } from '../types.js';
import { dovecotUidl, UIDL, type Entry } from './entry.js';
import { isMessage } from './listing.js';
import { UidlistLock } from './locks.js';
import { MaildirStore } from './maildir-store.js';
import { baseName, sizeFromName } from './names.js';
import { isPlainFileName, parseSize, readRegular } from './safe-fs.js';
import { fileCrlfSize } from './sizes.js';
import { extValue, formatUidlist, parseUidlist, setExt, UidlistFormatError, type UidlistRecord } from './uidlist.js';

export interface MaildirMigrationOptions {
  /** Maildrop of user U is ROOT/U. */
  root: string;
  logger: Logger;
  /** fsync messages, cur/ and the uidlist (default true). */
  fsync?: boolean;
  /** Uidlist records written at least this often (messages); default 500, or a quarter of the maildrop when bigger. */
  batch?: number;
}

const MARK = '.poplar-migrated';
/** A name this module gave a migrated message: the UIDL in hex after `V`. */
const MIGRATED = /^\d+\.M\d+P\d+V((?:[0-9a-f]{2}){1,70})\.poplar-migrated(?:,|$)/;

/** The UIDL a migrated message's base name carries, if it is one of ours and a valid UIDL. */
export function migratedUidl(basename: string): string | undefined {
  const m = MIGRATED.exec(basename);
  if (m === null) return undefined;
  const uidl = Buffer.from(m[1]!, 'hex').toString('latin1');
  return UIDL.test(uidl) ? uidl : undefined;
}

let lastSec = 0;
let lastUsec = -1;

/** A new base name for `uidl` (without ,S= and ,W=): strictly increasing in this process. */
function migratedBase(uidl: string, now = Date.now()): string {
  let sec = Math.floor(now / 1000);
  let usec = (now % 1000) * 1000;
  if (sec < lastSec || (sec === lastSec && usec <= lastUsec)) {
    sec = lastSec;
    usec = lastUsec + 1;
    if (usec >= 1_000_000) {
      sec++;
      usec = 0;
    }
  }
  lastSec = sec;
  lastUsec = usec;
  return `${sec}.M${usec}P${process.pid}V${Buffer.from(uidl, 'latin1').toString('hex')}${MARK}`;
}

/** A maildrop directory name `users()` reports and the migration opens: a plain name, no hidden entry. */
function isUserName(name: string): boolean {
  return isPlainFileName(name) && name !== '' && !name.startsWith('.') && !/[\s:]/.test(name);
}

/** The messages of an open Maildir maildrop are scan entries (maildrop.ts keeps them as they are). */
function entriesOf(drop: Maildrop): readonly Entry[] {
  for (const m of drop.messages) {
    if (typeof (m as Partial<Entry>).filename !== 'string' || typeof (m as Partial<Entry>).basename !== 'string') {
      throw new TypeError('a Maildir maildrop without scan entries');
    }
  }
  return drop.messages as readonly Entry[];
}

function seen(filename: string): boolean {
  const i = filename.indexOf(':2,');
  return i !== -1 && filename.includes('S', i + 3);
}

/** One message as a survey sees it: its UIDL when it has one already (a new file gets it at the first login). */
export interface SurveyedMessage {
  readonly uidl: string | undefined;
  readonly size: number;
}

/**
 * A read-only look at a maildrop for --dry-run: no lock, nothing moved,
 * nothing written. UIDLs as the next login would report them (a saved P,
 * Dovecot's format from the UID, or the one a migrated file's name carries);
 * sizes from the name, the uidlist or by reading the file.
 */
export async function surveyMaildrop(root: string, user: string): Promise<{ exists: boolean; messages: SurveyedMessage[] }> {
  if (!isUserName(user)) throw new PermanentFailure(`not a user name a Maildir maildrop can have: ${JSON.stringify(user.slice(0, 100))}`);
  const dir = path.join(root, user);
  if (!(lstatSync(dir, { throwIfNoEntry: false })?.isDirectory() ?? false)) return { exists: false, messages: [] };
  let records = new Map<string, UidlistRecord>();
  let validity = 0;
  try {
    const list = parseUidlist((await readRegular(path.join(dir, 'dovecot-uidlist'))).text);
    validity = list.uidValidity;
    records = new Map(list.records.map((r) => [r.basename, r]));
  } catch {
    // none yet, or one the next login rebuilds: every message gets its UIDL then
  }
  const messages: SurveyedMessage[] = [];
  for (const sub of ['cur', 'new']) {
    let list;
    try {
      list = await fs.readdir(path.join(dir, sub), { withFileTypes: true });
    } catch {
      continue;
    }
    for (const d of list) {
      if (!isMessage(d)) continue;
      const base = baseName(d.name);
      const r = records.get(base);
      const p = r === undefined ? undefined : extValue(r, 'P');
      const uidl = migratedUidl(base) ?? (r === undefined ? undefined : p !== undefined && UIDL.test(p) ? p : dovecotUidl(r.uid, validity));
      const size = sizeFromName(d.name) ?? parseSize(r === undefined ? undefined : extValue(r, 'W')) ?? (await fileCrlfSize(path.join(dir, sub, d.name)).catch(() => undefined));
      if (size !== undefined) messages.push({ uidl, size });
    }
  }
  return { exists: true, messages };
}

export class MaildirMigration implements MigratableStore {
  readonly #root: string;
  readonly #log: Logger;
  readonly #fsync: boolean;
  readonly #batch: number;
  readonly #store: MaildirStore;

  constructor(opts: MaildirMigrationOptions) {
    this.#root = opts.root;
    this.#log = opts.logger;
    this.#fsync = opts.fsync ?? true;
    this.#batch = opts.batch ?? 500;
    this.#store = new MaildirStore({ root: opts.root, logger: opts.logger, fsync: this.#fsync, scanFiles: false });
  }

  async users(): Promise<string[]> {
    let names: string[];
    try {
      names = readdirSync(this.#root);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new PermanentFailure(`Maildir root ${this.#root} does not exist`);
      throw e;
    }
    const out: string[] = [];
    for (const name of names) {
      if (!isUserName(name)) continue;
      const dir = path.join(this.#root, name);
      // lstat throughout: a link is no maildrop of this root.
      const isDir = (p: string): boolean => lstatSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
      if (!isDir(dir)) continue;
      if (isDir(path.join(dir, 'cur')) || isDir(path.join(dir, 'new'))) out.push(name);
    }
    return out.sort();
  }

  #checkUser(user: string): void {
    if (!isUserName(user)) throw new PermanentFailure(`not a user name a Maildir maildrop can have: ${JSON.stringify(user.slice(0, 100))}`);
  }

  async openSource(user: string, signal?: AbortSignal): Promise<MigrationSource> {
    this.#checkUser(user);
    const dir = this.#store.maildropPath(user);
    if (!(lstatSync(dir, { throwIfNoEntry: false })?.isDirectory() ?? false)) throw new PermanentFailure(`no maildrop for ${user} under ${this.#root}`);
    const drop = await this.#store.open({ username: user }, signal);
    try {
      const entries = entriesOf(drop);
      const messages: MigratedMessage[] = [];
      for (const e of entries) {
        signal?.throwIfAborted();
        const st = await fs.lstat(path.join(dir, 'cur', e.filename)).catch(() => null);
        const fromName = Number(/^(\d{1,12})\./.exec(e.basename)?.[1] ?? NaN) * 1000;
        const arrived = st?.mtime ?? (Number.isFinite(fromName) ? new Date(fromName) : new Date(0));
        messages.push({ uidl: e.uidl, size: e.size, arrived, firstRetrieved: seen(e.filename) ? (st?.ctime ?? arrived) : null });
      }
      return {
        messages,
        read: (index: number, s?: AbortSignal): Promise<Readable> => drop.read(index, s),
        close: () => drop.release(),
      };
    } catch (e) {
      await drop.release();
      throw e;
    }
  }

  async openTarget(user: string, signal?: AbortSignal): Promise<MigrationTarget> {
    this.#checkUser(user);
    const dir = this.#store.maildropPath(user);
    const drop = await this.#store.open({ username: user }, signal); // creates the maildrop when missing
    try {
      const target = new MaildirTarget(dir, drop, { log: this.#log, fsync: this.#fsync, batch: this.#batch });
      await target.recover();
      return target;
    } catch (e) {
      await drop.release();
      throw e;
    }
  }
}

interface Pending {
  base: string;
  uidl: string;
}

class MaildirTarget implements MigrationTarget {
  readonly #dir: string;
  readonly #drop: Maildrop;
  readonly #log: Logger;
  readonly #fsync: boolean;
  readonly #batch: number;
  /** Every UIDL the maildrop reports or holds in a migrated file. */
  readonly #present = new Set<string>();
  #pending: Pending[] = [];
  #closed = false;

  constructor(dir: string, drop: Maildrop, opts: { log: Logger; fsync: boolean; batch: number }) {
    this.#dir = dir;
    this.#drop = drop;
    this.#log = opts.log;
    this.#fsync = opts.fsync;
    this.#batch = Math.max(opts.batch, Math.floor(drop.messages.length / 4));
  }

  /** Migrated files whose uidlist record lacks their UIDL (a kill before the record, or a login that gave them a UID): fixed now. */
  async recover(): Promise<void> {
    const entries = entriesOf(this.#drop);
    const named = entries.map((e) => migratedUidl(e.basename));
    // What the messages that are not ours report, then ours by the UIDL their names carry.
    entries.forEach((e, i) => {
      if (named[i] === undefined) this.#present.add(e.uidl);
    });
    const fix: Pending[] = [];
    entries.forEach((e, i) => {
      const uidl = named[i];
      if (uidl === undefined) return;
      if (this.#present.has(uidl)) {
        // Another message already reports this UIDL: two would be worse than one with its own.
        this.#present.add(e.uidl);
        this.#log.warn({ dir: this.#dir, file: e.basename }, 'migrated message left with its own UIDL: another message reports the one its name carries');
        return;
      }
      this.#present.add(uidl);
      if (uidl !== e.uidl) fix.push({ base: e.basename, uidl });
    });
    if (fix.length > 0) {
      this.#log.info({ dir: this.#dir, count: fix.length }, 'migrated messages without their UIDL in dovecot-uidlist: recorded now');
      this.#pending = fix;
      await this.#flush();
    }
  }

  async uidls(): Promise<ReadonlySet<string>> {
    return new Set(this.#present);
  }

  async add(message: MigratedMessage, body: Buffer): Promise<'added' | 'present'> {
    if (this.#closed) throw new Error('migration target closed');
    if (!UIDL.test(message.uidl)) throw new PermanentFailure(`not a valid UIDL: ${JSON.stringify(message.uidl.slice(0, 80))}`);
    if (this.#present.has(message.uidl)) return 'present';
    const base = `${migratedBase(message.uidl)},S=${body.length},W=${crlfSize(body)}`;
    const tmp = path.join(this.#dir, 'tmp', base);
    const final = path.join(this.#dir, 'cur', `${base}:2,${message.firstRetrieved !== null ? 'S' : ''}`);
    await fs.unlink(tmp).catch(() => undefined); // never there: the name is new; a leftover would be ours
    const fh = await fs.open(tmp, CREATE_FLAGS, 0o600);
    try {
      for (let off = 0; off < body.length; ) off += (await fh.write(body, off)).bytesWritten;
      const t = message.arrived.getTime();
      if (Number.isFinite(t)) await fh.utimes(message.arrived, message.arrived);
      if (this.#fsync) await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await fs.link(tmp, final).catch(async (e: NodeJS.ErrnoException) => {
        if (!['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK'].includes(e.code ?? '')) throw e;
        await fs.rename(tmp, final);
      });
    } finally {
      await fs.unlink(tmp).catch(() => undefined);
    }
    if (this.#fsync) await fsyncDir(path.join(this.#dir, 'cur'));
    this.#present.add(message.uidl);
    this.#pending.push({ base, uidl: message.uidl });
    if (this.#pending.length >= this.#batch) await this.#flush();
    return 'added';
  }

  /** Uidlist records for the pending files: P set on a record a scan already made, else a new record with the next UID. */
  async #flush(): Promise<void> {
    if (this.#pending.length === 0) return;
    const lock = await UidlistLock.acquire(this.#dir, { staleSeconds: 120 });
    try {
      let text: string;
      try {
        ({ text } = await readRegular(path.join(this.#dir, 'dovecot-uidlist')));
      } catch (e) {
        throw new TemporaryFailure('dovecot-uidlist cannot be read', { cause: e });
      }
      let list;
      try {
        list = parseUidlist(text);
      } catch (e) {
        if (!(e instanceof UidlistFormatError)) throw e;
        throw new TemporaryFailure(`dovecot-uidlist is damaged: ${e.message}`, { cause: e });
      }
      const byBase = new Map<string, UidlistRecord>(list.records.map((r) => [r.basename, r]));
      for (const p of this.#pending) {
        const r = byBase.get(p.base);
        if (r !== undefined) {
          if (extValue(r, 'P') !== p.uidl) setExt(r, 'P', p.uidl);
          continue;
        }
        const rec: UidlistRecord = { uid: list.nextUid++, ext: [['P', p.uidl]], basename: p.base };
        list.records.push(rec);
        byBase.set(p.base, rec);
      }
      // A kept UIDL in Dovecot's format for this maildrop's UIDVALIDITY names a UID: never given to a new message.
      const validity = list.uidValidity.toString(16).padStart(8, '0');
      for (const p of this.#pending) {
        const m = /^([0-9a-f]{8})([0-9a-f]{8})$/.exec(p.uidl);
        if (m !== null && m[2] === validity) list.nextUid = Math.max(list.nextUid, parseInt(m[1]!, 16) + 1);
      }
      await lock.replace(formatUidlist(list), this.#fsync);
    } catch (e) {
      await lock.release().catch(() => undefined);
      throw e;
    }
    this.#pending = [];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#flush();
    } finally {
      await this.#drop.release();
    }
  }
}
