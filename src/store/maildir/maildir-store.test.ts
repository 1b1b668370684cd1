import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { InUseError, MessageUnavailable, PermanentFailure, TemporaryFailure } from '../../errors.js';
import { crlfSize } from '../../protocol/message-size.js';
import { silentLogger } from '../../observability/log.js';
import type { Maildrop } from '../types.js';
import { dovecotUidl, MaildirStore } from './maildir-store.js';
import { extValue, parseUidlist, type Uidlist } from './uidlist.js';

const USER = 'alice';
let root: string;
let box: string;
let store: MaildirStore;
const open: Maildrop[] = [];
const children: ChildProcess[] = [];

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-mds-'));
  box = path.join(root, USER);
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });
  store = new MaildirStore({ root, logger: silentLogger() });
});

afterEach(async () => {
  for (const m of open.splice(0)) await m.release();
  for (const c of children.splice(0)) c.kill('SIGKILL');
  await fs.rm(root, { recursive: true, force: true });
});

async function openBox(s: MaildirStore = store): Promise<Maildrop> {
  const m = await s.open({ username: USER });
  open.push(m);
  return m;
}

async function release(m: Maildrop): Promise<void> {
  await m.release();
  open.splice(open.indexOf(m), 1);
}

async function put(sub: 'new' | 'cur', name: string, raw: string | Buffer): Promise<void> {
  await fs.writeFile(path.join(box, sub, name), raw);
}

async function uidlist(): Promise<Uidlist> {
  return parseUidlist(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8'));
}

async function readAll(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const A = 'Subject: a\n\nline\n';
const B = 'Subject: b\r\n\r\nbody\r\nmore\r\n';
const C = 'Subject: c\n\n.\nx';

describe('MaildirStore.open: scanning and dovecot-uidlist', () => {
  it('moves new/ to cur/ with :2, and numbers messages in Dovecot order', async () => {
    await put('new', '1700000000.M10P1.h', B);
    await put('new', '1700000000.M5P1.h', A);
    await put('cur', '1700000001.M1P1.h:2,S', C);
    await put('new', '.hidden', 'dot files are not messages');
    const m = await openBox();
    expect((await fs.readdir(path.join(box, 'new'))).sort()).toEqual(['.hidden']);
    expect((await fs.readdir(path.join(box, 'cur'))).sort()).toEqual([
      '1700000000.M10P1.h:2,',
      '1700000000.M5P1.h:2,',
      '1700000001.M1P1.h:2,S',
    ]);
    expect(m.messages.map((x) => x.size)).toEqual([crlfSize(Buffer.from(A)), crlfSize(Buffer.from(B)), crlfSize(Buffer.from(C))]);
    const u = await uidlist();
    expect(u.records.map((r) => [r.uid, r.basename])).toEqual([
      [1, '1700000000.M5P1.h'],
      [2, '1700000000.M10P1.h'],
      [3, '1700000001.M1P1.h'],
    ]);
    expect(u.nextUid).toBe(4);
    expect(u.headerExtra[0]).toMatch(/^G[0-9a-f]{32}$/);
    expect(m.messages.map((x) => x.uidl)).toEqual([1, 2, 3].map((uid) => dovecotUidl(uid, u.uidValidity)));
    expect(dovecotUidl(10, 0x6b083692)).toBe('0000000a6b083692');
    expect((await readAll(await m.read(0))).toString()).toBe(A);
  });

  it('creates a missing maildir, and an empty one has no messages', async () => {
    await fs.rm(box, { recursive: true });
    const m = await openBox();
    expect(m.messages).toEqual([]);
    for (const sub of ['cur', 'new', 'tmp']) expect((await fs.stat(path.join(box, sub))).isDirectory()).toBe(true);
  });

  it('computes sizes once, writes them back as W, and takes them from the uidlist afterwards', async () => {
    await put('new', '1700000000.M1P1.h', A);
    await put('new', '1700000001.M1P1.h,S=24,W=26', B); // sizes in the name: no W field
    await put('new', '1700000002.M1P1.h', '');
    const first = await openBox();
    const sizes = first.messages.map((x) => x.size);
    expect(sizes).toEqual([crlfSize(Buffer.from(A)), 26, 0]);
    await release(first);
    const u = await uidlist();
    expect(u.records.map((r) => extValue(r, 'W'))).toEqual([String(sizes[0]), undefined, '0']);

    // Same names, different contents and lengths: if sizes were re-read from the
    // files, LIST would change. They must come from the uidlist / the name.
    await fs.writeFile(path.join(box, 'cur', '1700000000.M1P1.h:2,'), 'x'.repeat(500));
    await fs.writeFile(path.join(box, 'cur', '1700000002.M1P1.h:2,'), 'y\n'.repeat(100));
    const before = await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8');
    const second = await openBox();
    expect(second.messages.map((x) => x.size)).toEqual(sizes);
    // Nothing new, nothing missing: the uidlist is not rewritten at all.
    expect(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8')).toBe(before);
  });

  it('fills in a missing W for a record Dovecot appended without one', async () => {
    await put('cur', '1700000000.M1P1.h:2,', A);
    await put('cur', '1700000001.M1P1.h:2,', B);
    await fs.writeFile(path.join(box, 'dovecot-uidlist'), '3 V1234 N1 Gabc\n1 :1700000000.M1P1.h\n2 W99 :1700000001.M1P1.h\n');
    const m = await openBox();
    expect(m.messages.map((x) => x.size)).toEqual([crlfSize(Buffer.from(A)), 99]); // W is trusted, as Dovecot does
    const u = await uidlist();
    expect(u.records.map((r) => [r.uid, extValue(r, 'W')])).toEqual([
      [1, String(crlfSize(Buffer.from(A)))],
      [2, '99'],
    ]);
    expect(u.nextUid).toBe(3); // the stale N1 is corrected
    expect(u.headerExtra).toEqual(['Gabc']);
  });

  it('keeps known UIDs, gives new files UIDs after the highest ever (N lagging or ahead)', async () => {
    await put('cur', '1700000005.M1P1.h:2,S', A);
    await put('new', '1600000000.M1P1.h', B); // sorts first but is new: gets the next UID
    await fs.writeFile(path.join(box, 'dovecot-uidlist'), '3 V77 N3 Gabc\n3 W5 :gone-file\n9 :1700000005.M1P1.h\n');
    const m = await openBox();
    expect(m.messages.map((x) => x.uidl)).toEqual([dovecotUidl(9, 77), dovecotUidl(10, 77)]);
    const u = await uidlist();
    // The record of the vanished file is dropped; N covers the highest UID ever given.
    expect(u.records.map((r) => [r.uid, r.basename])).toEqual([
      [9, '1700000005.M1P1.h'],
      [10, '1600000000.M1P1.h'],
    ]);
    expect(u.nextUid).toBe(11);

    // A header N ahead of every record (the top UIDs were expunged) is honoured.
    await release(m);
    await fs.writeFile(path.join(box, 'dovecot-uidlist'), '3 V77 N50 Gabc\n9 :1700000005.M1P1.h\n10 :1600000000.M1P1.h\n');
    await put('new', '1800000000.M1P1.h', C);
    const m2 = await openBox();
    expect(m2.messages.map((x) => x.uidl)).toEqual([dovecotUidl(9, 77), dovecotUidl(10, 77), dovecotUidl(50, 77)]);
  });

  it('honours a saved P (POP3 UIDL) and O (POP3 order)', async () => {
    await put('cur', '1700000001.M1P1.h:2,', A);
    await put('cur', '1700000002.M1P1.h:2,', B);
    await put('cur', '1700000003.M1P1.h:2,', C);
    await put('cur', '1700000004.M1P1.h:2,', A);
    await fs.writeFile(
      path.join(box, 'dovecot-uidlist'),
      '3 V5 N5 Gabc\n' +
        '1 W1 O3 P:legacy-uidl-1 :1700000001.M1P1.h\n' +
        '2 W2 O1 :1700000002.M1P1.h\n' +
        '3 W3 P :1700000003.M1P1.h\n' + // an empty P is no saved UIDL
        '4 W4 O2 PXYZ :1700000004.M1P1.h\n',
    );
    const m = await openBox();
    // Messages with an O first, in O order; then the rest by UID.
    expect(m.messages.map(({ uidl, size }) => ({ uidl, size }))).toEqual([
      { uidl: dovecotUidl(2, 5), size: 2 },
      { uidl: 'XYZ', size: 4 },
      { uidl: ':legacy-uidl-1', size: 1 },
      { uidl: dovecotUidl(3, 5), size: 3 },
    ]);
    expect((await readAll(await m.read(1))).toString()).toBe(A);
    expect((await readAll(await m.read(3))).toString()).toBe(C);
  });

  it('does not drop a record another server adds while Poplar waits for the uidlist lock', async () => {
    // Poplar lists cur/ before it takes the lock; meanwhile Dovecot (holding the
    // lock) moves a new file to cur/ and appends its record. That record must
    // survive Poplar's rewrite, or the message would get a new UID later.
    await put('new', '1700000001.M1P1.h', A);
    const host = os.hostname();
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(sleeper);
    await once(sleeper, 'spawn');
    const lockFile = path.join(box, 'dovecot-uidlist.lock');
    await fs.writeFile(lockFile, `${sleeper.pid!}:${host}`);
    const opening = openBox();
    await new Promise((r) => setTimeout(r, 300)); // Poplar has listed cur/ and now waits
    await fs.writeFile(path.join(box, 'cur', '1700000000.M9P9.other:2,'), B);
    await fs.writeFile(path.join(box, 'dovecot-uidlist'), '3 V42 N1 Gabc\n1 :1700000000.M9P9.other\n');
    await fs.unlink(lockFile);
    const m = await opening;
    // This session's snapshot has only what it listed (now UID 2) ...
    expect(m.messages.map((x) => x.uidl)).toEqual([dovecotUidl(2, 42)]);
    // ... but Dovecot's record for the other file is kept.
    const u = await uidlist();
    expect(u.records.map((r) => [r.uid, r.basename])).toEqual([
      [1, '1700000000.M9P9.other'],
      [2, '1700000001.M1P1.h'],
    ]);
    await release(m);
    const m2 = await openBox();
    expect(m2.messages.map((x) => x.uidl)).toEqual([dovecotUidl(1, 42), dovecotUidl(2, 42)]);
  });

  it('measures new files before it takes the uidlist lock (the lock is held only briefly)', async () => {
    await put('new', '1700000001.M1P1.h', A);
    const sleeper = spawn('sleep', ['30'], { stdio: 'ignore' });
    children.push(sleeper);
    await once(sleeper, 'spawn');
    const lockFile = path.join(box, 'dovecot-uidlist.lock');
    await fs.writeFile(lockFile, `${sleeper.pid!}:${os.hostname()}`);
    const opening = openBox();
    await new Promise((r) => setTimeout(r, 300)); // measured by now; waiting for the lock
    await fs.writeFile(path.join(box, 'cur', '1700000001.M1P1.h:2,'), 'much longer content\n'.repeat(10));
    await fs.unlink(lockFile);
    const m = await opening;
    expect(m.messages.map((x) => x.size)).toEqual([crlfSize(Buffer.from(A))]);
  });

  it('an unreadable uidlist (unknown version) is rebuilt instead of locking the user out', async () => {
    await put('cur', '1700000001.M1P1.h:2,', A);
    await fs.writeFile(path.join(box, 'dovecot-uidlist'), '1 5 3\n1 1700000001.M1P1.h\n');
    const m = await openBox();
    expect(m.messages).toHaveLength(1);
    expect(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8')).toMatch(/^3 V\d+ N2 G[0-9a-f]{32}\n1 W\d+ :1700000001\.M1P1\.h\n$/);
  });
});

describe('MaildirStore: cur/ swapped for a symbolic link behind the store', () => {
  it('during the scan: new messages are moved into the real cur/, never through the link', async () => {
    await put('new', '1700000001.M1P1.h', A);
    const outside = path.join(root, 'outside');
    await fs.mkdir(outside);
    const original = fs.readdir.bind(fs);
    let swapped = false;
    // Right after the scan has listed new/, the maildrop's owner puts a link in place of cur/.
    const spy = vi.spyOn(fs, 'readdir').mockImplementation((async (...args: Parameters<typeof fs.readdir>) => {
      const result = await original(...args);
      if (!swapped) {
        swapped = true;
        await fs.rename(path.join(box, 'cur'), path.join(box, 'cur.real'));
        await fs.symlink(outside, path.join(box, 'cur'));
      }
      return result;
    }) as typeof fs.readdir);
    try {
      await openBox().catch(() => undefined);
    } finally {
      spy.mockRestore();
    }
    expect(swapped).toBe(true);
    expect(await fs.readdir(outside)).toEqual([]);
    expect(await fs.readdir(path.join(box, 'cur.real'))).toEqual(['1700000001.M1P1.h:2,']);
  });

  it('during a session: RETR and UPDATE stay in the directory the session opened', async () => {
    await put('new', '1700000001.M1P1.h', A);
    await put('new', '1700000002.M1P1.h', B);
    const m = await openBox();
    expect((await readAll(await m.read(0))).toString()).toBe(A); // cur/ is open from here on
    const outside = path.join(root, 'outside');
    await fs.mkdir(outside);
    // Same names outside: a path through the link would find these.
    await fs.writeFile(path.join(outside, '1700000001.M1P1.h:2,'), 'secret 1');
    await fs.writeFile(path.join(outside, '1700000002.M1P1.h:2,'), 'secret 2');
    await fs.rename(path.join(box, 'cur'), path.join(box, 'cur.real'));
    await fs.symlink(outside, path.join(box, 'cur'));
    expect((await readAll(await m.read(1))).toString()).toBe(B);
    await m.commit([0], { retrieved: [1] });
    expect((await fs.readdir(outside)).sort()).toEqual(['1700000001.M1P1.h:2,', '1700000002.M1P1.h:2,']);
    expect(await fs.readdir(path.join(box, 'cur.real'))).toEqual(['1700000002.M1P1.h:2,S']);
  });
});

describe('MaildirStore session lock', () => {
  it('a second open is refused with IN-USE, from this store and from another store instance', async () => {
    await openBox();
    const err = await store.open({ username: USER }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InUseError);
    const other = new MaildirStore({ root, logger: silentLogger() });
    const err2 = await other.open({ username: USER }).catch((e: unknown) => e);
    expect(err2).toBeInstanceOf(InUseError);
  });

  it('release unlocks (the lock file stays) and the maildrop can be opened again', async () => {
    const m = await openBox();
    const lockFile = path.join(box, 'poplar-pop3.lock');
    expect(spawnSync('flock', ['--nonblock', lockFile, 'true']).status).not.toBe(0);
    await release(m);
    expect(spawnSync('flock', ['--nonblock', lockFile, 'true']).status).toBe(0);
    await m.release(); // twice is harmless
    const m2 = await openBox();
    expect(m2.messages).toEqual([]);
  });

  it('a lock file left with a dead pid in it (an older version) does not lock the maildrop', async () => {
    await put('new', '1700000001.M1P1.h', A);
    const dead = spawn('true');
    await once(dead, 'exit');
    const lockFile = path.join(box, 'poplar-pop3.lock');
    await fs.writeFile(lockFile, `${dead.pid!} 1 ${os.hostname()}\n`);
    const m = await openBox();
    expect(m.messages.map((x) => x.size)).toEqual([crlfSize(Buffer.from(A))]);
    // The session now holds the lock on that very file.
    expect(spawnSync('flock', ['--nonblock', lockFile, 'true']).status).not.toBe(0);
    await release(m);
    expect(spawnSync('flock', ['--nonblock', lockFile, 'true']).status).toBe(0);
  });

  it('respects the lock of a live other process, and is free once it is gone', async () => {
    await fs.mkdir(box, { recursive: true });
    const lockFile = path.join(box, 'poplar-pop3.lock');
    const holder = spawn('flock', ['--exclusive', '--close', lockFile, 'sleep', '30'], { stdio: 'ignore' });
    children.push(holder);
    await once(holder, 'spawn');
    // Wait until the holder really has the lock. The holder waits for it (no --nonblock): the probe
    // holds it for an instant, and a holder that gave up then would never hold it.
    const deadline = Date.now() + 20_000;
    while (spawnSync('flock', ['--nonblock', lockFile, 'true']).status === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(spawnSync('flock', ['--nonblock', lockFile, 'true']).status).not.toBe(0);
    const err = await store.open({ username: USER }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InUseError);
    holder.kill('SIGKILL');
    await once(holder, 'exit');
    await openBox();
  }, 30_000);

  it('rejects user names that would leave the maildir root', async () => {
    for (const username of ['', '.', '..', 'a/b', 'a\0b']) {
      const err = await store.open({ username }).catch((e: unknown) => e);
      expect(err, username).toBeInstanceOf(PermanentFailure);
    }
  });
});

describe('Maildrop read / commit', () => {
  it('read() of a file that vanished after open rejects with MessageUnavailable', async () => {
    await put('new', '1700000001.M1P1.h', A);
    await put('new', '1700000002.M1P1.h', B);
    const m = await openBox();
    await fs.unlink(path.join(box, 'cur', '1700000001.M1P1.h:2,'));
    await expect(m.read(0)).rejects.toBeInstanceOf(MessageUnavailable);
    expect((await readAll(await m.read(1))).toString()).toBe(B);
  });

  it('read() finds a file another process renamed (flags changed)', async () => {
    await put('new', '1700000001.M1P1.h', A);
    const m = await openBox();
    await fs.rename(path.join(box, 'cur', '1700000001.M1P1.h:2,'), path.join(box, 'cur', '1700000001.M1P1.h:2,RS'));
    expect((await readAll(await m.read(0))).toString()).toBe(A);
  });

  it('commit() removes exactly the deleted messages', async () => {
    for (let i = 1; i <= 4; i++) await put('new', `170000000${i}.M1P1.h`, `Subject: ${i}\n\n${i}\n`);
    const m = await openBox();
    await m.commit([0, 2]);
    expect((await fs.readdir(path.join(box, 'cur'))).sort()).toEqual(['1700000002.M1P1.h:2,', '1700000004.M1P1.h:2,']);
    await m.commit([]);
  });

  it('commit() succeeds for the rest when someone else removed or renamed a message', async () => {
    for (let i = 1; i <= 4; i++) await put('new', `170000000${i}.M1P1.h`, `Subject: ${i}\n\n${i}\n`);
    const m = await openBox();
    await fs.unlink(path.join(box, 'cur', '1700000001.M1P1.h:2,'));
    await fs.rename(path.join(box, 'cur', '1700000003.M1P1.h:2,'), path.join(box, 'cur', '1700000003.M1P1.h:2,S'));
    await m.commit([0, 1, 2]);
    expect(await fs.readdir(path.join(box, 'cur'))).toEqual(['1700000004.M1P1.h:2,']);
  });

  it('commit() reports a failure it cannot work around', async () => {
    await put('new', '1700000001.M1P1.h', A);
    await put('new', '1700000002.M1P1.h', B);
    const m = await openBox();
    // A directory in place of the file: unlink fails with EISDIR/EPERM, not ENOENT.
    await fs.unlink(path.join(box, 'cur', '1700000001.M1P1.h:2,'));
    await fs.mkdir(path.join(box, 'cur', '1700000001.M1P1.h:2,'));
    const err = await m.commit([0, 1]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(TemporaryFailure);
    expect(await fs.readdir(path.join(box, 'cur'))).toEqual(['1700000001.M1P1.h:2,']);
  });
});

describe('MaildirStore.deliver', () => {
  it('writes new/<unique>,S=<bytes>,W=<crlf size> and leaves tmp/ empty', async () => {
    const raw = Buffer.from('Subject: d\n\nline 1\r\nline 2\n\rbare\n');
    await store.deliver(USER, raw);
    const names = await fs.readdir(path.join(box, 'new'));
    expect(names).toHaveLength(1);
    const name = names[0]!;
    expect(name).toMatch(/^\d+\.M\d+P\d+Q\d+R[0-9a-f]{8}\.[^/:]+,S=\d+,W=\d+$/);
    expect(name.endsWith(`,S=${raw.length},W=${crlfSize(raw)}`)).toBe(true);
    expect(await fs.readFile(path.join(box, 'new', name))).toEqual(raw);
    expect(await fs.readdir(path.join(box, 'tmp'))).toEqual([]);

    // The size comes from the name: no W field is written for it.
    const m = await openBox();
    expect(m.messages.map((x) => x.size)).toEqual([crlfSize(raw)]);
    expect((await uidlist()).records.map((r) => r.ext)).toEqual([[]]);
  });

  it('counts CRLF split across stream chunks correctly', async () => {
    const chunks = ['Subject: s\r', '\n\r', '\nbody\r', '\r', '\n\n', '', 'x\r'].map((c) => Buffer.from(c));
    const whole = Buffer.concat(chunks);
    await store.deliver(USER, Readable.from(chunks));
    const [name] = await fs.readdir(path.join(box, 'new'));
    expect(name!.endsWith(`,S=${whole.length},W=${crlfSize(whole)}`)).toBe(true);
    expect(await fs.readFile(path.join(box, 'new', name!))).toEqual(whole);
  });

  it('an empty message is delivered as ,S=0,W=0', async () => {
    await store.deliver(USER, Buffer.alloc(0));
    const [name] = await fs.readdir(path.join(box, 'new'));
    expect(name!.endsWith(',S=0,W=0')).toBe(true);
  });

  it('a failing source leaves neither new/ nor tmp/ files', async () => {
    async function* broken(): AsyncGenerator<Buffer> {
      yield Buffer.from('Subject: half\n');
      throw new Error('connection lost');
    }
    await expect(store.deliver(USER, Readable.from(broken()))).rejects.toThrow('connection lost');
    expect(await fs.readdir(path.join(box, 'new'))).toEqual([]);
    expect(await fs.readdir(path.join(box, 'tmp'))).toEqual([]);
  });

  it('many deliveries get distinct names and all show up once', async () => {
    await Promise.all(Array.from({ length: 50 }, (_, i) => store.deliver(USER, Buffer.from(`Subject: ${i}\n\n${i}\n`))));
    expect(await fs.readdir(path.join(box, 'new'))).toHaveLength(50);
    const m = await openBox();
    expect(m.messages).toHaveLength(50);
    expect(new Set(m.messages.map((x) => x.uidl)).size).toBe(50);
  });
});
