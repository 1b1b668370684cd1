import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { SessionLock, UidlistLock } from './locks.js';

const HOST = os.hostname();

/** Field 22 of /proc/<pid>/stat: the process start time in clock ticks since boot. */
function startTime(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

/** The pid of a process that has already exited (and been reaped). */
function deadPid(): number {
  const r = spawnSync('true');
  expect(r.pid).toBeGreaterThan(0);
  return r.pid!;
}

let dir: string;
const children: ChildProcess[] = [];

/** A live process that is not us: `sleep 30`, killed after the test. */
async function liveOther(): Promise<number> {
  const c = spawn('sleep', ['30'], { stdio: 'ignore' });
  children.push(c);
  await once(c, 'spawn');
  return c.pid!;
}

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-locks-'));
});

afterEach(async () => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await fs.rm(dir, { recursive: true, force: true });
});

describe('session lock (flock on poplar-pop3.lock)', () => {
  /** Another process holding an exclusive flock on `file` (util-linux flock(1)) until it is killed. */
  async function heldByOther(file: string): Promise<ChildProcess> {
    const c = spawn('flock', ['--exclusive', '--close', file, 'sleep', '30'], { stdio: 'ignore' });
    children.push(c);
    await once(c, 'spawn');
    // flock(1) takes the lock before it runs sleep: wait until the lock is really held. The holder
    // waits for the lock (no --nonblock): the probe below holds it for an instant, and a holder that
    // gave up at that instant would never hold it. On a loaded machine starting can take seconds.
    const deadline = Date.now() + 20_000;
    while (spawnSync('flock', ['--nonblock', file, 'true']).status === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(spawnSync('flock', ['--nonblock', file, 'true']).status).not.toBe(0);
    return c;
  }

  it('creates the lock file once and keeps it; release drops the lock, not the file', () => {
    const file = path.join(dir, 'poplar-pop3.lock');
    const lock = SessionLock.tryAcquire(file);
    expect(lock).not.toBeNull();
    // While held, another open file of it cannot lock it (flock(1) from outside says so too).
    expect(spawnSync('flock', ['--nonblock', file, 'true']).status).not.toBe(0);
    lock!.release();
    lock!.release(); // twice is harmless
    expect(spawnSync('flock', ['--nonblock', file, 'true']).status).toBe(0);
    expect(readFileSync(file, 'latin1')).toBe(''); // kept, never unlinked
    const again = SessionLock.tryAcquire(file);
    expect(again).not.toBeNull();
    again!.release();
  });

  it('a second session of this same process is refused while the first holds it', () => {
    const file = path.join(dir, 'poplar-pop3.lock');
    const first = SessionLock.tryAcquire(file)!;
    expect(SessionLock.tryAcquire(file)).toBeNull();
    first.release();
    SessionLock.tryAcquire(file)!.release();
  });

  it('respects the lock of another process, and is free the moment that process dies (SIGKILL)', async () => {
    const file = path.join(dir, 'poplar-pop3.lock');
    const other = await heldByOther(file);
    expect(SessionLock.tryAcquire(file)).toBeNull();
    other.kill('SIGKILL');
    await once(other, 'exit');
    const lock = SessionLock.tryAcquire(file);
    expect(lock).not.toBeNull();
    lock!.release();
  }, 30_000);

  it('a lock file left by an older version or a crash (any content) locks nobody out', async () => {
    const file = path.join(dir, 'poplar-pop3.lock');
    await fs.writeFile(file, `${await liveOther()} ${startTime(process.pid)} ${HOST}\n`);
    const lock = SessionLock.tryAcquire(file);
    expect(lock).not.toBeNull();
    lock!.release();
  });

  it('does not follow a symbolic link planted as the lock file', async () => {
    const target = path.join(dir, 'elsewhere');
    await fs.writeFile(target, 'keep');
    await fs.symlink(target, path.join(dir, 'poplar-pop3.lock'));
    expect(() => SessionLock.tryAcquire(path.join(dir, 'poplar-pop3.lock'))).toThrow(/ELOOP/);
    expect(readFileSync(target, 'latin1')).toBe('keep');
  });
});

describe('uidlist dotlock (dovecot-uidlist.lock)', () => {
  const lockPath = (): string => path.join(dir, 'dovecot-uidlist.lock');

  it('writes "pid:host" without a newline, as Dovecot does, and release removes it', async () => {
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120 });
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
    await lock.release();
    await expect(fs.access(lockPath())).rejects.toThrow();
    await lock.release(); // idempotent
  });

  it('replace() renames dovecot-uidlist.tmp over the list and drops the lock', async () => {
    await fs.writeFile(path.join(dir, 'dovecot-uidlist'), 'old\n');
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120 });
    await lock.replace('3 V1 N1 Gx\n', true);
    expect(await fs.readFile(path.join(dir, 'dovecot-uidlist'), 'utf8')).toBe('3 V1 N1 Gx\n');
    expect((await fs.readdir(dir)).sort()).toEqual(['dovecot-uidlist']);
  });

  it('takes over a lock whose owner on this host is dead', async () => {
    await fs.writeFile(lockPath(), `${deadPid()}:${HOST}`);
    const t0 = Date.now();
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 5000 });
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
    await lock.release();
  });

  it('takes over a lock older than staleSeconds even if its owner lives', async () => {
    const pid = await liveOther();
    await fs.writeFile(lockPath(), `${pid}:${HOST}`);
    const old = new Date(Date.now() - 200_000);
    await fs.utimes(lockPath(), old, old);
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 5000 });
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
    await lock.release();
  });

  it('takes over an old lock from another host', async () => {
    await fs.writeFile(lockPath(), `1:elsewhere`);
    const old = new Date(Date.now() - 200_000);
    await fs.utimes(lockPath(), old, old);
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 2000 });
    // The lock is ours now: our pid and host in place of the other host's.
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
    await lock.release();
    await expect(fs.access(lockPath())).rejects.toThrow(/ENOENT/);
  });

  it('a FIFO or a link planted as the lock holds nobody for ever, and none is followed', async () => {
    const { execFileSync } = await import('node:child_process');
    const target = path.join(dir, 'target');
    await fs.writeFile(target, 'keep');
    const plants = [(): unknown => execFileSync('mkfifo', [lockPath()]), (): Promise<void> => fs.symlink(target, lockPath())];
    for (const plant of plants) {
      await plant();
      const old = new Date(Date.now() - 200_000);
      await fs.lutimes(lockPath(), old, old);
      const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 2000 });
      expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
      await lock.release();
    }
    expect(await fs.readFile(target, 'latin1')).toBe('keep');
  });

  it('replace() writes through no link planted at dovecot-uidlist.tmp', async () => {
    const target = path.join(dir, 'target');
    await fs.writeFile(target, 'keep');
    await fs.symlink(target, path.join(dir, 'dovecot-uidlist.tmp'));
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120 });
    await lock.replace('3 V1 N1 Gx\n', false);
    expect(await fs.readFile(target, 'latin1')).toBe('keep');
    expect(await fs.readFile(path.join(dir, 'dovecot-uidlist'), 'utf8')).toBe('3 V1 N1 Gx\n');
    expect((await fs.readdir(dir)).sort()).toEqual(['dovecot-uidlist', 'target']);
  });

  it('waits for a held lock and gets it once it is released', async () => {
    const pid = await liveOther();
    await fs.writeFile(lockPath(), `${pid}:${HOST}`);
    const t0 = Date.now();
    setTimeout(() => void fs.unlink(lockPath()), 300);
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 5000 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${process.pid}:${HOST}`);
    await lock.release();
  });

  it('times out with an error on a lock that stays held, and leaves that lock alone', async () => {
    const pid = await liveOther();
    await fs.writeFile(lockPath(), `${pid}:${HOST}`);
    const t0 = Date.now();
    await expect(UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 400 })).rejects.toThrow(/timed out/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(await fs.readFile(lockPath(), 'latin1')).toBe(`${pid}:${HOST}`);
  });

  it('a lock held by this process (another session) is waited for, not broken', async () => {
    const first = await UidlistLock.acquire(dir, { staleSeconds: 120 });
    await expect(UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 200 })).rejects.toThrow(/timed out/);
    await first.release();
    const second = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 200 });
    await second.release();
  });

  it('stops waiting when aborted', async () => {
    const pid = await liveOther();
    await fs.writeFile(lockPath(), `${pid}:${HOST}`);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await expect(UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 10_000, signal: ac.signal })).rejects.toThrow();
  });
});
