/**
 * The client against a real Dovecot: login, UIDL, every message retrieved
 * (pipelined, streamed) and matched with the sizes Dovecot's LIST reports.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pop3Client, type TlsMode } from '../../src/client/index.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';

const MESSAGES = [
  'Subject: one\n\nbody 1\n',
  'Subject: two\r\n\r\nbody 2\r\n.leading dot\r\n.\r\n',
  'Subject: three\n\n' + 'long line '.repeat(600) + '\n',
  `Subject: four\n\n${'x\n'.repeat(20_000)}`,
  'Subject: five (no final newline)\n\nend',
];

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

describe.skipIf(lacks('dovecot'))('against Dovecot', () => {
  let root: string;
  let dc: DovecotHandle;
  let ca: Buffer;

  beforeAll(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'poplar-client-dc-'));
    const box = path.join(root, 'mail', 'alice');
    for (const d of ['new', 'cur', 'tmp']) await mkdir(path.join(box, d), { recursive: true });
    for (const [i, m] of MESSAGES.entries()) await writeFile(path.join(box, 'new', `17000000${10 + i}.M${i}P1.test`), m);
    dc = await startDovecot({ maildirRoot: path.join(root, 'mail'), users: [{ name: 'alice', password: 's3cret' }] });
    ca = await readFile(path.join(dc.dir, 'cert.pem'));
  });

  afterAll(async () => {
    await dc?.stop();
    await rm(root, { recursive: true, force: true });
  });

  const modes: [TlsMode, () => number][] = [
    ['none', () => dc.port],
    ['starttls', () => dc.port],
    ['implicit', () => dc.tlsPort],
  ];
  for (const [tls, port] of modes) {
    it(`${tls}: login, UIDL, RETR of every message matches LIST`, async () => {
      const c = await Pop3Client.connect({ host: '127.0.0.1', port: port(), tls, ca, servername: 'localhost', timeoutMs: 10_000 });
      expect(c.secure).toBe(tls !== 'none');
      const caps = await c.capa();
      expect(caps.has('UIDL')).toBe(true);
      // Dovecot here offers PLAIN and LOGIN (and USER): PLAIN is the strongest of those.
      expect(await c.login('alice', 's3cret')).toBe('PLAIN');
      const list = await c.list();
      expect(list.map((e) => e.number)).toEqual([1, 2, 3, 4, 5]);
      const uidl = await c.uidl();
      expect(uidl.map((e) => e.number)).toEqual([1, 2, 3, 4, 5]);
      expect(new Set(uidl.map((e) => e.uid)).size).toBe(5);
      expect(await c.uidl(2)).toEqual(uidl[1]);

      const bodies: Buffer[] = [];
      await c.retrEach(
        list.map((e) => e.number),
        async (_n, stream) => void bodies.push(await readAll(stream)),
      );
      // LIST sizes match exactly, except that the CRLF a server adds to a message without a final
      // line end (RFC 1939 §3) is on the wire but not in the size.
      const added = MESSAGES.map((m) => (/\n$/.test(m) ? 0 : 2));
      expect(bodies.map((b) => b.length)).toEqual(list.map((e, i) => e.octets + added[i]!));
      // Dovecot serves CRLF line ends and adds one to a message without a final line end.
      bodies.forEach((b, i) => expect(b.toString()).toBe(`${MESSAGES[i]!.replace(/\r?\n/g, '\r\n').replace(/(?<!\r\n)$/, '\r\n')}`));
      expect((await c.stat()).octets).toBe(list.reduce((t, e) => t + e.octets, 0));
      await c.quit();
    });
  }

  it('USER/PASS explicitly, TOP, and a wrong password', async () => {
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: dc.port, tls: 'none', timeoutMs: 10_000 });
    await expect(c.login('alice', 'nope', { mechanism: 'USER' })).rejects.toMatchObject({ name: 'Pop3ServerError', code: 'AUTH' });
    expect(await c.login('alice', 's3cret', { mechanism: 'USER' })).toBe('USER');
    expect((await c.topBuffer(2, 1)).toString()).toBe('Subject: two\r\n\r\nbody 2\r\n');
    await c.quit();
  });
});
