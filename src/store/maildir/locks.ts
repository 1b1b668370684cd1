import { promises as fs, constants as C, readFileSync } from 'node:fs';
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
      const fh = await fs.open(file, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
      try {
        await fh.writeFile(content);
      } finally {
        await fh.close();
      }
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
  await fs.unlink(file).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

/**
 * Dovecot's dotlock on dovecot-uidlist: `dovecot-uidlist.lock` created
 * exclusively; the new uidlist is written into the lock file itself and renamed
 * over the original, which publishes the change and releases the lock in one
 * step. A lock older than `staleSeconds` belongs to a dead writer.
 */
export class UidlistLock {
  readonly #lockPath: string;
  readonly #targetPath: string;
  #fh: fs.FileHandle | null;

  private constructor(lockPath: string, targetPath: string, fh: fs.FileHandle) {
    this.#lockPath = lockPath;
    this.#targetPath = targetPath;
    this.#fh = fh;
  }

  static async acquire(dir: string, opts: { staleSeconds: number; waitMs?: number; signal?: AbortSignal }): Promise<UidlistLock> {
    const target = path.join(dir, 'dovecot-uidlist');
    const lockPath = `${target}.lock`;
    const deadline = Date.now() + (opts.waitMs ?? 15_000);
    let delay = 5;
    for (;;) {
      opts.signal?.throwIfAborted();
      try {
        const fh = await fs.open(lockPath, C.O_WRONLY | C.O_CREAT | C.O_EXCL, 0o600);
        return new UidlistLock(lockPath, target, fh);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      try {
        const st = await fs.stat(lockPath);
        if (Date.now() - st.mtimeMs > opts.staleSeconds * 1000) {
          await fs.unlink(lockPath).catch(() => undefined);
          continue;
        }
      } catch {
        continue; // vanished between open and stat: try again now
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${lockPath}`);
      await sleep(delay);
      delay = Math.min(delay * 2, 200);
    }
  }

  /** Write the new content, make it durable and rename it into place (releases the lock). */
  async replace(content: string, fsync: boolean): Promise<void> {
    const fh = this.#fh!;
    this.#fh = null;
    try {
      await fh.writeFile(content);
      if (fsync) await fh.sync();
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fs.unlink(this.#lockPath).catch(() => undefined);
      throw e;
    }
    await fh.close();
    await fs.rename(this.#lockPath, this.#targetPath);
  }

  /** Give up without changing dovecot-uidlist. */
  async release(): Promise<void> {
    const fh = this.#fh;
    if (fh === null) return;
    this.#fh = null;
    await fh.close().catch(() => undefined);
    await fs.unlink(this.#lockPath).catch(() => undefined);
  }
}
