import { closeSync, openSync, promises as fs, constants as C, type Stats } from 'node:fs';
import path from 'node:path';
import { fsExt } from '../../platform/fs-ext.js';
import { LOCK_FORMATS, LockFile } from '../../platform/lock-file.js';
import { writeExclusive } from './safe-fs.js';

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
 * Dovecot's dotlock on dovecot-uidlist: `dovecot-uidlist.lock` holding
 * "pid:host" (a lock file, see platform/lock-file.ts for when one is stale).
 * A new list is written to `dovecot-uidlist.tmp`, made durable and renamed
 * over the original while the lock is held; then the lock file is removed.
 */
export class UidlistLock {
  readonly #dir: string;
  readonly #lock: LockFile;

  private constructor(dir: string, lock: LockFile) {
    this.#dir = dir;
    this.#lock = lock;
  }

  static async acquire(dir: string, opts: { staleSeconds: number; waitMs?: number; signal?: AbortSignal }): Promise<UidlistLock> {
    const lock = await LockFile.acquire(path.join(dir, 'dovecot-uidlist.lock'), {
      format: LOCK_FORMATS.dovecot,
      mode: 0o644,
      staleMs: opts.staleSeconds * 1000,
      waitMs: opts.waitMs ?? 15_000,
      signal: opts.signal,
    });
    return new UidlistLock(dir, lock);
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

  release(): Promise<void> {
    return this.#lock.release();
  }
}

/**
 * Maildrops open anywhere in this process, by any store instance: a second
 * session of one maildrop is refused here before any system call (the flock
 * on poplar-pop3.lock covers other processes).
 */
const OPEN_HERE = new Set<string>();

export const processLocks = {
  /** Claim `dir` for a session of this process; false when one already has it. */
  claim(dir: string): boolean {
    if (OPEN_HERE.has(dir)) return false;
    OPEN_HERE.add(dir);
    return true;
  },
  drop(dir: string): void {
    OPEN_HERE.delete(dir);
  },
};
