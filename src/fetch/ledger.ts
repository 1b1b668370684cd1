/**
 * The UIDL ledger of one fetch account: which messages were delivered (or
 * discarded by a rule) and when each was first seen. It is an append-only
 * journal, one line per record, made durable with fdatasync, and compacted by
 * writing a temporary file, fsyncing it and renaming it over the journal.
 *
 *   poplar-ledger 1                      header
 *   ? <ms> <uidl> <target>               intent: about to deliver (written and synced before the sink sees a byte)
 *   + <firstSeenMs> <d|x> <uidl>         done: delivered (d) or discarded by a rule (x)
 *
 * UIDLs are 1-70 octets in 0x21-0x7E (RFC 1939 §7), so they never contain a
 * space or a line end. A last line without its LF was torn by a crash; it is
 * dropped (its intent line, synced earlier, still stands). An intent without
 * a matching `+` is pending: the crash came between the intent and the
 * record, and the fetcher settles it before fetching (see reconcile.ts).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fsyncDir } from '../platform/fsync.js';
import { LOCK_FORMATS, LockBusyError, LockFile } from '../platform/lock-file.js';
import { writeExclusive } from '../platform/safe-file.js';

const HEADER = 'poplar-ledger 1';
/** A ledger lock not touched for this long is stale even if its pid runs (its holder touches it while it lives). */
const LOCK_STALE_MS = 300_000;
const UIDL_RE = /^[\x21-\x7e]{1,70}$/;
/** A time in ms: at most 15 digits, so it is a safe integer (a longer one would read as Infinity or lose digits). */
const TIME_RE = /^\d{1,15}$/;

export interface LedgerEntry {
  /** When the message was first recorded (ms since the epoch; the fetch clock). */
  readonly firstSeen: number;
  /** Discarded by a rule rather than delivered. */
  readonly discarded: boolean;
}

export interface PendingDelivery {
  readonly uidl: string;
  /** Real time (ms) the intent was written: files the sink wrote for it are no older. */
  readonly since: number;
  /** Where it was going: `-` for the account's sink, else the rule target's key. */
  readonly target: string;
}

export class LedgerError extends Error {
  override name = 'LedgerError';
}

/** Another process holds the ledger (a second fetch of the same account). */
export class LedgerBusyError extends LedgerError {
  override name = 'LedgerBusyError';
}

export interface LedgerOptions {
  /** fdatasync after each group of records (default true; false only for tests and benchmarks). */
  readonly fsync?: boolean;
}

export class Ledger {
  readonly file: string;
  readonly #entries = new Map<string, LedgerEntry>();
  readonly #pending = new Map<string, PendingDelivery>();
  readonly #fsync: boolean;
  #fh: fs.FileHandle | undefined;
  #lines = 0;
  /** Appends made, and how many of them a finished fdatasync covers (appends and syncs may overlap). */
  #written = 0;
  #synced = 0;
  #lock: LockFile | undefined;

  private constructor(file: string, fsync: boolean) {
    this.file = file;
    this.#fsync = fsync;
  }

  /** Lock, read (dropping a torn tail), compact when worthwhile, and open for appending. */
  static async open(file: string, opts: LedgerOptions = {}): Promise<Ledger> {
    const ledger = new Ledger(path.resolve(file), opts.fsync ?? true);
    await fs.mkdir(path.dirname(ledger.file), { recursive: true, mode: 0o700 });
    await ledger.#takeLock();
    try {
      const { torn } = await ledger.#load();
      if (torn || ledger.#lines > 2 * (ledger.#entries.size + ledger.#pending.size) + 1000) await ledger.compact();
      else if (ledger.#lines === 0) await ledger.compact(); // a new ledger starts with its header, durably
      ledger.#fh = await fs.open(ledger.file, 'a', 0o600);
    } catch (e) {
      await ledger.#releaseLock();
      throw e;
    }
    return ledger;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(uidl: string): LedgerEntry | undefined {
    return this.#entries.get(uidl);
  }

  has(uidl: string): boolean {
    return this.#entries.has(uidl);
  }

  uidls(): IterableIterator<string> {
    return this.#entries.keys();
  }

  /** Intents a crash left without their record, oldest first. */
  pending(): PendingDelivery[] {
    return [...this.#pending.values()];
  }

  /** Write intents (and sync) before the sink sees any of these messages. */
  async intend(items: readonly { uidl: string; target: string }[], now = Date.now()): Promise<void> {
    if (items.length === 0) return;
    let text = '';
    for (const it of items) {
      checkUidl(it.uidl);
      if (!/^[\x21-\x7e]+$/.test(it.target)) throw new RangeError(`bad ledger target ${JSON.stringify(it.target)}`);
      text += `? ${now} ${it.uidl} ${it.target}\n`;
      this.#pending.set(it.uidl, { uidl: it.uidl, since: now, target: it.target });
    }
    await this.#append(text);
    await this.sync();
  }

  /**
   * Record messages as delivered or discarded (written, not yet synced: call
   * sync() before acting on them, e.g. before DELE). A UIDL already recorded
   * keeps its first-seen time.
   */
  async record(items: readonly { uidl: string; discarded?: boolean }[], now: number): Promise<void> {
    if (items.length === 0) return;
    let text = '';
    for (const it of items) {
      checkUidl(it.uidl);
      const firstSeen = this.#entries.get(it.uidl)?.firstSeen ?? now;
      const discarded = it.discarded === true;
      text += `+ ${firstSeen} ${discarded ? 'x' : 'd'} ${it.uidl}\n`;
      this.#entries.set(it.uidl, { firstSeen, discarded });
      this.#pending.delete(it.uidl);
    }
    await this.#append(text);
  }

  /** Drop intents found not delivered (in memory; the next compaction forgets them on disk). */
  abandon(uidls: Iterable<string>): void {
    for (const u of uidls) this.#pending.delete(u);
  }

  /** Make every record written so far durable. */
  async sync(): Promise<void> {
    if (this.#synced >= this.#written || this.#fh === undefined) return;
    const upto = this.#written; // appends made after this point are not covered by this fdatasync
    if (this.#fsync) await this.#fh.datasync();
    this.#synced = Math.max(this.#synced, upto);
  }

  /**
   * Forget entries the server no longer lists (RFC 1939: a UIDL is never
   * reused, so once gone it cannot come back as another message). Returns how
   * many were dropped; compacts when anything changed.
   */
  async retainOnly(onServer: ReadonlySet<string>): Promise<number> {
    let dropped = 0;
    for (const u of [...this.#entries.keys()]) {
      if (!onServer.has(u)) {
        this.#entries.delete(u);
        dropped++;
      }
    }
    for (const u of [...this.#pending.keys()]) if (!onServer.has(u)) this.#pending.delete(u);
    if (dropped > 0 || this.#lines > 2 * (this.#entries.size + this.#pending.size) + 1000) await this.compact();
    return dropped;
  }

  /** Rewrite the journal as its live records: temporary file, fsync, rename, fsync of the directory. */
  async compact(): Promise<void> {
    await this.sync();
    const tmp = `${this.file}.tmp${process.pid}`;
    const lines = [HEADER];
    for (const [u, e] of this.#entries) lines.push(`+ ${e.firstSeen} ${e.discarded ? 'x' : 'd'} ${u}`);
    for (const p of this.#pending.values()) lines.push(`? ${p.since} ${p.uidl} ${p.target}`);
    // Created exclusively, never through a link; one left by a crash is replaced (unlinked, not followed).
    await writeExclusive(tmp, lines.join('\n') + '\n', { mode: 0o600, fsync: this.#fsync, replaceStale: true });
    try {
      await fs.rename(tmp, this.file);
    } catch (e) {
      await fs.unlink(tmp).catch(() => undefined);
      throw e;
    }
    if (this.#fsync) await fsyncDir(path.dirname(this.file));
    this.#lines = lines.length - 1;
    if (this.#fh !== undefined) {
      // The old descriptor points at the replaced inode.
      await this.#fh.close();
      this.#fh = await fs.open(this.file, 'a', 0o600);
    }
  }

  async close(): Promise<void> {
    try {
      await this.sync();
      await this.#fh?.close();
      this.#fh = undefined;
    } finally {
      await this.#releaseLock();
    }
  }

  async #append(text: string): Promise<void> {
    if (this.#fh === undefined) throw new LedgerError('ledger is closed');
    await this.#fh.write(text);
    this.#written++;
    this.#lines += countLines(text);
  }

  async #load(): Promise<{ torn: boolean }> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'latin1');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { torn: false };
      throw e;
    }
    if (text === '') return { torn: false };
    const torn = !text.endsWith('\n');
    const lines = text.split('\n');
    lines.pop(); // '' after the last LF, or the torn fragment
    if (lines[0] !== HEADER) throw new LedgerError(`${this.file}: not a poplar ledger (first line ${JSON.stringify(lines[0]?.slice(0, 40) ?? '')})`);
    for (let i = 1; i < lines.length; i++) {
      const f = lines[i]!.split(' ');
      if (f[0] === '+' && f.length === 4 && TIME_RE.test(f[1]!) && (f[2] === 'd' || f[2] === 'x') && UIDL_RE.test(f[3]!)) {
        this.#entries.set(f[3]!, { firstSeen: Number(f[1]), discarded: f[2] === 'x' });
        this.#pending.delete(f[3]!);
      } else if (f[0] === '?' && f.length === 4 && TIME_RE.test(f[1]!) && UIDL_RE.test(f[2]!)) {
        // A repeated intent for a UIDL already recorded (fetch = "all") is pending again until its record.
        this.#pending.set(f[2]!, { uidl: f[2]!, since: Number(f[1]), target: f[3]! });
      } else {
        throw new LedgerError(`${this.file}: line ${i + 1} is not a ledger record`);
      }
    }
    this.#lines = lines.length - 1;
    return { torn };
  }

  /**
   * `<ledger>.lock` holding our pid (a lock file, see platform/lock-file.ts):
   * a second fetch of the account is refused at once, not waited for.
   */
  async #takeLock(): Promise<void> {
    try {
      this.#lock = await LockFile.acquire(`${this.file}.lock`, { format: LOCK_FORMATS.pid, mode: 0o600, staleMs: LOCK_STALE_MS, waitMs: 0 });
    } catch (e) {
      if (!(e instanceof LockBusyError)) throw e;
      throw new LedgerBusyError(e.owner !== null ? `${this.file} is in use by process ${e.owner.pid}` : `cannot lock ${this.file}`, { cause: e });
    }
  }

  async #releaseLock(): Promise<void> {
    const lock = this.#lock;
    this.#lock = undefined;
    await lock?.release();
  }
}

function checkUidl(u: string): void {
  if (!UIDL_RE.test(u)) throw new RangeError(`invalid UIDL ${JSON.stringify(u)}`);
}

function countLines(s: string): number {
  let n = 0;
  for (let i = s.indexOf('\n'); i >= 0; i = s.indexOf('\n', i + 1)) n++;
  return n;
}
