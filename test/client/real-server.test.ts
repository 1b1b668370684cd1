/**
 * The client against a real Poplar: every command, the three TLS modes,
 * certificate verification and pinning, the login methods, pipelining and
 * streaming with backpressure, response codes.
 */
import { createHash, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Pop3AbortError,
  Pop3Client,
  Pop3PolicyError,
  Pop3ProtocolError,
  Pop3ServerError,
  Pop3TimeoutError,
  Pop3TlsError,
  type ConnectOptions,
} from '../../src/client/index.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

let srv: TestServer;
let ca: Buffer;
let fingerprint: string;

const USERS = [
  { name: 'alice', password: 'secret' },
  { name: 'bob', password: 'pw' },
  { name: 'carol', password: 'pw' },
  { name: 'dave', password: 'pw' },
  { name: 'erin', password: 'pw' },
  { name: 'frank', password: 'pw' },
];

const MSG1 = 'Subject: one\r\n\r\nfirst body\r\n.dot line\r\n..two dots\r\n';
const MSG2 = 'Subject: two\r\nX: y\r\n\r\nline 1\r\nline 2\r\nline 3\r\n';
const MSG3 = 'Subject: three\n\nbare LF body\n.\nafter a lone dot\n'; // stored with LF; served as CRLF

beforeAll(async () => {
  srv = await startTestServer({
    users: USERS,
    settings: {
      max_bad_commands: 1000,
      // Every mechanism the client speaks ({PLAIN} users can serve all of them); the server's default is fewer.
      sasl_mechanisms: ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-1-PLUS', 'SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'OAUTHBEARER', 'XOAUTH2', 'PLAIN', 'LOGIN'],
    },
  });
  ca = await fs.readFile(srv.certFile);
  fingerprint = new X509Certificate(srv.cert).fingerprint256;
  for (const m of [MSG1, MSG2, MSG3]) await srv.deliver('alice', m);
});
afterAll(() => srv.stop());

const plain = (extra: Partial<ConnectOptions> = {}): Promise<Pop3Client> =>
  Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none', timeoutMs: 10_000, ...extra });
const implicit = (extra: Partial<ConnectOptions> = {}): Promise<Pop3Client> =>
  Pop3Client.connect({ host: '127.0.0.1', port: srv.tlsPort, tls: 'implicit', ca, timeoutMs: 10_000, ...extra });
const starttls = (extra: Partial<ConnectOptions> = {}): Promise<Pop3Client> =>
  Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'starttls', ca, timeoutMs: 10_000, ...extra });

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const crlf = (s: string): string => s.replace(/\r?\n/g, '\r\n');

describe('commands against a real Poplar', () => {
  it('greeting, CAPA, login, STAT, LIST, UIDL, RETR, TOP, NOOP, DELE, RSET, QUIT', async () => {
    const c = await plain();
    expect(c.greeting).toMatch(/Poplar/);
    expect(c.secure).toBe(false);
    const caps = await c.capa();
    expect(caps.get('PIPELINING')).toEqual([]);
    expect(caps.get('IMPLEMENTATION')).toEqual(['Poplar']);
    expect(caps.has('STLS')).toBe(true);
    expect(caps.get('SASL')).toEqual(expect.arrayContaining(['PLAIN', 'LOGIN', 'SCRAM-SHA-256']));
    expect(c.pipelining).toBe(true);

    // Loopback without TLS: the strongest offered mechanism, not PLAIN.
    expect(await c.login('alice', 'secret')).toBe('SCRAM-SHA-256');
    expect(c.authenticated).toBe(true);

    const sizes = [MSG1, MSG2, MSG3].map((m) => Buffer.byteLength(crlf(m)));
    expect(await c.stat()).toEqual({ count: 3, octets: sizes.reduce((a, b) => a + b) });
    expect(await c.list()).toEqual(sizes.map((octets, i) => ({ number: i + 1, octets })));
    expect(await c.list(2)).toEqual({ number: 2, octets: sizes[1] });
    const uidl = await c.uidl();
    expect(uidl.map((u) => u.number)).toEqual([1, 2, 3]);
    expect(new Set(uidl.map((u) => u.uid)).size).toBe(3);
    expect(await c.uidl(3)).toEqual(uidl[2]);

    expect((await c.retrBuffer(1)).toString()).toBe(MSG1);
    expect((await readAll(await c.retr(3))).toString()).toBe(crlf(MSG3));
    expect((await readAll(await c.top(2, 1))).toString()).toBe('Subject: two\r\nX: y\r\n\r\nline 1\r\n');
    expect((await c.topBuffer(2, 0)).toString()).toBe('Subject: two\r\nX: y\r\n\r\n');

    await c.noop();
    await c.dele(1);
    await expect(c.retrBuffer(1)).rejects.toBeInstanceOf(Pop3ServerError);
    await expect(c.list(1)).rejects.toBeInstanceOf(Pop3ServerError);
    await c.rset();
    expect((await c.list(1)).number).toBe(1);
    await expect(c.retr(99)).rejects.toMatchObject({ name: 'Pop3ServerError', command: 'RETR' });
    await c.quit();
    expect(c.closed).toBe(true);
    await expect(c.noop()).rejects.toBeInstanceOf(Pop3ProtocolError);
  });

  it('QUIT removes exactly the marked messages; a dropped connection removes none', async () => {
    await srv.deliver('bob', 'Subject: a\r\n\r\na\r\n');
    await srv.deliver('bob', 'Subject: b\r\n\r\nb\r\n');
    const c1 = await plain();
    await c1.login('bob', 'pw');
    await c1.dele(1);
    c1.close();
    const c2 = await plain();
    await c2.login('bob', 'pw');
    expect((await c2.stat()).count).toBe(2);
    await c2.dele(1);
    await c2.quit();
    const c3 = await plain();
    await c3.login('bob', 'pw');
    expect((await c3.retrBuffer(1)).toString()).toBe('Subject: b\r\n\r\nb\r\n');
    await c3.quit();
  });

  it('rejects CR, LF and NUL in arguments before anything is sent', async () => {
    const c = await plain();
    await expect(c.login('alice\r\nQUIT', 'x', { mechanism: 'USER' })).rejects.toBeInstanceOf(RangeError);
    await expect(c.login('alice', 'x\ny')).rejects.toBeInstanceOf(RangeError);
    await expect(c.login('al\0ice', 'x')).rejects.toBeInstanceOf(RangeError);
    await expect(c.loginOAuth2('alice', 'tok\r\n')).rejects.toBeInstanceOf(RangeError);
    await expect(c.retr(0)).rejects.toBeInstanceOf(RangeError);
    await expect(c.top(1, -1)).rejects.toBeInstanceOf(RangeError);
    // Still in step: nothing half-sent.
    expect(await c.login('alice', 'secret', { mechanism: 'USER' })).toBe('USER');
    await c.quit();
  });
});

describe('login methods', () => {
  for (const mechanism of ['USER', 'PLAIN', 'LOGIN', 'CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256']) {
    it(`${mechanism} logs in, and a wrong password is a Pop3ServerError [AUTH]`, async () => {
      const c = await plain();
      const e = await c.login('carol', 'wrong', { mechanism }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Pop3ServerError);
      expect((e as Pop3ServerError).code).toBe('AUTH');
      expect(c.authenticated).toBe(false);
      expect(await c.login('carol', 'pw', { mechanism })).toBe(mechanism);
      expect(await c.stat()).toEqual({ count: 0, octets: 0 });
      await c.quit();
    });
  }

  it('over TLS the strongest choice is SCRAM-SHA-256-PLUS with channel binding', async () => {
    const c = await implicit();
    expect(c.tlsProtocol).toBe('TLSv1.3');
    expect(await c.login('carol', 'pw')).toBe('SCRAM-SHA-256-PLUS');
    await c.quit();
    const d = await starttls();
    expect(await d.login('carol', 'pw', { mechanism: 'SCRAM-SHA-1-PLUS' })).toBe('SCRAM-SHA-1-PLUS');
    await d.quit();
  });

  it('-PLUS without TLS is refused by the client', async () => {
    const c = await plain();
    await expect(c.login('carol', 'pw', { mechanism: 'SCRAM-SHA-256-PLUS' })).rejects.toBeInstanceOf(Pop3PolicyError);
    await c.quit();
  });

  it('OAUTHBEARER and XOAUTH2: the JSON error challenge is acknowledged, then -ERR', async () => {
    for (const mechanism of ['OAUTHBEARER', 'XOAUTH2'] as const) {
      const c = await implicit();
      const e = await c.loginOAuth2('carol', 'not-a-valid-token', { mechanism }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Pop3ServerError);
      expect((e as Pop3ServerError).code).toBe('AUTH');
      expect(JSON.parse((e as Pop3ServerError).saslError ?? '')).toMatchObject({ status: expect.any(String) });
      // The exchange ended cleanly: the session goes on.
      expect(await c.login('carol', 'pw')).toBe('SCRAM-SHA-256-PLUS');
      await c.quit();
    }
  });

  it('[IN-USE] surfaces as Pop3ServerError with code IN-USE', async () => {
    const a = await plain();
    await a.login('dave', 'pw');
    const b = await plain();
    const e = await b.login('dave', 'pw').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ServerError);
    expect((e as Pop3ServerError).code).toBe('IN-USE');
    expect((e as Pop3ServerError).rawCode).toBe('IN-USE');
    await a.quit();
    await b.login('dave', 'pw');
    await b.quit();
  });

  it('QUIT answered with -ERR (UPDATE failed) rejects with Pop3ServerError', async () => {
    await srv.deliver('erin', 'Subject: e\r\n\r\ne\r\n');
    const c = await plain();
    await c.login('erin', 'pw');
    // Make removal fail: a directory where the message file was (unlink gives EISDIR/EPERM, even as root).
    const cur = path.join(srv.maildirRoot, 'erin', 'cur');
    const [name] = await fs.readdir(cur);
    await fs.unlink(path.join(cur, name!));
    await fs.mkdir(path.join(cur, name!));
    await c.dele(1);
    const e = await c.quit().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ServerError);
    expect((e as Pop3ServerError).command).toBe('QUIT');
    expect((e as Pop3ServerError).code).toBe('SYS/TEMP');
    expect(c.closed).toBe(true);
  });
});

describe('TLS', () => {
  it('STLS: verified upgrade, capabilities read again (no STLS under TLS)', async () => {
    const c = await starttls();
    expect(c.secure).toBe(true);
    const caps = await c.capa();
    expect(caps.has('STLS')).toBe(false);
    expect(caps.has('PIPELINING')).toBe(true);
    expect(await c.login('alice', 'secret', { mechanism: 'PLAIN' })).toBe('PLAIN');
    expect((await c.stat()).count).toBe(3);
    await c.quit();
  });

  it('implicit TLS with the CA', async () => {
    const c = await implicit();
    expect(c.secure).toBe(true);
    expect(await c.login('alice', 'secret', { mechanism: 'LOGIN' })).toBe('LOGIN');
    await c.quit();
  });

  for (const [name, connect] of [
    ['implicit', implicit],
    ['starttls', starttls],
  ] as const) {
    it(`${name}: a self-signed certificate without the CA is rejected`, async () => {
      const e = await connect({ ca: undefined }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Pop3TlsError);
      expect(String((e as Error).cause)).toMatch(/self.signed/i);
    });

    it(`${name}: a servername the certificate does not carry is rejected`, async () => {
      const e = await connect({ servername: 'mail.example.org' }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Pop3TlsError);
      expect(String((e as Error).cause)).toMatch(/mail\.example\.org/);
    });

    it(`${name}: the certificate's own name as servername is accepted`, async () => {
      const c = await connect({ servername: 'localhost' });
      await c.quit();
    });

    it(`${name}: a pinned fingerprint replaces CA verification; a wrong pin is rejected even with a valid CA`, async () => {
      for (const fp of [fingerprint, fingerprint.replace(/:/g, '').toLowerCase()]) {
        const c = await connect({ ca: undefined, fingerprint: fp });
        expect(c.secure).toBe(true);
        await c.quit();
      }
      const wrong = createHash('sha256').update('not the certificate').digest('hex');
      const e = await connect({ fingerprint: wrong }).catch((x: unknown) => x);
      expect(e).toBeInstanceOf(Pop3TlsError);
      expect((e as Error).message).toMatch(/pinned fingerprint/);
    });

    it(`${name}: insecure accepts any certificate`, async () => {
      const c = await connect({ ca: undefined, servername: 'mail.example.org', insecure: true });
      expect(c.secure).toBe(true);
      await c.quit();
    });
  }

  it('a malformed fingerprint is a RangeError', async () => {
    await expect(implicit({ fingerprint: 'abc' })).rejects.toBeInstanceOf(RangeError);
  });
});

describe('pipelining and streaming', () => {
  const N = 200;
  const body = (n: number): string => `Subject: message ${n}\r\n\r\n${'x'.repeat(n * 7)}\r\nend of ${n}\r\n`;

  beforeAll(async () => {
    for (let n = 1; n <= N; n++) await srv.deliver('frank', body(n));
  });

  it(`retrEach: ${N} RETRs pipelined, each stream handed over in order`, async () => {
    const c = await plain();
    await c.login('frank', 'pw');
    const list = await c.list();
    expect(list).toHaveLength(N);
    const numbers = list.map((e) => e.number);
    const seen: number[] = [];
    await c.retrEach(numbers, async (n, stream) => {
      const text = (await readAll(stream)).toString();
      expect(Buffer.byteLength(text)).toBe(list[n - 1]!.octets);
      const m = /^Subject: message (\d+)\r\n/.exec(text);
      expect(m).not.toBeNull();
      expect(text).toBe(body(Number(m![1])));
      seen.push(n);
    });
    expect(seen).toEqual(numbers);
    expect(c.maxInFlight).toBeGreaterThan(1);
    await c.quit();
  });

  it(`${N} retrBuffer() calls at once are pipelined and answered in order`, async () => {
    const c = await plain();
    await c.login('frank', 'pw');
    const list = await c.list();
    const warnings: Error[] = [];
    const onWarning = (w: Error): number => warnings.push(w);
    process.on('warning', onWarning);
    const { signal } = new AbortController(); // shared by all 200 calls: one listener, no leak warning
    const all = Promise.all(list.map((e) => c.retrBuffer(e.number, { signal })));
    expect(c.inFlight).toBeGreaterThan(1);
    const bodies = await all;
    bodies.forEach((b, i) => expect(b.length).toBe(list[i]!.octets));
    expect(c.maxInFlight).toBe(32);
    await sleep(10);
    process.off('warning', onWarning);
    expect(warnings.map((w) => w.name)).not.toContain('MaxListenersExceededWarning');
    await c.quit();
  });

  it('retrEachBuffered: messages within their bound arrive whole, larger ones as streams, all in order and intact', async () => {
    const c = await plain();
    await c.login('frank', 'pw');
    const list = await c.list();
    const numbers = list.map((e) => e.number);
    // Every third message gets a bound below its size (as from a server that announced a wrong size), a few none at all.
    const bound = (n: number): number => (n % 10 === 0 ? 0 : n % 3 === 0 ? Math.floor(list[n - 1]!.octets / 2) : list[n - 1]!.octets);
    const kinds: string[] = [];
    await c.retrEachBuffered(
      numbers,
      async (n, message) => {
        const data = Buffer.isBuffer(message) ? message : await readAll(message);
        kinds.push(Buffer.isBuffer(message) ? 'buffer' : 'stream');
        expect(data.toString()).toBe(body(n));
        expect(Buffer.isBuffer(message)).toBe(bound(n) >= list[n - 1]!.octets);
      },
      { bufferUpTo: bound },
    );
    expect(kinds).toHaveLength(N);
    expect(kinds).toContain('buffer');
    expect(kinds).toContain('stream');
    expect((await c.retrBuffer(1)).toString()).toBe(body(1)); // still in step
    await c.quit();
  });

  it('retrEach: a handler that does not read its stream, and one that throws, leave the session in step', async () => {
    const c = await plain();
    await c.login('frank', 'pw');
    await c.retrEach([1, 2, 3], () => undefined);
    const e = await c
      .retrEach([4, 5, 6, 7], async (n) => {
        if (n === 5) throw new Error('handler failed');
      })
      .catch((x: unknown) => x);
    expect((e as Error).message).toBe('handler failed');
    expect((await c.retrBuffer(8)).toString()).toBe(body(8));
    await c.quit();
  });

  it('a 5 MiB message read by a slow consumer: the socket pauses, memory stays bounded', async () => {
    const line = `${'y'.repeat(998)}\r\n`;
    const big = `Subject: big\r\n\r\n${line.repeat(Math.ceil((5 * 1024 * 1024) / line.length))}`;
    await srv.deliver('alice', big);
    const c = await plain();
    await c.login('alice', 'secret');
    const n = (await c.stat()).count;
    const stream = await c.retr(n, { timeoutMs: 2000 });
    const hash = createHash('sha256');
    let total = 0;
    let maxBuffered = 0;
    // Sampled from outside: what waits in the stream while the consumer sleeps.
    const sampler = setInterval(() => (maxBuffered = Math.max(maxBuffered, stream.readableLength)), 1);
    stream.pause();
    try {
      for (;;) {
        await sleep(3); // slow consumer: 16 KiB per turn
        const chunk = stream.read(16 * 1024) as Buffer | null;
        if (chunk === null) {
          if (stream.readableEnded) break;
          await new Promise((r) => stream.once('readable', r).once('end', r));
          continue;
        }
        hash.update(chunk);
        total += chunk.length;
      }
    } finally {
      clearInterval(sampler);
    }
    expect(total).toBe(Buffer.byteLength(big));
    expect(hash.digest('hex')).toBe(createHash('sha256').update(big).digest('hex'));
    // 64 KiB high-water mark plus at most one socket read.
    expect(maxBuffered).toBeLessThan(256 * 1024);
    await c.quit();
  });

  it('a consumer that stops reading does not trip the timeout (the server is not at fault)', async () => {
    const c = await plain({ timeoutMs: 300 });
    await c.login('alice', 'secret');
    const n = (await c.stat()).count;
    const stream = await c.retr(n);
    await sleep(800); // far past timeoutMs, socket paused
    expect(c.closed).toBe(false);
    const all = await readAll(stream);
    expect(all.length).toBeGreaterThan(5 * 1024 * 1024);
    await c.quit();
  });

  it('aborting a call destroys the connection and rejects with Pop3AbortError', async () => {
    const c = await plain();
    await c.login('alice', 'secret');
    const ac = new AbortController();
    const p = c.retrBuffer(4, { signal: ac.signal });
    ac.abort(new Error('stop'));
    const e = await p.catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3AbortError);
    expect(c.closed).toBe(true);
    await expect(c.noop()).rejects.toBeInstanceOf(Pop3ProtocolError);
    // An already aborted signal sends nothing.
    const d = await plain();
    await expect(d.noop({ signal: AbortSignal.abort() })).rejects.toBeInstanceOf(Pop3AbortError);
    await d.quit();
  });

  it('connect() honours its signal and timeout', async () => {
    await expect(plain({ signal: AbortSignal.abort() })).rejects.toBeInstanceOf(Pop3AbortError);
    // 192.0.2.1 (TEST-NET-1) never answers: the TCP connect times out.
    const e = await Pop3Client.connect({ host: '192.0.2.1', port: 110, tls: 'none', timeoutMs: 200 }).catch((x: unknown) => x);
    expect(e instanceof Pop3TimeoutError || e instanceof Pop3ProtocolError).toBe(true);
  });
});
