/**
 * A maildrop written by someone hostile (its owner, a delivery agent, another
 * account): what it holds must never make the server read, write, rename or
 * remove anything outside it, nor hang, nor announce a nonsensical size. Real
 * files, a real server on a real socket.
 */
import { execFileSync } from 'node:child_process';
import { promises as fs, readFileSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { createLogger } from '../../src/observability/log.js';
import { Pop3Server } from '../../src/server/server.js';
import { forgetRememberedScans, MaildirStore, type MaildirStoreOptions } from '../../src/store/maildir/maildir-store.js';
import { missingAtRun, type Peer } from '../helpers/peers.js';
import { testSettings } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

class MountRefused extends Error {}
const TMPFS_MOUNT: Peer = { name: 'mounting a small tmpfs (a full file system)', install: 'run the tests as root' };

interface Env {
  dir: string;
  root: string;
  port: number;
  log: string;
  stop(): Promise<void>;
}

const envs: Env[] = [];
afterEach(async () => {
  for (const e of envs.splice(0)) await e.stop();
});

/**
 * A server over DIR/mail with users alice, bob (password "secret"), logging to DIR/log.jsonl.
 * With `tmpfsKiB`, DIR/mail is a tmpfs of that size (needs root; the caller handles a refusal).
 */
async function start(store: Partial<MaildirStoreOptions> = {}, tmpfsKiB?: number): Promise<Env> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-hostile-'));
  const root = path.join(dir, 'mail');
  await fs.mkdir(root);
  let mounted = false;
  if (tmpfsKiB !== undefined) {
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${tmpfsKiB}k,mode=0755`, 'tmpfs', root], { stdio: 'pipe' });
      mounted = true;
    } catch (e) {
      await fs.rm(dir, { recursive: true, force: true });
      throw new MountRefused(String(e));
    }
  }
  await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\nbob:{PLAIN}secret::::::\n', { mode: 0o600 });
  const log = path.join(dir, 'log.jsonl');
  const logger = createLogger({ level: 'info', file: log });
  const server = new Pop3Server({
    settings: testSettings(),
    authenticator: new PasswdFileAuthenticator(path.join(dir, 'users'), { checkIntervalMs: 0 }),
    store: new MaildirStore({ root, logger, fsync: false, ...store }),
    logger,
  });
  const [bound] = await server.listen([{ host: '127.0.0.1', port: 0, tls: false }]);
  forgetRememberedScans();
  const env: Env = {
    dir,
    root,
    port: bound!.port,
    log,
    stop: async () => {
      await server.close(0);
      if (mounted) execFileSync('umount', [root]);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
  envs.push(env);
  return env;
}

async function maildrop(root: string, user: string): Promise<string> {
  const box = path.join(root, user);
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });
  return box;
}

async function login(env: Env, user = 'alice'): Promise<Wire> {
  const w = await Wire.connect(env.port);
  expect(await w.line()).toMatch(/^\+OK/);
  expect(await w.cmd(`USER ${user}`)).toMatch(/^\+OK/);
  return w;
}

async function loggedIn(env: Env, user = 'alice'): Promise<Wire> {
  const w = await login(env, user);
  expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
  return w;
}

async function logLines(env: Env, text: string): Promise<string[]> {
  await new Promise((r) => setTimeout(r, 100)); // the log file is written asynchronously
  return (await fs.readFile(env.log, 'utf8')).split('\n').filter((l) => l.includes(text));
}

const GOOD = 'Subject: real\n\nthe real message\n';
const GOOD_WIRE = 'Subject: real\r\n\r\nthe real message\r\n.\r\n';

describe('entries in cur/ and new/ that are not regular files', () => {
  it('a symbolic link to a secret is never served; it is skipped at the scan and logged once', async () => {
    const env = await start();
    const secret = path.join(env.dir, 'secret.txt');
    await fs.writeFile(secret, 'root-only secret\n', { mode: 0o600 });
    const box = await maildrop(env.root, 'alice');
    await fs.writeFile(path.join(box, 'cur', '1796000000.M0P1.good:2,'), GOOD);
    await fs.symlink(secret, path.join(box, 'cur', '1796000000.M1P1.evil:2,'));
    await fs.symlink(secret, path.join(box, 'new', '1796000000.M2P1.evil2'));
    await fs.symlink('/dev/zero', path.join(box, 'cur', '1796000000.M3P1.zero,S=10,W=10:2,'));
    for (let round = 0; round < 2; round++) {
      const w = await loggedIn(env);
      expect(await w.cmd('STAT')).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
      const r = await w.cmdMulti('RETR 1');
      expect(r.body.toString('latin1')).toBe(GOOD_WIRE);
      expect(await w.cmd('RETR 2')).toMatch(/^-ERR/);
      expect(await w.cmd('TOP 2 0')).toMatch(/^-ERR/);
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      await w.closed();
      forgetRememberedScans(); // the next login scans again: the entries must not be logged again
    }
    expect(readFileSync(secret, 'utf8')).toBe('root-only secret\n');
    expect((await fs.lstat(path.join(box, 'new', '1796000000.M2P1.evil2'))).isSymbolicLink()).toBe(true); // left alone
    const skipped = await logLines(env, 'not a regular file');
    // Each link once, though the maildrop was scanned twice.
    expect(skipped).toHaveLength(3);
    for (const name of ['cur/1796000000.M1P1.evil:2,', 'new/1796000000.M2P1.evil2', 'cur/1796000000.M3P1.zero,S=10,W=10:2,']) {
      expect(skipped.filter((l) => l.includes(`alice/${name}"`))).toHaveLength(1);
    }
  });

  it('a directory, a FIFO or a link in place of a message file after the scan: -ERR before any +OK, the session goes on', async () => {
    const env = await start();
    const secret = path.join(env.dir, 'secret.txt');
    await fs.writeFile(secret, 'root-only secret\n', { mode: 0o600 });
    const box = await maildrop(env.root, 'alice');
    const names = ['1796000001.M1P1.h,S=5,W=5:2,', '1796000002.M1P1.h,S=5,W=5:2,', '1796000003.M1P1.h,S=5,W=5:2,', '1796000004.M1P1.h:2,'];
    for (const n of names) await fs.writeFile(path.join(box, 'cur', n), 'abc\r\n');
    await fs.writeFile(path.join(box, 'cur', names[3]!), GOOD);
    const w = await loggedIn(env);
    expect(await w.cmd('STAT')).toMatch(/^\+OK 4 /);
    // Replaced behind the session's back.
    await fs.rm(path.join(box, 'cur', names[0]!));
    await fs.mkdir(path.join(box, 'cur', names[0]!));
    await fs.rm(path.join(box, 'cur', names[1]!));
    await fs.symlink(secret, path.join(box, 'cur', names[1]!));
    await fs.rm(path.join(box, 'cur', names[2]!));
    execFileSync('mkfifo', [path.join(box, 'cur', names[2]!)]);
    for (const cmd of ['RETR 1', 'TOP 1 0', 'RETR 2', 'TOP 2 0', 'RETR 3', 'TOP 3 0']) expect(await w.cmd(cmd), cmd).toMatch(/^-ERR/);
    expect((await w.cmdMulti('RETR 4')).body.toString('latin1')).toBe(GOOD_WIRE);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    expect(readFileSync(secret, 'utf8')).toBe('root-only secret\n');
  });
});

describe('a forged poplar-scan.cache', () => {
  /** The key the cache header carries: the inode and times of cur/, new/ and the uidlist, readable by anyone. */
  function scanKey(box: string): string {
    const c = statSync(path.join(box, 'cur'));
    const n = statSync(path.join(box, 'new'));
    const u = statSync(path.join(box, 'dovecot-uidlist'));
    return `${c.ino}:${c.mtimeMs}:${c.ctimeMs}|${n.ino}:${n.mtimeMs}:${n.ctimeMs}|${u.ino}:${u.size}:${u.mtimeMs}:${u.ctimeMs}`;
  }

  it('names leading out of cur/ are refused: nothing outside is served, unlinked or renamed; the cache is rebuilt', async () => {
    const env = await start();
    const victims = path.join(env.dir, 'victims');
    await fs.mkdir(victims);
    for (const v of ['v1.txt', 'v2.txt', 'v3.txt']) await fs.writeFile(path.join(victims, v), `victim ${v}\n`, { mode: 0o600 });
    const box = await maildrop(env.root, 'alice');
    await fs.writeFile(path.join(box, 'cur', '1796000000.M1P1.h:2,'), GOOD);
    // A first login writes the uidlist; the cache key covers it.
    const w0 = await loggedIn(env);
    expect(await w0.cmd('QUIT')).toMatch(/^\+OK/);
    await w0.closed();
    await new Promise((r) => setTimeout(r, 300));
    const up = '../../../victims/';
    for (const header of ['poplar-scan 1 ', 'poplar-scan 2 4 ']) {
      forgetRememberedScans();
      await fs.writeFile(
        path.join(box, 'poplar-scan.cache'),
        `${header}${scanKey(box)}\n1 33 - a 1796000000.M1P1.h:2,\n2 17 - b ${up}v2.txt\n3 17 - c ${up}v3.txt\n4 17 - d ${up}v1.txt:2,\n`,
      );
      const w = await loggedIn(env);
      expect(await w.cmd('STAT')).toMatch(/^\+OK 1 /);
      expect(await w.cmd('RETR 2')).toMatch(/^-ERR/);
      expect(await w.cmd('DELE 3')).toMatch(/^-ERR/);
      expect((await w.cmdMulti('RETR 1')).body.toString('latin1')).toBe(GOOD_WIRE);
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      await w.closed();
      expect((await fs.readdir(victims)).sort()).toEqual(['v1.txt', 'v2.txt', 'v3.txt']);
      expect(await fs.readFile(path.join(victims, 'v2.txt'), 'utf8')).toBe('victim v2.txt\n');
    }
    expect(await logLines(env, 'poplar-scan.cache')).not.toHaveLength(0);
  });

  it('a cache not written by the server (another owner) is not trusted even when well-formed', async () => {
    const env = await start();
    const box = await maildrop(env.root, 'alice');
    await fs.writeFile(path.join(box, 'cur', '1796000000.M1P1.h:2,'), GOOD);
    const w0 = await loggedIn(env);
    const uidl = await w0.cmd('UIDL 1');
    expect(await w0.cmd('QUIT')).toMatch(/^\+OK/);
    await w0.closed();
    await new Promise((r) => setTimeout(r, 300));
    forgetRememberedScans();
    const cache = path.join(box, 'poplar-scan.cache');
    await fs.writeFile(cache, `poplar-scan 2 1 ${scanKey(box)}\n1 99 - forgeduidl 1796000000.M1P1.h:2,\n`, { mode: 0o600 });
    await fs.chown(cache, 65534, 65534);
    const w = await loggedIn(env);
    expect(await w.cmd('UIDL 1')).toBe(uidl);
    expect(await w.cmd('LIST 1')).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
    await w.cmd('QUIT');
  });
});

describe('sizes in the uidlist and in file names', () => {
  it('a negative, fractional, non-numeric or huge size is recomputed from the file', async () => {
    const env = await start();
    const box = await maildrop(env.root, 'alice');
    const size = GOOD_WIRE.length - 3;
    const names = ['1796000001.M1P1.h', '1796000002.M1P1.h', '1796000003.M1P1.h', '1796000004.M1P1.h', '1796000005.M1P1.h,W=99999999999999999999999'];
    for (const n of names) await fs.writeFile(path.join(box, 'cur', `${n}:2,`), GOOD);
    await fs.writeFile(
      path.join(box, 'dovecot-uidlist'),
      `3 V1234 N6 Gabc\n1 W-5 :${names[0]}\n2 Wx :${names[1]}\n3 W1.5 :${names[2]}\n4 W1e400 :${names[3]}\n5 :${names[4]}\n`,
    );
    const w = await loggedIn(env);
    expect(await w.cmd('STAT')).toBe(`+OK 5 ${5 * size}`);
    for (let i = 1; i <= 5; i++) expect(await w.cmd(`LIST ${i}`)).toBe(`+OK ${i} ${size}`);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    const list = await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8');
    expect(list).toContain(`1 W${size} :${names[0]}`);
    expect(list).not.toMatch(/W-5|Wx|W1\.5|W1e400/);
  });
});

describe('temporary and lock files planted as symbolic links', () => {
  it('a link at dovecot-uidlist.tmp never gets its target written when the uidlist is rewritten', async () => {
    const env = await start();
    const victim = path.join(env.dir, 'victim.txt');
    await fs.writeFile(victim, 'precious\n');
    const box = await maildrop(env.root, 'alice');
    await fs.writeFile(path.join(box, 'new', '1796000000.M1P1.h'), GOOD);
    await fs.symlink(victim, path.join(box, 'dovecot-uidlist.tmp'));
    const w = await loggedIn(env);
    expect(await w.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8')).toMatch(/^3 V\d+ N2 /);
  });
});

describe('a maildrop directory that is a symbolic link', () => {
  it('pointing out of the Maildir root: the login is refused with [SYS/TEMP] and nothing is created there', async () => {
    const env = await start();
    const outside = path.join(env.dir, 'etc');
    await fs.mkdir(outside);
    await fs.writeFile(path.join(outside, 'shadow'), 'x');
    await fs.symlink(outside, path.join(env.root, 'alice'));
    const w = await login(env);
    expect(await w.cmd('PASS secret')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    w.close();
    expect(await fs.readdir(outside)).toEqual(['shadow']);
    const lines = await logLines(env, 'symbolic link');
    expect(lines.length).toBeGreaterThan(0);
    expect(lines[0]).toContain('allow_symlinked_maildrops');
  });

  it('a link inside the root (an alias) works, and an admin may allow one that leaves it', async () => {
    const env = await start();
    const real = await maildrop(env.root, 'bob');
    await fs.writeFile(path.join(real, 'cur', '1796000000.M1P1.h:2,'), GOOD);
    await fs.symlink('bob', path.join(env.root, 'alice'));
    const w = await loggedIn(env, 'alice');
    expect(await w.cmd('STAT')).toMatch(/^\+OK 1 /);
    await w.cmd('QUIT');
    await w.closed();

    const allowed = await start({ allowSymlinkedMaildrops: true });
    const elsewhere = await maildrop(allowed.dir, 'elsewhere');
    await fs.writeFile(path.join(elsewhere, 'cur', '1796000000.M1P1.h:2,'), GOOD);
    await fs.symlink(elsewhere, path.join(allowed.root, 'alice'));
    const w2 = await loggedIn(allowed, 'alice');
    expect(await w2.cmd('STAT')).toMatch(/^\+OK 1 /);
    await w2.cmd('QUIT');
  });

  it('poplar serve: [store] allow_symlinked_maildrops = true reaches the store', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-hostile-serve-'));
    const root = path.join(dir, 'mail');
    await fs.mkdir(root);
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'poplar.toml'), '[store]\nallow_symlinked_maildrops = true\n');
    const elsewhere = await maildrop(dir, 'elsewhere');
    await fs.writeFile(path.join(elsewhere, 'cur', '1796000000.M1P1.h:2,'), GOOD);
    await fs.symlink(elsewhere, path.join(root, 'alice'));
    const { startServe } = await import('../helpers/cli.js');
    const srv = await startServe(
      ['--config', 'poplar.toml', '--data-dir', path.join(dir, 'data'), '--maildir-root', root, '--users', path.join(dir, 'users'), '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'],
      { cwd: dir },
    );
    try {
      const w = await Wire.connect(srv.plainPort);
      await w.line();
      await w.cmd('USER alice');
      expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
      expect(await w.cmd('STAT')).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
      await w.cmd('QUIT');
    } finally {
      await srv.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });

  it('cur/ or new/ that is a link is refused the same way', async () => {
    const env = await start();
    const outside = path.join(env.dir, 'etc');
    await fs.mkdir(outside);
    await fs.writeFile(path.join(outside, '1796000000.M1P1.h:2,'), 'Subject: secret\n\nsecret\n');
    const box = path.join(env.root, 'alice');
    await fs.mkdir(box);
    await fs.mkdir(path.join(box, 'new'));
    await fs.mkdir(path.join(box, 'tmp'));
    await fs.symlink(outside, path.join(box, 'cur'));
    const w = await login(env);
    expect(await w.cmd('PASS secret')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    w.close();
    expect(await fs.readdir(outside)).toEqual(['1796000000.M1P1.h:2,']);
  });
});

describe('a full file system', () => {
  it('a uidlist lock that could not be written is removed at once: once there is room, the next login works', async (ctx) => {
    let env: Env;
    try {
      env = await start({}, 256);
    } catch (e) {
      // A real full file system needs a tmpfs mount (root).
      if (!(e instanceof MountRefused)) throw e;
      return missingAtRun(ctx, TMPFS_MOUNT, e.message);
    }
    const box = await maildrop(env.root, 'alice');
    await fs.writeFile(path.join(box, 'new', '1796000000.M1P1.h'), GOOD); // no size in the name: the uidlist must hold it
    const filler = path.join(env.root, 'filler');
    await expect(fs.writeFile(filler, Buffer.alloc(1024 * 1024))).rejects.toThrow(/ENOSPC/);

    const w = await login(env);
    expect(await w.cmd('PASS secret')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    w.close();
    // Nothing half-written is left behind: no lock that would hold off the next logins, no temporary file.
    expect((await fs.readdir(box)).filter((f) => f.startsWith('dovecot-uidlist') || f.endsWith('.tmp'))).toEqual([]);

    await fs.rm(filler);
    const w2 = await loggedIn(env);
    expect(await w2.cmd('STAT')).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
    expect(await w2.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8')).toMatch(/^3 V\d+ N2 /);
  });
});
