/**
 * LMTP in `poplar serve`, on both stores: what an MTA and a POP3 user see.
 * swaks is the LMTP client for the protocol edges; the POP3 side retrieves
 * byte-exact.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lacks, lacksPostgres } from '../helpers/peers.js';
import { retrieveAll, startLmtpPoplar, swaks, type LmtpPoplar, type StoreKind } from '../helpers/lmtp.js';
import { Wire } from '../helpers/wire.js';

const NO_SWAKS = lacks('swaks');
const PG_DOWN = await lacksPostgres();

const MESSAGE = 'From: Sender <s@example.net>\r\nTo: alice@example.org\r\nSubject: LMTP\r\n\r\nHello,\r\n.a line that starts with a dot\r\n\r\n8bit: \u00e9\r\n';

function bytes(s: string): Buffer {
  return Buffer.from(s, 'utf8');
}

/** What swaks is given: it ends the data with CRLF . CRLF itself, so the message's last CRLF is its own. */
function sent(s: string): Buffer {
  return bytes(s.endsWith('\r\n') ? s.slice(0, -2) : s);
}

async function maildirFiles(root: string, user: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of ['new', 'cur', 'tmp']) {
    const names = await fs.readdir(path.join(root, user, sub)).catch(() => [] as string[]);
    out.push(...names.map((n) => `${sub}/${n}`));
  }
  return out;
}

/** A raw LMTP conversation: line by line, for what swaks cannot do (stop in the middle of DATA). */
async function lmtpConnect(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  expect(await w.line()).toMatch(/^220 /);
  return w;
}

for (const kind of ['maildir', 'postgres'] as StoreKind[]) {
  describe.skipIf(NO_SWAKS || (kind === 'postgres' && PG_DOWN))(`LMTP into the ${kind} store`, () => {
    let p: LmtpPoplar;
    beforeAll(async () => {
      p = await startLmtpPoplar(kind, [
        { name: 'alice' },
        { name: 'bob@example.org' },
        { name: 'full', quotaMessages: 1 },
        { name: 'carol' },
        { name: 'dave' },
        { name: 'erin' },
        { name: 'frank' },
      ], { lmtp: ['max_message_size = 4096', 'recipient_delimiter = "+"'] });
    }, 60_000);
    afterAll(async () => {
      if (process.env['LMTP_DEBUG']) console.log(p?.serve.stderr());
      await p?.stop();
    });

    it('delivers what the MTA sent, after Return-Path and Delivered-To, byte-exact over POP3 (TCP and UNIX socket)', async () => {
      const r = await swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@example.net', '--to', 'alice', '--data', '-'], sent(MESSAGE));
      expect(r.replies.at(-2)).toMatch(/^250 2\.0\.0 <alice> /);
      const r2 = await swaks(['--socket', p.socketPath, '--from', '<>', '--to', 'alice@example.org', '--data', '-'], sent(MESSAGE));
      expect(r2.replies.at(-2)).toMatch(/^250 2\.0\.0 <alice@example.org> /);
      const got = await retrieveAll(p.pop3Port, 'alice');
      expect(got).toEqual([
        bytes(`Return-Path: <s@example.net>\r\nDelivered-To: alice\r\n${MESSAGE}`),
        bytes(`Return-Path: <>\r\nDelivered-To: alice@example.org\r\n${MESSAGE}`),
      ]);
    });

    it('maps a recipient by the whole address, the local part, and without a +extension', async () => {
      const r = await swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@x', '--to', 'bob@EXAMPLE.org,carol+lists@example.org,nobody@example.org', '--data', '-'], sent(MESSAGE));
      expect(r.replies).toContain('550 5.1.1 <nobody@example.org> No such user here');
      expect((await retrieveAll(p.pop3Port, 'bob@example.org')).length).toBe(1);
      expect((await retrieveAll(p.pop3Port, 'carol')).length).toBe(1);
    });

    it('answers each recipient on its own after DATA: unknown at RCPT, over quota 452 4.2.2, delivered 250', async () => {
      // `full` may hold one message: the first fills it.
      await swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@x', '--to', 'full', '--data', '-'], sent(MESSAGE));
      const r = await swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@x', '--to', 'dave,ghost,full,erin', '--data', '-'], sent(MESSAGE));
      const afterData = r.replies.slice(r.replies.findIndex((l) => l.startsWith('354')) + 1, -1);
      expect(r.replies).toContain('550 5.1.1 <ghost> No such user here');
      expect(afterData).toEqual([expect.stringMatching(/^250 2\.0\.0 <dave> /), expect.stringMatching(/^452 4\.2\.2 <full> /), expect.stringMatching(/^250 2\.0\.0 <erin> /)]);
      expect((await retrieveAll(p.pop3Port, 'full')).length).toBe(1);
      // Several recipients: one copy for all, without Delivered-To.
      const [d] = await retrieveAll(p.pop3Port, 'dave');
      expect(d!.toString()).toBe(`Return-Path: <s@x>\r\n${MESSAGE}`);
      expect(await retrieveAll(p.pop3Port, 'erin')).toEqual([d]);
      if (kind === 'maildir') {
        const [a] = (await maildirFiles(p.maildirRoot, 'dave')).filter((f) => !f.startsWith('tmp/'));
        const [b] = (await maildirFiles(p.maildirRoot, 'erin')).filter((f) => !f.startsWith('tmp/'));
        const [sa, sb] = await Promise.all([fs.stat(path.join(p.maildirRoot, 'dave', a!)), fs.stat(path.join(p.maildirRoot, 'erin', b!))]);
        expect(sa.ino).toBe(sb.ino); // hard links: one file on disk
      }
    });

    it('refuses a message over max_message_size: at MAIL FROM with SIZE=, and after DATA for each recipient, storing nothing', async () => {
      const big = `Subject: big\r\n\r\n${'x'.repeat(78)}\r\n`.repeat(80);
      const wire = await lmtpConnect(p.lmtpPort);
      wire.send('LHLO mta.test');
      let line = '';
      const lhlo: string[] = [];
      do lhlo.push((line = await wire.line()));
      while (line.startsWith('250-'));
      expect(lhlo).toEqual(expect.arrayContaining(['250-PIPELINING', '250-8BITMIME', '250-ENHANCEDSTATUSCODES', '250 SIZE 4096']));
      expect(await wire.cmd('MAIL FROM:<s@x> SIZE=9000')).toMatch(/^552 /);
      wire.close();
      const r = await swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@x', '--to', 'frank,frank@example.org', '--data', '-'], sent(big));
      const afterData = r.replies.slice(r.replies.findIndex((l) => l.startsWith('354')) + 1, -1);
      expect(afterData).toHaveLength(2);
      for (const l of afterData) expect(l).toMatch(/^552 5\.3\.4 /);
      expect(await retrieveAll(p.pop3Port, 'frank')).toEqual([]);
    });

    it('refuses a bad command sequence and SMTP greetings', async () => {
      const wire = await lmtpConnect(p.lmtpPort);
      expect(await wire.cmd('HELO mta.test')).toMatch(/^500 /);
      expect(await wire.cmd('EHLO mta.test')).toMatch(/^500 /);
      expect(await wire.cmd('MAIL FROM:<s@x>')).toMatch(/^503 /);
      wire.send('LHLO mta.test');
      while ((await wire.line()).startsWith('250-'));
      expect(await wire.cmd('RCPT TO:<alice>')).toMatch(/^503 /);
      expect(await wire.cmd('DATA')).toMatch(/^503 /);
      expect(await wire.cmd('MAIL FROM:<s@x>')).toMatch(/^250 /);
      expect(await wire.cmd('DATA')).toMatch(/^503 /);
      expect(await wire.cmd('RSET')).toMatch(/^250 /);
      expect(await wire.cmd('NOOP')).toMatch(/^250 /);
      expect(await wire.cmd('QUIT')).toMatch(/^221 /);
      wire.close();
    });

    it('leaves nothing behind when the client disconnects in the middle of DATA', async () => {
      const wire = await lmtpConnect(p.lmtpPort);
      wire.send('LHLO mta.test');
      while ((await wire.line()).startsWith('250-'));
      expect(await wire.cmd('MAIL FROM:<s@x>')).toMatch(/^250 /);
      expect(await wire.cmd('RCPT TO:<frank>')).toMatch(/^250 /);
      expect(await wire.cmd('DATA')).toMatch(/^354 /);
      wire.sendRaw('Subject: half\r\n\r\nthe first half of a message\r\n');
      await new Promise((r) => setTimeout(r, 200));
      wire.socket.destroy();
      await new Promise((r) => setTimeout(r, 500));
      expect(await retrieveAll(p.pop3Port, 'frank')).toEqual([]);
      if (kind === 'maildir') expect(await maildirFiles(p.maildirRoot, 'frank')).toEqual([]);
    });

    it('a delivery during an open POP3 session leaves its message list alone; the next login sees it', async () => {
      const send = (subject: string): Promise<unknown> =>
        swaks(['--server', '127.0.0.1', '--port', String(p.lmtpPort), '--from', 's@x', '--to', 'erin', '--data', '-'], sent(`Subject: ${subject}\r\n\r\nbody\r\n`));
      const before = (await retrieveAll(p.pop3Port, 'erin')).length;
      const wire = await Wire.connect(p.pop3Port);
      await wire.line();
      await wire.login('erin', 'secret');
      const stat = await wire.cmd('STAT');
      expect(stat).toMatch(new RegExp(`^\\+OK ${before} `));
      await send('during the session');
      expect(await wire.cmd('STAT')).toBe(stat);
      expect((await wire.cmdLines('UIDL')).lines).toHaveLength(before);
      expect(await wire.cmd(`RETR ${before + 1}`)).toMatch(/^-ERR/);
      expect(await wire.cmd('QUIT')).toMatch(/^\+OK/);
      wire.close();
      const after = await retrieveAll(p.pop3Port, 'erin');
      expect(after).toHaveLength(before + 1);
      expect(after.at(-1)!.toString()).toContain('Subject: during the session');
    });
  });
}

describe('LMTP listeners', () => {
  it('refuses a TCP listener on a non-loopback address unless allow_remote', async () => {
    const { lmtpListenSpecs } = await import('../../src/delivery/lmtp-server.js');
    const { LmtpConfigSchema } = await import('../../src/delivery/config.js');
    expect(() => lmtpListenSpecs(LmtpConfigSchema.parse({ listen: ['0.0.0.0:24'] }))).toThrow(/allow_remote/);
    expect(() => lmtpListenSpecs(LmtpConfigSchema.parse({ listen: ['192.0.2.1:24'] }))).toThrow(/not a loopback/);
    expect(lmtpListenSpecs(LmtpConfigSchema.parse({ listen: ['0.0.0.0:24'], allow_remote: true }))).toEqual([{ host: '0.0.0.0', port: 24 }]);
    expect(lmtpListenSpecs(LmtpConfigSchema.parse({ listen: ['[::1]:24', '127.0.0.1:24', '/run/poplar/lmtp'] }))).toEqual([
      { host: '::1', port: 24 },
      { host: '127.0.0.1', port: 24 },
      { path: '/run/poplar/lmtp' },
    ]);
    expect(() => LmtpConfigSchema.parse({ listen: ['relative/sock'] })).toThrow();
  });

  it.skipIf(NO_SWAKS)('answers 552 5.2.2 for a full maildrop with over_quota = "permanent" and gives the socket socket_group', async () => {
    const root = process.getuid?.() === 0;
    const p = await startLmtpPoplar('maildir', [{ name: 'alice' }, { name: 'tiny', quotaBytes: 10 }], {
      lmtp: ['over_quota = "permanent"', ...(root ? ['socket_group = "nogroup"', 'socket_mode = "0660"'] : [])],
      quota: ['max_messages = 1'],
    });
    try {
      const send = (to: string): Promise<{ replies: string[] }> => swaks(['--socket', p.socketPath, '--from', 's@x', '--to', to, '--data', '-'], sent(MESSAGE));
      expect((await send('tiny')).replies.at(-2)).toMatch(/^552 5\.2\.2 <tiny> /);
      // The [quota] default (one message) for alice, who has no limit of her own.
      expect((await send('alice')).replies.at(-2)).toMatch(/^250 2\.0\.0/);
      expect((await send('alice')).replies.at(-2)).toMatch(/^552 5\.2\.2 <alice> /);
      expect(await retrieveAll(p.pop3Port, 'alice')).toHaveLength(1);
      if (root) {
        const { execFileSync } = await import('node:child_process');
        const gid = Number(execFileSync('getent', ['group', 'nogroup'], { encoding: 'utf8' }).split(':')[2]);
        const st = await fs.stat(p.socketPath);
        expect(st.gid).toBe(gid);
        expect(st.mode & 0o777).toBe(0o660);
      }
    } finally {
      await p.stop();
    }
  }, 60_000);

  it('makes the UNIX socket with socket_mode and replaces a stale one, but not a live one or a file', async () => {
    const p = await startLmtpPoplar('maildir', [{ name: 'alice' }], { lmtp: ['socket_mode = "0660"'] });
    try {
      const st = await fs.stat(p.socketPath);
      expect(st.isSocket()).toBe(true);
      expect(st.mode & 0o777).toBe(0o660);
      // A second server on the same socket path: refused (the first is alive).
      const other = await fs.mkdtemp(path.join(p.dir, 'b-'));
      await fs.writeFile(path.join(other, 'users'), 'alice:{PLAIN}secret::::::\n');
      const cfg = (await fs.readFile(p.configFile, 'utf8')).replace(/data_dir = .*/, `data_dir = ${JSON.stringify(other)}`);
      await fs.writeFile(path.join(other, 'p.toml'), cfg);
      const { runPoplar } = await import('../helpers/cli.js');
      const r = await runPoplar(['serve', '--config', path.join(other, 'p.toml')], { cwd: other, timeoutMs: 20_000 });
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/another process is listening/);
    } finally {
      await p.stop();
    }
    // A stale socket (nobody listening) is replaced; a regular file is not.
    const dir = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'poplar-lmtp-stale-'));
    const stale = net.createServer().listen(path.join(dir, 'lmtp.sock'));
    await new Promise((r) => stale.once('listening', r));
    // Closing a Node server unlinks its socket file: copy the node first with a hard link.
    await fs.link(path.join(dir, 'lmtp.sock'), path.join(dir, 'kept.sock'));
    await new Promise((r) => stale.close(r));
    await fs.rename(path.join(dir, 'kept.sock'), path.join(dir, 'lmtp.sock'));
    const q = await startLmtpPoplar('maildir', [{ name: 'alice' }], { dir });
    const r = await swaks(['--socket', q.socketPath, '--from', 's@x', '--to', 'alice', '--data', '-'], sent(MESSAGE));
    expect(r.replies.at(-2)).toMatch(/^250 2\.0\.0/);
    await q.serve.stop();
    await fs.writeFile(path.join(dir, 'lmtp.sock'), 'not a socket');
    const { runPoplar } = await import('../helpers/cli.js');
    const bad = await runPoplar(['serve', '--config', q.configFile], { cwd: dir, timeoutMs: 20_000 });
    expect(bad.code).toBe(78);
    expect(bad.stderr).toMatch(/not a socket/);
    await fs.rm(dir, { recursive: true, force: true });
  }, 60_000);
});
