/**
 * Lock files ("dotlocks"): a file whose existence is the lock, created
 * exclusively next to what it protects and removed on release. Poplar uses
 * four, each under the name and in the format its other readers expect:
 *
 *   dovecot-uidlist.lock   in a maildrop   "<pid>:<host>"       (Dovecot reads it)
 *   <mbox>.lock            next to an mbox "<pid> <host>\n"     (MTAs and mail readers)
 *   <ledger>.lock          fetch state     "<pid>"
 *   <passwd-file>.lock     user database   "<pid>\n"
 *
 * Creating: the content is first written under a name of this process's own
 * (`<lock>.poplar.<host>.<pid>.<n>`, O_CREAT|O_EXCL|O_NOFOLLOW) and hard-linked
 * into place, as MTAs make mbox locks and Dovecot its dotlocks. So nothing
 * already at the lock's name (a lock of another process, a planted link) is
 * ever opened or written through, and the lock is never seen empty: a
 * process killed while taking it leaves no lock or one naming it, never one
 * that names nobody and would hold everyone off for the whole stale time.
 * The own name is removed right after the link; one left by a process
 * killed in between is removed by whoever next finds a stale lock there (or
 * by removeDeadLinkTemps). On a file system without hard links the lock is
 * created directly with O_EXCL and then written; a lock this process fails
 * to write (disk full) is removed at once.
 *
 * Stale, one rule for all four: a lock is stale (left over, and removed by
 * whoever finds it) when
 *   - its content names a process of this host that no longer runs (a format
 *     without a host, the ledger's and the user database's, names one of this
 *     host), or names this very process while this process does not hold it
 *     (left by an earlier process with the same pid, as after a restart in a
 *     container); or
 *   - it was not modified for the lock's stale time, whoever it names: a lock
 *     of another host, one that names nobody (being written, damaged, another
 *     program's format) and something else than a file at the name (a link,
 *     a FIFO: judged by lstat, never opened) are judged by age alone.
 * A holder touches its lock every third of the stale time, so a live holder's
 * lock never ages; age catches a holder that hangs, and a pid that an
 * unrelated process reuses.
 *
 * Waiting: a held lock is tried again after 5 ms, doubling up to 200 ms
 * (with jitter), until the caller's wait time; then LockBusyError.
 *
 * The kernel locks (flock on a maildrop's poplar-pop3.lock, fcntl on an mbox)
 * are no lock files: the kernel drops them with their process, so nothing
 * can be stale. They live with their users (store/maildir/locks.ts,
 * fetch/sinks/fcntl-lock.ts) on top of platform/fs-ext.ts.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { readRegular, writeExclusive } from './safe-file.js';

export const HOST = os.hostname();

/** Whether process `pid` runs on this host (EPERM: it runs, as another user). */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface LockOwner {
  readonly pid: number;
  readonly host: string;
}

/** What a lock file holds: this process's content, and the owner a content names (null: none). */
export interface LockFormat {
  readonly content: () => string;
  readonly owner: (text: string) => LockOwner | null;
}

function ownerOf(m: RegExpExecArray | null, host?: string): LockOwner | null {
  if (m === null) return null;
  const pid = Number(m[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? { pid, host: host ?? m[2]! } : null;
}

/** The lock formats in use (see the table above). */
export const LOCK_FORMATS = {
  /** Dovecot's dotlocks: "<pid>:<host>". */
  dovecot: { content: () => `${process.pid}:${HOST}`, owner: (t) => ownerOf(/^(\d+):(.*)$/s.exec(t)) },
  /** mbox dotlocks: "<pid> <host>\n". */
  mbox: { content: () => `${process.pid} ${HOST}\n`, owner: (t) => ownerOf(/^(\d+) (\S+)\n$/.exec(t)) },
  /** The fetch ledger's: "<pid>" (this host). */
  pid: { content: () => String(process.pid), owner: (t) => ownerOf(/^\s*(\d+)\s*$/.exec(t), HOST) },
  /** The user database's: "<pid>\n" (this host). */
  pidLine: { content: () => `${process.pid}\n`, owner: (t) => ownerOf(/^\s*(\d+)\s*$/.exec(t), HOST) },
} satisfies Record<string, LockFormat>;

export interface LockFileOptions {
  readonly format: LockFormat;
  /** Permission bits of the lock file. */
  readonly mode: number;
  /** Age (since the last modification) after which a lock is stale whoever holds it. */
  readonly staleMs: number;
  /** How long to wait for a held lock (0: one look). */
  readonly waitMs: number;
  readonly signal?: AbortSignal | undefined;
}

/** The lock is held by someone else, and was not released or stale within the wait time. */
export class LockBusyError extends Error {
  override name = 'LockBusyError';
  constructor(
    readonly file: string,
    /** Who the lock names, when it names someone. */
    readonly owner: LockOwner | null,
  ) {
    super(`timed out waiting for ${file}${owner !== null ? ` (held by process ${owner.pid} on ${owner.host})` : ''}`);
  }
}

/** Lock files this process holds or is creating, by absolute path: a lock naming this process is held only if listed here. */
const HELD = new Map<string, number>();

function hold(file: string, n: number): void {
  const c = (HELD.get(file) ?? 0) + n;
  if (c > 0) HELD.set(file, c);
  else HELD.delete(file);
}

export class LockFile {
  readonly path: string;
  readonly #timer: NodeJS.Timeout;
  #held = true;

  private constructor(file: string, staleMs: number) {
    this.path = file;
    // lutimes: a link put in the lock's place is not followed.
    this.#timer = setInterval(() => {
      const now = new Date();
      fs.lutimes(file, now, now).catch(() => undefined);
    }, Math.max(1000, Math.floor(staleMs / 3)));
    this.#timer.unref();
  }

  static async acquire(file: string, opts: LockFileOptions): Promise<LockFile> {
    const abs = path.resolve(file);
    const deadline = Date.now() + opts.waitMs;
    let delay = 5;
    for (let attempt = 0; ; attempt++) {
      opts.signal?.throwIfAborted();
      hold(abs, 1); // before the file exists: another acquirer in this process must not take it for left over
      try {
        await createViaLink(abs, opts);
        return new LockFile(abs, opts.staleMs);
      } catch (e) {
        hold(abs, -1);
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const { state, owner } = await judge(abs, opts);
      if (state === 'stale') {
        await fs.unlink(abs).catch(() => undefined);
        // Its holder died: so may have others while making it, leaving their own names behind.
        await removeDeadLinkTemps(abs);
      }
      // Stale or gone: try again at once (a few times: someone may be taking it just as fast).
      if (state !== 'held' && attempt < 20) continue;
      if (Date.now() >= deadline) throw new LockBusyError(abs, owner);
      await sleep(delay / 2 + Math.random() * delay, undefined, opts.signal ? { signal: opts.signal } : undefined);
      delay = Math.min(delay * 2, 200);
    }
  }

  /** Remove the lock. Twice is harmless. */
  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    clearInterval(this.#timer);
    try {
      await fs.unlink(this.path).catch(() => undefined);
    } finally {
      hold(this.path, -1);
    }
  }
}

/** Whether the lock at `file` is held, stale (see above) or gone meanwhile, and whom it names. */
async function judge(file: string, opts: LockFileOptions): Promise<{ state: 'held' | 'stale' | 'gone'; owner: LockOwner | null }> {
  let owner: LockOwner | null = null;
  let mtimeMs: number;
  try {
    const st = await fs.lstat(file);
    mtimeMs = st.mtimeMs;
    // Something else than a file (a link, a FIFO) names no owner: only its age counts.
    if (st.isFile()) owner = opts.format.owner((await readRegular(file)).text);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { state: 'gone', owner }; // released meanwhile
    mtimeMs ??= Date.now(); // cannot even be looked at: held, for all we can tell
  }
  if (owner !== null && owner.host === HOST) {
    const dead = owner.pid === process.pid ? (HELD.get(file) ?? 0) === 0 : !processAlive(owner.pid);
    if (dead) return { state: 'stale', owner };
  }
  return { state: Date.now() - mtimeMs > opts.staleMs ? 'stale' : 'held', owner };
}

/** errno codes of file systems without hard links. */
const NO_LINK = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS']);

/** Counts this process's link temps, so two takers of one lock in this process never share one. */
let linkTemps = 0;

/** The name under which this process writes a lock before linking it into place: `<lock>.poplar.<host>.<pid>.<n>`. */
function linkTemp(file: string, n: number): string {
  return `${file}.poplar.${HOST}.${process.pid}.${n}`;
}

/** The name the next lock of `file` this process takes is written under before the link (what tests plant things at). */
export function nextLinkTemp(file: string): string {
  return linkTemp(path.resolve(file), linkTemps);
}

async function createViaLink(file: string, opts: LockFileOptions): Promise<void> {
  const tmp = linkTemp(file, linkTemps++);
  // One already there was left by an earlier process with this pid: replaced, never written through.
  await writeExclusive(tmp, opts.format.content(), { mode: opts.mode, replaceStale: true });
  try {
    await fs.link(tmp, file);
    return;
  } catch (e) {
    if (!NO_LINK.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
  } finally {
    await fs.unlink(tmp).catch(() => undefined);
  }
  await writeExclusive(file, opts.format.content(), { mode: opts.mode });
}

/**
 * Remove the names under which processes of this host that no longer run
 * were making a lock of `file`: one killed at that moment leaves its own
 * behind.
 */
export async function removeDeadLinkTemps(file: string): Promise<void> {
  const dir = path.dirname(file);
  const prefix = `${path.basename(file)}.poplar.${HOST}.`;
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  for (const n of names) {
    // <pid>.<n>, or <pid> alone as earlier versions named it.
    const m = n.startsWith(prefix) ? /^(\d+)(?:\.\d+)?$/.exec(n.slice(prefix.length)) : null;
    if (m === null) continue;
    const pid = Number(m[1]);
    if (pid !== process.pid && !processAlive(pid)) await fs.unlink(path.join(dir, n)).catch(() => undefined);
  }
}
