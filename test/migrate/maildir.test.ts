/**
 * `poplar migrate` from Maildir to Maildir, as a real process, checked
 * through Poplar's own POP3 server on both sides: the same UIDL and LIST
 * answers and byte-exact RETR, saved UIDLs (P) and POP3 order (O) kept, seen
 * state and arrival kept; a rerun moves nothing; --dry-run changes nothing;
 * a migration killed halfway and run again ends with every message exactly once.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar } from '../helpers/cli.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { messageFiles, pop3View, putFile, seqMail, snapshot } from './helpers.js';

const USERS = [
  { name: 'alice', password: 'a-pw' },
  { name: 'bob', password: 'b-pw' },
  { name: 'carol', password: 'c-pw' },
];
const ARRIVED = new Date('2023-01-02T03:04:05Z');

let tmp: string;
let src: TestServer;
let dst: TestServer;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-migrate-'));
  const srcDir = path.join(tmp, 'src');
  const dstDir = path.join(tmp, 'dst');
  await fs.mkdir(srcDir);
  await fs.mkdir(dstDir);
  src = await startTestServer({ dir: srcDir, users: USERS });
  dst = await startTestServer({ dir: dstDir, users: USERS });
  const root = src.maildirRoot;
  // alice: a saved UIDL (P) and a POP3 order (O) from an earlier migration, a seen message, a new one.
  await putFile(root, 'alice', 'cur', '1700000001.M1P1.host:2,S', seqMail(1), new Date('2022-05-05T00:00:00Z'));
  await putFile(root, 'alice', 'cur', '1700000002.M1P1.host:2,', seqMail(2).replace(/\n/g, '\r\n'));
  await putFile(root, 'alice', 'new', '1700000010.M1P1.host', seqMail(3), ARRIVED);
  await fs.writeFile(path.join(root, 'alice', 'dovecot-uidlist'), '3 V1600000000 N3 G0123456789abcdef0123456789abcdef\n1 Plegacy-uidl-one O2 :1700000001.M1P1.host\n2 O1 :1700000002.M1P1.host\n');
  // bob: a message without a final line end, and an empty one.
  await putFile(root, 'bob', 'new', '1700000100.M1P1.host', 'Subject: no final newline\n\nlast line');
  await putFile(root, 'bob', 'new', '1700000101.M1P1.host', '');
  for (let i = 0; i < 8; i++) await putFile(root, 'carol', 'new', `17000002${String(i).padStart(2, '0')}.M1P1.host`, seqMail(100 + i));
  // A UIDVALIDITY of its own: the target's (now) differs, so a UIDL that was not kept would show.
  await fs.writeFile(path.join(root, 'carol', 'dovecot-uidlist'), '3 V1500000000 N1 G00000000000000000000000000000000\n');
});

afterAll(async () => {
  await src.stop();
  await dst.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

const migrate = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  runPoplar(['migrate', '--from', `maildir:${src.maildirRoot}`, '--to', `maildir:${dst.maildirRoot}`, ...args], { env, timeoutMs: 60_000 });

describe('poplar migrate maildir -> maildir', () => {
  it('--dry-run prints what would move and changes nothing on either side', async () => {
    const before = [await snapshot(src.maildirRoot), await snapshot(dst.maildirRoot)];
    const r = await migrate(['--user', 'alice', '--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^alice: 3 messages, 0 already in the target, 3 to move \(/m);
    expect(r.stdout).toMatch(/^total: 1 user, 3 messages/m);
    expect(await snapshot(src.maildirRoot)).toEqual(before[0]);
    expect(await snapshot(dst.maildirRoot)).toEqual(before[1]);
  });

  it('keeps UIDLs (saved and Dovecot-style), POP3 order, sizes, bytes, seen state and arrival', async () => {
    const r = await migrate(['--user', 'alice']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/3 messages moved/);
    // RETR marks messages seen at QUIT: the files are checked before any session.
    const files = await messageFiles(dst.maildirRoot, 'alice');
    expect(files.filter((f) => f.endsWith(':2,S'))).toHaveLength(1);
    const seenFile = files.find((f) => f.endsWith(':2,S'))!;
    expect(await fs.readFile(path.join(dst.maildirRoot, 'alice', seenFile), 'latin1')).toBe(seqMail(1));
    const newest = files.find((f) => f.includes(`V${Buffer.from('000000035f5e1000').toString('hex')}.`))!;
    expect((await fs.stat(path.join(dst.maildirRoot, 'alice', newest))).mtime.toISOString()).toBe(ARRIVED.toISOString());
    const before = await pop3View(src.port, 'alice', 'a-pw');
    const after = await pop3View(dst.port, 'alice', 'a-pw');
    // O1 (uid 2) first, then O2 with its saved UIDL, then the new message.
    expect(before.uidl).toEqual(['000000025f5e1000', 'legacy-uidl-one', '000000035f5e1000']);
    expect(after.uidl).toEqual(before.uidl);
    expect(after.list).toEqual(before.list);
    expect(after.bodies).toEqual(before.bodies);
  });

  it('--all moves every user; a rerun moves nothing and leaves every message once', async () => {
    const r = await migrate(['--all']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^3 users: 10 messages moved .* 3 already there, 0 skipped, 0 failed$/m);
    const again = await migrate(['--all']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^3 users: 0 messages moved .* 13 already there/m);
    const dry = await migrate(['--all', '--dry-run']);
    expect(dry.stdout).toMatch(/^alice: 3 messages, 3 already in the target, 0 to move/m);
    expect(dry.stdout).toMatch(/^total: 3 users, 13 messages, 13 already in the target, 0 to move/m);
    for (const u of USERS) {
      const a = await pop3View(src.port, u.name, u.password);
      const b = await pop3View(dst.port, u.name, u.password);
      expect(b, u.name).toEqual(a);
    }
    expect(await messageFiles(dst.maildirRoot, 'bob')).toHaveLength(2);
  });
});

describe('a migration killed halfway', () => {
  it('ends, once rerun, with every message exactly once under its UIDL, even after a login in between', async () => {
    const target = path.join(tmp, 'killed');
    await fs.mkdir(target);
    const run = (env: NodeJS.ProcessEnv = {}) =>
      runPoplar(['migrate', '--from', `maildir:${src.maildirRoot}`, '--to', `maildir:${target}`, '--user', 'carol'], { env, timeoutMs: 60_000 });
    // Killed after the 1st, then after 3 more: each time after a message's file and before its uidlist record.
    const k1 = await run({ POPLAR_MIGRATE_CRASH_AFTER: '1' });
    expect(k1.signal).toBe('SIGKILL');
    expect(await messageFiles(target, 'carol')).toHaveLength(1);
    const k2 = await run({ POPLAR_MIGRATE_CRASH_AFTER: '3' });
    expect(k2.signal).toBe('SIGKILL');
    expect(await messageFiles(target, 'carol')).toHaveLength(4);
    // A POP3 login between the kill and the rerun gives the orphaned files UIDs of its own.
    const mid = await startTestServer({ dir: await fs.mkdtemp(path.join(tmp, 'mid-')), users: USERS });
    try {
      await fs.rm(mid.maildirRoot, { recursive: true });
      await fs.symlink(target, mid.maildirRoot);
      const midView = await pop3View(mid.port, 'carol', 'c-pw');
      expect(midView.uidl).toHaveLength(4);
    } finally {
      await mid.stop();
    }
    const done = await run();
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(/4 messages moved .* 4 already there/);
    expect(await messageFiles(target, 'carol')).toHaveLength(8);
    const dstServer = await startTestServer({ dir: await fs.mkdtemp(path.join(tmp, 'final-')), users: USERS });
    try {
      await fs.rm(dstServer.maildirRoot, { recursive: true });
      await fs.symlink(target, dstServer.maildirRoot);
      const a = await pop3View(src.port, 'carol', 'c-pw');
      const b = await pop3View(dstServer.port, 'carol', 'c-pw');
      expect(b.uidl).toEqual(a.uidl);
      expect(b.list).toEqual(a.list);
      expect(b.bodies).toEqual(a.bodies);
    } finally {
      await dstServer.stop();
    }
  });
});

describe('bad invocations', () => {
  it('exits 78 with a clear message for a missing --user/--all, a pop3 target or an unknown source', async () => {
    const a = await migrate([]);
    expect(a.code).toBe(78);
    expect(a.stderr).toMatch(/--user NAME.*--all/);
    const b = await runPoplar(['migrate', '--from', `maildir:${src.maildirRoot}`, '--to', 'pop3://x@example.org', '--all']);
    expect(b.code).toBe(78);
    expect(b.stderr).toMatch(/--to cannot be a POP3 server/);
    const c = await runPoplar(['migrate', '--from', 'imap://x@example.org', '--to', `maildir:${dst.maildirRoot}`, '--all']);
    expect(c.code).toBe(78);
    const d = await runPoplar(['migrate', '--from', 'pop3://u:secret@example.org', '--to', `maildir:${dst.maildirRoot}`]);
    expect(d.code).toBe(78);
    expect(d.stderr).toMatch(/no password in the URL/);
    expect(d.stderr + d.stdout).not.toContain('secret');
  });

  it('a user without a maildrop exits 67 and creates nothing', async () => {
    const r = await migrate(['--user', 'nobody-here']);
    expect(r.code).toBe(67);
    expect(r.stderr).toMatch(/no maildrop for nobody-here/);
    await expect(fs.stat(path.join(dst.maildirRoot, 'nobody-here'))).rejects.toThrow();
  });
});
