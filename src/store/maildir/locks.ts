import { promises as fs, constants as C, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Start time of a process in clock ticks since boot (Linux), to tell a live owner from a reused pid. */
function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    // Field 22; the command name (field 2) may contain spaces, so count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const SELF_START = processStartTime(process.pid) ?? '0';
const HOST = os.hostname();

/**
 * The POP3 maildrop lock (RFC 1939 §8): one file per maildrop holding
 * "pid starttime host". A lock whose owner process on this host is gone (or
 * whose pid now belongs to another process) is stale and taken over, so a
 * SIGKILLed server never leaves a maildrop locked.
 */
export async function acquireSessionLock(file: string, heldHere: (file: string) => boolean): Promise<boolean> {
  const content = `${process.pid} ${SELF_START} ${HOST}\n`;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      // Synchronous on purpose: a create of a few bytes takes microseconds on a local
      // file system, far less than a round trip through the thread pool, and it runs on every login.
      writeFileSync(file, content, { flag: 'wx', mode: 0o600 });
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let owner: string;
    try {
      owner = await fs.readFile(file, 'latin1');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // released meanwhile
      throw e;
    }
    if (!isStale(owner, file, heldHere)) return false;
    // Remove only the stale file we read, not a fresh lock someone took in between.
    await fs.unlink(file).catch(() => undefined);
  }
  return false;
}

function isStale(owner: string, file: string, heldHere: (file: string) => boolean): boolean {
  const [pidText, start, host] = owner.trim().split(' ');
  const pid = Number(pidText);
  if (!Number.isInteger(pid) || pid <= 0) return true; // unreadable: a torn write from a crash
  if (host !== undefined && host !== HOST) return false; // another machine: cannot tell, keep it
  if (pid === process.pid) return start !== SELF_START || !heldHere(file);
  if (!pidAlive(pid)) return true;
  const now = processStartTime(pid);
  return now !== undefined && start !== undefined && now !== start;
}

export async function releaseSessionLock(file: string): Promise<void> {
  try {
    unlinkSync(file); // see acquireSessionLock: a tiny metadata operation on every logout
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/**
 * Dovecot's dotlock on dovecot-uidlist: `dovecot-uidlist.lock` created
 * exclusively holding "pid:host". A new list is written to
 * `dovecot-uidlist.tmp`, made durable and renamed over the original while the
 * lock is held; then the lock file is removed. A lock whose owner on this host
 * is dead, or older than `staleSeconds`, belongs to nobody.
 */
export class UidlistLock {
  readonly #dir: string;
  readonly #lockPath: string;
  #held = true;

  private constructor(dir: string, lockPath: string) {
    this.#dir = dir;
    this.#lockPath = lockPath;
  }

  static async acquire(dir: string, opts: { staleSeconds: number; waitMs?: number; signal?: AbortSignal }): Promise<UidlistLock> {
    const lockPath = path.join(dir, 'dovecot-uidlist.lock');
    const deadline = Date.now() + (opts.waitMs ?? 15_000);
    let delay = 5;
    for (;;) {
      opts.signal?.throwIfAborted();
      try {
        const fh = await fs.open(lockPath, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o644);
        try {
          await fh.writeFile(`${process.pid}:${HOST}`);
        } finally {
          await fh.close();
        }
        return new UidlistLock(dir, lockPath);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      const state = await dotlockState(lockPath, opts.staleSeconds);
      if (state === 'gone') continue;
      if (state === 'stale') {
        await fs.unlink(lockPath).catch(() => undefined);
        continue;
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lockPath}`);
      await sleep(delay);
      delay = Math.min(delay * 2, 200);
    }
  }

  /** Replace dovecot-uidlist atomically, then release the lock. */
  async replace(content: string, fsync: boolean): Promise<void> {
    const tmp = path.join(this.#dir, 'dovecot-uidlist.tmp');
    try {
      const fh = await fs.open(tmp, C.O_WRONLY | C.O_CREAT | C.O_TRUNC, 0o600);
      try {
        await fh.writeFile(content);
        if (fsync) await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rename(tmp, path.join(this.#dir, 'dovecot-uidlist'));
    } finally {
      await this.release();
    }
  }

  async release(): Promise<void> {
    if (!this.#held) return;
    this.#held = false;
    await fs.unlink(this.#lockPath).catch(() => undefined);
  }
}

async function dotlockState(lockPath: string, staleSeconds: number): Promise<'held' | 'stale' | 'gone'> {
  try {
    const [st, content] = await Promise.all([fs.stat(lockPath), fs.readFile(lockPath, 'latin1')]);
    const [pidText, host] = content.split(':');
    const pid = Number(pidText);
    if (host === HOST && Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid)) return 'stale';
    return Date.now() - st.mtimeMs > staleSeconds * 1000 ? 'stale' : 'held';
  } catch {
    return 'gone'; // released between our open and stat: try again at once
  }
}
