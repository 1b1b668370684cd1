/**
 * `poplar migrate --from pop3://...` as a real process: from a real Dovecot
 * (its UIDLs kept: Poplar on the migrated Maildir gives the same UIDL and
 * LIST answers and byte-exact RETR, and so does a Dovecot on it, through the
 * saved P fields); from a hostile server (UIDLs RFC 1939 does not allow,
 * duplicates, an absurd LIST size): clear skips or a clear error, no crash,
 * nothing half-stored; --dry-run lists without retrieving.
 */
import { X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { miniPop3, startFake, type FakeServer } from '../client/fake-server.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { runPoplar } from '../helpers/cli.js';
import { lacks } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { messageFiles, pop3View, putFile, seqMail, snapshot } from './helpers.js';

const PASSWORD = 'dc-s3cret-pw';
let tmp: string;

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-migrate-pop3-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe.skipIf(lacks('dovecot'))('from a real Dovecot over POP3', () => {
  let dc: DovecotHandle;
  let poplar: TestServer;
  beforeAll(async () => {
    const root = path.join(tmp, 'dovecot-mail');
    await putFile(root, 'alice', 'cur', '1700000001.M1P1.old:2,S', seqMail(1));
    await putFile(root, 'alice', 'new', '1700000002.M1P1.lf', seqMail(2));
    await putFile(root, 'alice', 'new', '1700000003.M1P1.crlf', seqMail(3).replace(/\n/g, '\r\n'));
    await putFile(root, 'alice', 'new', '1700000004.M1P1.dots', 'Subject: dots\n\n.\n..x\n.y\nend\n');
    await putFile(root, 'alice', 'new', '1700000005.M1P1.cr', 'Subject: cr\n\nab\rcd\nend\n');
    // Dovecot ends this one with a CRLF that LIST does not count.
    await putFile(root, 'alice', 'new', '1700000006.M1P1.nofinal', 'Subject: nofinal\n\nlast line');
    dc = await startDovecot({ maildirRoot: root, users: [{ name: 'alice', password: PASSWORD }] });
    await fs.mkdir(path.join(tmp, 'poplar'));
    poplar = await startTestServer({ dir: path.join(tmp, 'poplar'), users: [{ name: 'alice', password: 'pw' }] });
  });
  afterAll(async () => {
    await dc?.stop();
    await poplar?.stop();
  });

  const migrate = (more: string[] = []) =>
    runPoplar(['migrate', '--from', `pop3://alice@127.0.0.1:${dc.port}`, '--to', `maildir:${poplar.maildirRoot}`, '--tls', 'none', '--password-env', 'MIGRATE_PW', ...more], {
      env: { MIGRATE_PW: PASSWORD },
      timeoutMs: 60_000,
    });

  it('--dry-run lists what would move and stores nothing', async () => {
    const before = await snapshot(poplar.maildirRoot);
    const r = await migrate(['--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^alice: 6 messages, 0 already in the target, 6 to move/m);
    expect(await snapshot(poplar.maildirRoot)).toEqual(before);
  });

  it("keeps Dovecot's UIDLs: Poplar and Dovecot on the migrated Maildir answer UIDL, LIST and RETR as the source did", async () => {
    const r = await migrate();
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/6 messages moved/);
    expect(r.stdout + r.stderr).not.toContain(PASSWORD);
    const source = await pop3View(dc.port, 'alice', PASSWORD);
    expect(source.uidl).toHaveLength(6);
    expect(source.uidl.every((u) => /^[0-9a-f]{16}$/.test(u))).toBe(true);
    const migrated = await pop3View(poplar.port, 'alice', 'pw');
    expect(migrated.uidl).toEqual(source.uidl);
    expect(migrated.list).toEqual(source.list);
    expect(migrated.bodies).toEqual(source.bodies);

    // A Dovecot on the migrated Maildir reports the kept UIDLs too (dovecot-uidlist P fields).
    const copy = path.join(tmp, 'migrated-for-dovecot');
    await fs.cp(poplar.maildirRoot, copy, { recursive: true });
    const dc2 = await startDovecot({ maildirRoot: copy, users: [{ name: 'alice', password: 'pw2' }] });
    try {
      const viaDovecot = await pop3View(dc2.port, 'alice', 'pw2');
      expect(viaDovecot.uidl).toEqual(source.uidl);
      expect(viaDovecot.list).toEqual(source.list);
      expect(viaDovecot.bodies).toEqual(source.bodies);
    } finally {
      await dc2.stop();
    }

    const again = await migrate();
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/0 messages moved .* 6 already there/);
    expect(await messageFiles(poplar.maildirRoot, 'alice')).toHaveLength(6);
  });

  it('verifies TLS by default (pop3:// with STLS, pop3s://): an unknown certificate stops it (exit 69); a pinned one works', async () => {
    const target = path.join(tmp, 'tls');
    const env = { MIGRATE_PW: PASSWORD };
    const stls = await runPoplar(['migrate', '--from', `pop3://alice@127.0.0.1:${dc.port}`, '--to', `maildir:${target}`, '--password-env', 'MIGRATE_PW', '--dry-run'], { env, timeoutMs: 60_000 });
    expect(stls.code, stls.stderr).toBe(69);
    const implicit = await runPoplar(['migrate', '--from', `pop3s://alice@127.0.0.1:${dc.tlsPort}`, '--to', `maildir:${target}`, '--password-env', 'MIGRATE_PW'], { env, timeoutMs: 60_000 });
    expect(implicit.code, implicit.stderr).toBe(69);
    expect(implicit.stderr).toMatch(/certificate/i);
    expect(await messageFiles(target, 'alice')).toEqual([]);
    const fingerprint = new X509Certificate(await fs.readFile(path.join(dc.dir, 'cert.pem'))).fingerprint256;
    const pinned = await runPoplar(['migrate', '--from', `pop3s://alice@127.0.0.1:${dc.tlsPort}`, '--to', `maildir:${target}`, '--password-env', 'MIGRATE_PW', '--fingerprint', fingerprint], { env, timeoutMs: 60_000 });
    expect(pinned.code, pinned.stderr).toBe(0);
    expect(await messageFiles(target, 'alice')).toHaveLength(6);
  });

  it('refuses a wrong password with exit 77 and stores nothing', async () => {
    const r = await runPoplar(['migrate', '--from', `pop3://alice@127.0.0.1:${dc.port}`, '--to', `maildir:${path.join(tmp, 'wrong-pw')}`, '--tls', 'none', '--password-env', 'MIGRATE_PW'], {
      env: { MIGRATE_PW: 'not-the-password' },
      timeoutMs: 60_000,
    });
    expect(r.code).toBe(77);
    expect(r.stderr).not.toContain('not-the-password');
    expect(await messageFiles(path.join(tmp, 'wrong-pw'), 'alice')).toEqual([]);
  });
});

describe('from a hostile POP3 server', () => {
  let fake: FakeServer | undefined;
  afterAll(async () => {
    await fake?.stop();
  });
  const msgs = [1, 2, 3, 4, 5, 6, 7].map((i) => `Subject: m${i}\r\n\r\nbody ${i}\r\n`);

  const run = async (target: string, more: string[] = []) => {
    await fs.writeFile(path.join(tmp, 'pw'), 'pw\n', { mode: 0o600 });
    return runPoplar(['migrate', '--from', `pop3://alice@127.0.0.1:${fake!.port}`, '--to', `maildir:${target}`, '--tls', 'none', '--password-file', path.join(tmp, 'pw'), ...more], { timeoutMs: 60_000 });
  };

  it('skips messages with bad, duplicate or over-long UIDLs and absurd sizes, stores the rest, exits 65', async () => {
    const verbs: string[] = [];
    fake = await startFake({
      handle: miniPop3({
        messages: msgs,
        uids: ['good-1', 'has space', 'dup', 'dup', 'x'.repeat(71), 'good-6', 'good-7'],
        listSizes: msgs.map((m, i) => (i === 5 ? 10 ** 12 : Buffer.byteLength(m))),
        intercept: (verb) => {
          verbs.push(verb);
          return 'pass';
        },
      }),
    });
    const target = path.join(tmp, 'hostile');
    const r = await run(target);
    expect(r.code, r.stderr).toBe(65);
    expect(r.stderr).toMatch(/message 2: its UIDL "has space" is not valid/);
    expect(r.stderr).toMatch(/message 3: its UIDL "dup" is listed for more than one message/);
    expect(r.stderr).toMatch(/message 5: its UIDL "x{71}" is not valid/);
    expect(r.stderr).toMatch(/message 6: its LIST size 1000000000000 is larger than the limit/);
    expect(r.stdout).toMatch(/2 messages moved .* 5 skipped/);
    // Only the usable messages were retrieved, nothing was deleted.
    expect(verbs.filter((v) => v === 'RETR')).toHaveLength(2);
    expect(verbs).not.toContain('DELE');
    const uidlist = await fs.readFile(path.join(target, 'alice', 'dovecot-uidlist'), 'latin1');
    expect(uidlist).toMatch(/ Pgood-1 /);
    expect(uidlist).toMatch(/ Pgood-7 /);
    expect(await messageFiles(target, 'alice')).toHaveLength(2);
    await fake.stop();
    fake = undefined;
  });

  it('a LIST size that is no number a POP3 server may send is a clear protocol error (exit 76), nothing stored', async () => {
    fake = await startFake({
      handle: miniPop3({
        messages: msgs.slice(0, 2),
        intercept: (verb, args, io) => {
          if (verb === 'LIST' && args.length === 0) {
            io.send('+OK\r\n1 99999999999999999999999\r\n2 20\r\n.\r\n');
            return true;
          }
          return 'pass';
        },
      }),
    });
    const target = path.join(tmp, 'huge-list');
    const r = await run(target);
    expect(r.code).toBe(76);
    expect(r.stderr).toMatch(/malformed LIST entry/);
    expect(await messageFiles(target, 'alice')).toEqual([]);
    await fake.stop();
    fake = undefined;
  });

  it('--dry-run lists the server without RETR or DELE', async () => {
    const verbs: string[] = [];
    fake = await startFake({
      handle: miniPop3({
        messages: msgs.slice(0, 3),
        intercept: (verb) => {
          verbs.push(verb);
          return 'pass';
        },
      }),
    });
    const target = path.join(tmp, 'dry');
    const r = await run(target, ['--dry-run']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^alice: 3 messages, 0 already in the target, 3 to move/m);
    expect(verbs).not.toContain('RETR');
    expect(verbs).not.toContain('DELE');
    await expect(fs.stat(target)).rejects.toThrow();
  });

  it('a password is never taken from the command line', async () => {
    fake = fake ?? (await startFake({ handle: miniPop3({ messages: msgs }) }));
    const r = await runPoplar(['migrate', '--from', `pop3://alice@127.0.0.1:${fake.port}`, '--to', `maildir:${path.join(tmp, 'nopw')}`, '--tls', 'none'], { timeoutMs: 60_000 });
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/needs --password-env VAR or --password-file FILE/);
  });
});
