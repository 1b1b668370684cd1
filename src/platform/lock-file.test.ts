import { spawn, spawnSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addUser, PasswdFileError } from '../auth/passwd-file/passwd-file.js';
import { Ledger, LedgerBusyError } from '../fetch/ledger.js';
import { MboxSink } from '../fetch/sinks/mbox.js';
import { UidlistLock } from '../store/maildir/locks.js';
import { LOCK_FORMATS, LockFile, nextLinkTemp } from './lock-file.js';

/** A pid that ran on this host and has exited. */
function deadPid(): number {
  const r = spawnSync('true');
  return r.pid!;
}

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-lockfile-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const old = new Date(Date.now() - 3_600_000);

describe('one definition of a stale lock file, for all four lock files', () => {
  it('a lock naming this process that this process does not hold (an earlier process with the same pid) is taken at once', async () => {
    // The uidlist lock of a server restarted in a container, where it got the same pid again.
    await fs.writeFile(path.join(dir, 'dovecot-uidlist.lock'), `${process.pid}:${os.hostname()}`);
    const t0 = Date.now();
    const lock = await UidlistLock.acquire(dir, { staleSeconds: 120, waitMs: 3000 });
    expect(Date.now() - t0).toBeLessThan(1000);
    await lock.release();
    // The same for the ledger (it never waits).
    const ledger = path.join(dir, 'a.ledger');
    await fs.writeFile(`${ledger}.lock`, String(process.pid));
    await (await Ledger.open(ledger, { fsync: false })).close();
  });

  it('the user database lock of a process that died is taken at once, not waited for', async () => {
    const users = path.join(dir, 'users');
    await fs.writeFile(`${users}.lock`, `${deadPid()}\n`);
    const t0 = Date.now();
    await addUser(users, { username: 'alice', password: '{PLAIN}a' });
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(await fs.readFile(users, 'utf8')).toContain('alice:');
    expect(await fs.readdir(dir)).toEqual(['users']);
  });

  it('a link planted at a lock name is judged by its age, never followed, and never makes a waiter spin', async () => {
    const users = path.join(dir, 'users');
    // A dangling link: the user database lock used to stat() it, fail, and try again without end.
    await fs.symlink(path.join(dir, 'nowhere'), `${users}.lock`);
    await fs.lutimes(`${users}.lock`, old, old);
    await addUser(users, { username: 'alice', password: '{PLAIN}a' });
    await expect(fs.access(path.join(dir, 'nowhere'))).rejects.toThrow(/ENOENT/);
    // A fresh one holds it, until the wait ends with LOCKED.
    await fs.symlink(path.join(dir, 'nowhere'), `${users}.lock`);
    const err = await addUser(users, { username: 'bob', password: '{PLAIN}b' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PasswdFileError);
    expect((err as PasswdFileError).code).toBe('LOCKED');
  }, 15_000);

  it('a live owner does not keep a lock that was not touched for the stale time (the ledger too)', async () => {
    const ledger = path.join(dir, 'b.ledger');
    await fs.writeFile(`${ledger}.lock`, String(process.ppid));
    await expect(Ledger.open(ledger, { fsync: false })).rejects.toBeInstanceOf(LedgerBusyError);
    await fs.utimes(`${ledger}.lock`, old, old);
    const l = await Ledger.open(ledger, { fsync: false });
    expect(await fs.readFile(`${ledger}.lock`, 'latin1')).toBe(String(process.pid));
    await l.close();
    await expect(fs.access(`${ledger}.lock`)).rejects.toThrow(/ENOENT/);
  });

  it('the mbox dotlock is written through no link planted at the name it is made under', async () => {
    const mbox = path.join(dir, 'inbox');
    const target = path.join(dir, 'target');
    await fs.writeFile(target, 'keep');
    await fs.symlink(target, nextLinkTemp(`${mbox}.lock`));
    await new MboxSink({ path: mbox, fsync: false }).deliver(Readable.from([Buffer.from('Subject: x\r\n\r\nbody\r\n')]), { account: 't', uidl: 'u', size: 0 });
    expect(await fs.readFile(target, 'latin1')).toBe('keep');
    expect((await fs.readdir(dir)).sort()).toEqual(['inbox', 'target']);
  });

  it('a holder keeps its lock fresh, so a long hold is never taken for stale', async () => {
    const file = path.join(dir, 'x.lock');
    const opts = { format: LOCK_FORMATS.pid, mode: 0o600, staleMs: 1500, waitMs: 0 };
    const lock = await LockFile.acquire(file, opts);
    await fs.utimes(file, old, old); // as if an hour had passed
    await new Promise((r) => setTimeout(r, 1300)); // the holder touches it every staleMs/3 (at least 1 s)
    // Another process's view: a live owner (ours) and a fresh file.
    const child = spawn(process.execPath, ['--import', 'tsx', '-e', `
      const { LockFile, LOCK_FORMATS } = await import(${JSON.stringify(path.resolve('src/platform/lock-file.ts'))});
      try { await LockFile.acquire(${JSON.stringify(file)}, { format: LOCK_FORMATS.pid, mode: 0o600, staleMs: 1500, waitMs: 0 }); process.exit(0); }
      catch (e) { process.exit(e.name === 'LockBusyError' ? 3 : 4); }
    `]);
    const code = await new Promise((r) => child.on('exit', r));
    expect(code).toBe(3);
    await lock.release();
    await expect(LockFile.acquire(file, opts).then((l) => l.release())).resolves.toBeUndefined();
  });
});

describe('a lock file is never seen without its owner', () => {
  it('taking over a dead process\'s lock also removes the names dead processes were making it under', async () => {
    const file = path.join(dir, 'dovecot-uidlist.lock');
    const dead = deadPid();
    await fs.writeFile(file, `${dead}:${os.hostname()}`);
    await fs.writeFile(`${file}.poplar.${os.hostname()}.${dead}.3`, `${dead}:${os.hostname()}`);
    await fs.writeFile(`${file}.poplar.${os.hostname()}.${process.pid}.999999`, 'a live process (this one) is making it');
    await fs.writeFile(`${file}.poplar.other-host.${dead}.1`, 'another host: not ours to judge');
    const lock = await LockFile.acquire(file, { format: LOCK_FORMATS.dovecot, mode: 0o644, staleMs: 120_000, waitMs: 0 });
    expect(await fs.readFile(file, 'latin1')).toBe(`${process.pid}:${os.hostname()}`);
    await lock.release();
    expect((await fs.readdir(dir)).sort()).toEqual([`dovecot-uidlist.lock.poplar.${os.hostname()}.${process.pid}.999999`, `dovecot-uidlist.lock.poplar.other-host.${dead}.1`].sort());
  });

  /**
   * A process killed at any moment while it takes and releases a lock leaves
   * either no lock or one naming it (stale at once, since it is dead), never
   * an empty one, which would name nobody and hold everyone off for the whole
   * stale time (two minutes for dovecot-uidlist.lock).
   */
  it('after a SIGKILL at a random moment of taking and releasing it, the next taker gets it at once', async () => {
    const file = path.join(dir, 'dovecot-uidlist.lock');
    const opts = { format: LOCK_FORMATS.dovecot, mode: 0o644, staleMs: 120_000, waitMs: 300 };
    for (let round = 0; round < 12; round++) {
      const child = spawn(process.execPath, ['--import', 'tsx', '-e', `
        const { LockFile, LOCK_FORMATS } = await import(${JSON.stringify(path.resolve('src/platform/lock-file.ts'))});
        const opts = { format: LOCK_FORMATS.dovecot, mode: 0o644, staleMs: 120000, waitMs: 60000 };
        process.stdout.write('looping\\n');
        for (;;) await (await LockFile.acquire(${JSON.stringify(file)}, opts)).release();
      `], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
      await new Promise((r) => setTimeout(r, 30 + Math.random() * 70));
      const exited = new Promise((r) => child.on('exit', r));
      child.kill('SIGKILL');
      await exited;
      const left = await fs.readFile(file, 'latin1').catch(() => null);
      const lock = await LockFile.acquire(file, opts).catch((e: Error) => e);
      expect(lock, `round ${round}: the lock left behind held ${JSON.stringify(left)}`).toBeInstanceOf(LockFile);
      await (lock as LockFile).release();
    }
    // No lock stays; at most the own name of a process killed just before its link (removed once a stale lock is found).
    expect((await fs.readdir(dir)).filter((n) => !/^dovecot-uidlist\.lock\.poplar\..+\.\d+\.\d+$/.test(n))).toEqual([]);
  }, 60_000);
});
