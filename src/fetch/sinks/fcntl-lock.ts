/**
 * Whole-file POSIX record locks (fcntl F_SETLK with F_WRLCK), the lock that
 * Postfix local(8), mutt, Dovecot and procmail take on an mbox. Node has no
 * fcntl(2); the native `fs-ext` addon supplies it and is loaded on first use,
 * so a machine where it did not build fails only when fcntl locking is asked for.
 *
 * POSIX locks belong to the process, not to the descriptor: a second lock from
 * the same process always succeeds, and closing ANY descriptor of the file in
 * this process drops the lock. Callers therefore serialise users of one file
 * inside the process themselves, and open no other descriptor of a locked file.
 */
import { fsExt } from '../../platform/fs-ext.js';

/** Whether fcntl locking is available in this installation. */
export function fcntlAvailable(): boolean {
  try {
    fsExt();
    return true;
  } catch {
    return false;
  }
}

function setlk(fd: number, type: number): Promise<void> {
  const ext = fsExt();
  return new Promise((resolve, reject) => {
    ext.fcntl(fd, 'setlk', type, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * Try once to take an exclusive lock on the whole file. Resolves false when
 * another process holds a conflicting lock (EAGAIN/EACCES); never blocks (a
 * blocking F_SETLKW would hold one of libuv's few pool threads).
 */
export async function tryLockExclusive(fd: number): Promise<boolean> {
  try {
    await setlk(fd, fsExt().constants.F_WRLCK);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EAGAIN' || code === 'EACCES') return false;
    throw e;
  }
}

export async function unlock(fd: number): Promise<void> {
  await setlk(fd, fsExt().constants.F_UNLCK);
}
