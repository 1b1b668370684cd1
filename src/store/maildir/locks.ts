import { closeSync, openSync, promises as fs, constants as C, type Stats } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fsExt } from '../../platform/fs-ext.js';
import { readRegular, writeExclusive } from './safe-fs.js';

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const HOST = os.hostname();

/**
 * The POP3 maildrop lock (RFC 1939 §8): flock(2), exclusive and
 * non-blocking, on a lock file kept in the maildrop. The kernel holds the
 * lock for the open file and drops it when the file is closed or the process
 * dies, however it dies, so a killed server never leaves a maildrop locked,
 * and nothing is created or removed per session. The file itself stays: it is
 * never unlinked, because a session that opened the old file while another
 * unlinked it and a third created a new one would lock a different inode.
 * flock conflicts between two descriptors of the same process too, so it
 * also separates sessions within one process (and between --workers).
 */
export class SessionLock {
  #fd: number | undefined;

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /** The lock, or null when another session holds it. Synchronous: three system calls on every login. */
  static tryAcquire(file: string): SessionLock | null {
    const fd = openSync(file, C.O_RDWR | C.O_CREAT | C.O_NOFOLLOW, 0o600);
    try {
      fsExt().flockSync(fd, 'exnb');
      return new SessionLock(fd);
    } catch (e) {
      closeSync(fd);
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') return null;
      throw e;
    }
  }

  /** Closing the file drops the lock. Twice is harmless. */
  release(): void {
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd !== undefined) closeSync(fd);
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
        // A lock this process fails to write (disk full) is removed at once: an empty lock
        // would hold off every other login until it is stale.
        await writeExclusive(lockPath, `${process.pid}:${HOST}`, { mode: 0o644 });
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

  /**
   * Write a new dovecot-uidlist (temporary file, rename) and release the lock.
   * Returns the new file's stat, taken before the lock is released: while no
   * other writer can have touched it, so it describes exactly `content`.
   */
  async replace(content: string, fsync: boolean): Promise<Stats> {
    const tmp = path.join(this.#dir, 'dovecot-uidlist.tmp');
    const target = path.join(this.#dir, 'dovecot-uidlist');
    try {
      // Under the lock nobody else writes the temporary file: one already there is stale, or planted.
      await writeExclusive(tmp, content, { mode: 0o600, fsync, replaceStale: true });
      await fs.rename(tmp, target);
      return await fs.stat(target);
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
    const st = await fs.lstat(lockPath);
    // Something else than a file (a link, a FIFO) tells no owner: only its age counts.
    const content = st.isFile() ? (await readRegular(lockPath)).text : '';
    const [pidText, host] = content.split(':');
    const pid = Number(pidText);
    if (host === HOST && Number.isInteger(pid) && pid > 0 && pid !== process.pid && !pidAlive(pid)) return 'stale';
    return Date.now() - st.mtimeMs > staleSeconds * 1000 ? 'stale' : 'held';
  } catch {
    return 'gone'; // released between our open and stat: try again at once
  }
}
