import { describe, it, expect } from 'vitest';
import { mkdtemp, mkdir, writeFile, rm, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';
import { startDovecot } from './helpers/dovecot.js';
import { lacks } from './helpers/peers.js';

/**
 * Sends each command and collects the complete reply (single line, or a
 * multi-line reply up to "\r\n.\r\n" for the commands that have one).
 */
async function pop3Session(port: number, commands: string[]): Promise<string[]> {
  const sock = net.connect({ host: '127.0.0.1', port });
  sock.setEncoding('latin1');
  let buf = '';
  let waiter: (() => void) | null = null;
  let closed = false;
  sock.on('data', (d: string) => {
    buf += d;
    waiter?.();
  });
  sock.on('close', () => {
    closed = true;
    waiter?.();
  });
  const read = async (multi: boolean): Promise<string> => {
    for (;;) {
      const first = buf.indexOf('\r\n');
      if (first >= 0) {
        const isMulti = multi && buf.startsWith('+OK');
        const end = isMulti ? buf.indexOf('\r\n.\r\n') : first;
        if (end >= 0) {
          const len = end + (isMulti ? 5 : 2);
          const reply = buf.slice(0, len);
          buf = buf.slice(len);
          return reply;
        }
      }
      if (closed) throw new Error(`connection closed, pending: ${JSON.stringify(buf)}`);
      await new Promise<void>((resolve) => (waiter = resolve));
      waiter = null;
    }
  };
  const replies = [await read(false)];
  for (const c of commands) {
    sock.write(`${c}\r\n`);
    const verb = c.split(' ')[0]!.toUpperCase();
    const multi = (verb === 'UIDL' || verb === 'LIST') ? !c.includes(' ') : verb === 'RETR' || verb === 'TOP' || verb === 'CAPA';
    replies.push(await read(multi));
  }
  sock.destroy();
  return replies;
}

describe('dovecot test helper', () => {
  it.skipIf(lacks('dovecot'))('serves a maildir over POP3 (USER/PASS/STAT/UIDL)', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'poplar-dc-test-'));
    const maildirRoot = path.join(root, 'mail');
    const box = path.join(maildirRoot, 'alice');
    for (const d of ['new', 'cur', 'tmp']) await mkdir(path.join(box, d), { recursive: true });
    await writeFile(path.join(box, 'new', '1700000001.M1P1.test'), 'Subject: one\n\nbody 1\n');
    await writeFile(path.join(box, 'new', '1700000002.M1P1.test'), 'Subject: two\r\n\r\nbody 2\r\n');
    await writeFile(path.join(box, 'cur', '1700000003.M1P1.test:2,S'), 'Subject: three\n\nbody 3\n');

    const dc = await startDovecot({ maildirRoot, users: [{ name: 'alice', password: 's3cret' }] });
    try {
      const r = await pop3Session(dc.port, ['USER alice', 'PASS s3cret', 'STAT', 'UIDL', 'RETR 1', 'QUIT']);
      expect(r[0]).toMatch(/^\+OK /);
      expect(r[1]).toBe('+OK\r\n');
      expect(r[2]).toBe('+OK Logged in.\r\n');
      // virtual (CRLF) sizes: 21+3 bare LFs, 24, 23+3 bare LFs
      expect(r[3]).toBe('+OK 3 74\r\n');
      // default pop3_uidl_format %08Xu%08Xv: UID + UIDVALIDITY, 8 lower-case hex digits each
      const uidl = r[4]!.split('\r\n');
      expect(uidl[0]).toBe('+OK');
      expect(uidl.slice(1, 4)).toEqual([
        expect.stringMatching(/^1 00000001[0-9a-f]{8}$/),
        expect.stringMatching(/^2 00000002[0-9a-f]{8}$/),
        expect.stringMatching(/^3 00000003[0-9a-f]{8}$/),
      ]);
      expect(r[5]).toBe('+OK 24 octets\r\nSubject: one\r\n\r\nbody 1\r\n.\r\n');
      expect(r[6]).toMatch(/^\+OK Logging out/);
      // Dovecot moved new/ to cur/ and wrote its uidlist.
      expect(await readdir(path.join(box, 'new'))).toEqual([]);
      expect(await readdir(box)).toContain('dovecot-uidlist');
    } finally {
      await dc.stop();
      await rm(root, { recursive: true, force: true });
    }
  });

  it.skipIf(lacks('dovecot'))('starts in high-performance mode', async () => {
    const root = await mkdtemp(path.join(tmpdir(), 'poplar-dc-test-'));
    const maildirRoot = path.join(root, 'mail');
    const box = path.join(maildirRoot, 'bob');
    for (const d of ['new', 'cur', 'tmp']) await mkdir(path.join(box, d), { recursive: true });
    await writeFile(path.join(box, 'new', '1700000001.M1P1.test'), 'Subject: x\r\n\r\ny\r\n');
    const dc = await startDovecot({ maildirRoot, users: [{ name: 'bob', password: 'pw' }], highPerformance: true });
    try {
      for (let i = 0; i < 3; i++) {
        const r = await pop3Session(dc.port, ['USER bob', 'PASS pw', 'STAT', 'QUIT']);
        expect(r[3]).toBe('+OK 1 17\r\n');
      }
    } finally {
      await dc.stop();
      await rm(root, { recursive: true, force: true });
    }
  });
});
