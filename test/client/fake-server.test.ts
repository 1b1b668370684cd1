/**
 * The client against servers that misbehave in the ways real ones do:
 * replies split at every byte, bare LF, `+OK` without a space, wrong sizes,
 * bytes injected after the STLS `+OK`, silence, hang-ups mid-reply.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import type { Readable } from 'node:stream';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import {
  Pop3Client,
  Pop3PolicyError,
  Pop3ProtocolError,
  Pop3ServerError,
  Pop3TimeoutError,
  Pop3TlsError,
  type ConnectOptions,
} from '../../src/client/index.js';
import { testCertificate } from '../helpers/server.js';
import { asServed, miniPop3, startFake, type FakeOptions, type FakeServer } from './fake-server.js';
import { lacksPeer, type Peer } from '../helpers/peers.js';

const MESSAGES = [
  'Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast line without an end',
  'Subject: empty body\r\n\r\n',
  `X-Long: 1\r\n\r\n${'z'.repeat(5000)}\r\n`,
  'Subject: headers only',
  '.\r\n\r\n.', // a message that is nothing but dots
];

const servers: FakeServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

async function fake(opts: FakeOptions): Promise<FakeServer> {
  const s = await startFake(opts);
  servers.push(s);
  return s;
}

function connect(s: FakeServer, extra: Partial<ConnectOptions> = {}): Promise<Pop3Client> {
  return Pop3Client.connect({ host: s.host, port: s.port, tls: 'none', timeoutMs: 5000, ...extra });
}

async function readAll(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

/** Every command against a server with the given quirks; content must come out exactly as served. */
async function fullSession(s: FakeServer, eol: '\r\n' | '\n'): Promise<void> {
  const c = await connect(s);
  expect(c.greeting).toBe('fake POP3 ready');
  const caps = await c.capa();
  expect([...caps.keys()]).toEqual(['USER', 'UIDL', 'TOP', 'PIPELINING']);
  expect(await c.login('u', 'p')).toBe('USER');
  const served = MESSAGES.map((m) => asServed(m, eol));
  expect((await c.stat()).count).toBe(MESSAGES.length);
  expect((await c.list()).map((e) => e.number)).toEqual([1, 2, 3, 4, 5]);
  expect((await c.list(3)).number).toBe(3);
  expect(await c.uidl()).toEqual(MESSAGES.map((_, i) => ({ number: i + 1, uid: `uid-${i + 1}` })));
  expect(await c.uidl(2)).toEqual({ number: 2, uid: 'uid-2' });
  // Pipelined all at once, then one by one as streams.
  const bodies = await Promise.all(MESSAGES.map((_, i) => c.retrBuffer(i + 1)));
  expect(bodies.map((b) => b.toString('latin1'))).toEqual(served);
  for (let i = 0; i < MESSAGES.length; i++) expect((await readAll(await c.retr(i + 1))).toString('latin1')).toBe(served[i]);
  expect((await c.topBuffer(1, 1)).toString('latin1')).toBe(asServed('Subject: dots\n\n.starts with a dot\n', eol));
  expect((await readAll(await c.top(4, 0))).toString('latin1')).toBe(asServed('Subject: headers only', eol));
  await c.dele(2);
  await expect(c.retrBuffer(2)).rejects.toBeInstanceOf(Pop3ServerError);
  await c.rset();
  await c.noop();
  await c.quit();
  expect(c.closed).toBe(true);
}

describe('tolerant parsing', () => {
  it('every reply split at every byte', async () => {
    const s = await fake({ writeMode: 'bytewise', handle: miniPop3({ messages: MESSAGES }) });
    await fullSession(s, '\r\n');
  });

  it('bare LF line ends in status lines and bodies', async () => {
    const s = await fake({ greeting: '+OK fake POP3 ready\n', handle: miniPop3({ messages: MESSAGES, eol: '\n' }) });
    await fullSession(s, '\n');
  });

  it('bare LF, split at every byte, `+OK` with no space', async () => {
    const s = await fake({
      writeMode: 'bytewise',
      greeting: '+OK fake POP3 ready\n',
      handle: miniPop3({ messages: MESSAGES, eol: '\n', bareOk: true }),
    });
    await fullSession(s, '\n');
  });

  it('`+OK` with nothing after it (`+OK\\r\\n`)', async () => {
    const s = await fake({ handle: miniPop3({ messages: MESSAGES, bareOk: true }) });
    await fullSession(s, '\r\n');
  });

  for (const sizeError of [-3, 1000]) {
    it(`sizes announced ${sizeError > 0 ? 'too large' : 'too small'}: the end is found by the terminator`, async () => {
      const s = await fake({ handle: miniPop3({ messages: MESSAGES, sizeError }) });
      await fullSession(s, '\r\n');
    });
  }

  it('response codes: known, sub-codes of known ones, unknown, none', async () => {
    const replies = [
      '-ERR [SYS/TEMP/DB-DOWN] try later',
      '-ERR [X-UNKNOWN] whatever',
      '-ERR',
      '-ERR [LOGIN-DELAY] wait 900 seconds',
      '-ERR [SYS/PERM] never',
      '-ERR [AUTH] wrong',
      '-err [in-use] lower case',
    ];
    let k = 0;
    const s = await fake({
      handle: (line, io) => {
        if (line === 'NOOP') return void io.send(`${replies[k++]}\r\n`);
        return void io.send('-ERR no\r\n');
      },
    });
    const c = await connect(s);
    const got: unknown[] = [];
    for (let i = 0; i < replies.length; i++) {
      const e = (await c.noop().catch((x: unknown) => x)) as Pop3ServerError;
      expect(e).toBeInstanceOf(Pop3ServerError);
      got.push({ code: e.code, rawCode: e.rawCode, text: e.text });
    }
    expect(got).toEqual([
      { code: 'SYS/TEMP', rawCode: 'SYS/TEMP/DB-DOWN', text: 'try later' },
      { code: undefined, rawCode: 'X-UNKNOWN', text: 'whatever' },
      { code: undefined, rawCode: undefined, text: '' },
      { code: 'LOGIN-DELAY', rawCode: 'LOGIN-DELAY', text: 'wait 900 seconds' },
      { code: 'SYS/PERM', rawCode: 'SYS/PERM', text: 'never' },
      { code: 'AUTH', rawCode: 'AUTH', text: 'wrong' },
      { code: 'IN-USE', rawCode: 'in-use', text: 'lower case' },
    ]);
    // CAPA refused: an RFC 1939 server; login falls back to USER/PASS.
    expect(await c.capa()).toEqual(new Map());
    c.close();
  });

  it('a greeting of -ERR rejects connect() with Pop3ServerError', async () => {
    const s = await fake({ greeting: '-ERR [SYS/TEMP] too busy\r\n', handle: () => undefined });
    const e = await connect(s).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ServerError);
    expect((e as Pop3ServerError).code).toBe('SYS/TEMP');
  });

  it('a server without PIPELINING gets one command at a time', async () => {
    const s = await fake({ handle: miniPop3({ messages: MESSAGES, capabilities: ['USER', 'UIDL'] }) });
    const c = await connect(s);
    await c.login('u', 'p');
    expect(c.pipelining).toBe(false);
    const bodies = await Promise.all([1, 2, 3, 4, 5].map((n) => c.retrBuffer(n)));
    expect(bodies.map((b) => b.toString('latin1'))).toEqual(MESSAGES.map((m) => asServed(m)));
    expect(c.maxInFlight).toBe(1);
    await c.quit();
  });
});

describe('pipelined replies cut at arbitrary points', () => {
  it('status lines, bodies and terminators split anywhere, rest bytes carried to the next reply', async () => {
    const line = fc.string({ unit: fc.constantFrom('a', '.', ' ', '\r', '\n'), maxLength: 30 });
    await fc.assert(
      fc.asyncProperty(
        fc.array(line, { minLength: 1, maxLength: 6 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 20 }),
        fc.constantFrom<'\r\n' | '\n'>('\r\n', '\n'),
        async (messages, cuts, eol) => {
          const replies: string[] = [];
          const s = await fake({
            handle: async (cmd, io) => {
              if (cmd === 'CAPA') return void io.send(`+OK${eol}PIPELINING${eol}.${eol}`);
              const m = messages[Number(cmd.split(' ')[1]) - 1]!;
              const body = asServed(m, eol).split(eol).slice(0, -1);
              replies.push(`+OK${eol}${body.map((l) => (l.startsWith('.') ? `.${l}` : l) + eol).join('')}.${eol}`);
              if (replies.length < messages.length) return;
              // Everything at once, cut into pieces that ignore reply boundaries.
              const all = Buffer.from(replies.join(''), 'latin1');
              for (let pos = 0, k = 0; pos < all.length; k++) {
                const n = cuts[k % cuts.length]!;
                await io.send(all.subarray(pos, pos + n));
                await new Promise((r) => setImmediate(r));
                pos += n;
              }
            },
          });
          const c = await connect(s);
          await c.capa();
          const got = await Promise.all(messages.map((_, i) => c.retrBuffer(i + 1)));
          expect(got.map((b) => b.toString('latin1'))).toEqual(messages.map((m) => asServed(m, eol)));
          c.close();
          await s.stop();
          servers.splice(servers.indexOf(s), 1);
        },
      ),
      { numRuns: 60 },
    );
  });
});

describe('broken servers', () => {
  it('garbage instead of a status line is a Pop3ProtocolError', async () => {
    const s = await fake({ handle: (_l, io) => void io.send('HELLO THERE\r\n') });
    const c = await connect(s);
    await expect(c.noop()).rejects.toBeInstanceOf(Pop3ProtocolError);
    expect(c.closed).toBe(true);
  });

  it('data nobody asked for breaks the connection instead of answering the next command', async () => {
    const s = await fake({ handle: (_l, io) => void io.send('+OK\r\n+OK surprise\r\n') });
    const c = await connect(s);
    await c.noop();
    await new Promise((r) => setTimeout(r, 50));
    expect(c.closed).toBe(true);
    const e = await c.noop().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ProtocolError);
    expect(String((e as Error).cause)).toMatch(/unexpected data/);
  });

  it('a server that never answers: the timeout fires, the connection is destroyed, nothing hangs', async () => {
    const s = await fake({ handle: (line, io) => (line === 'STAT' ? false : void io.send('+OK\r\n')) });
    const c = await connect(s, { timeoutMs: 5000 });
    await c.noop();
    const t0 = Date.now();
    const p = c.stat({ timeoutMs: 200 });
    const queued = c.noop(); // behind it
    await expect(p).rejects.toBeInstanceOf(Pop3TimeoutError);
    await expect(queued).rejects.toBeInstanceOf(Pop3TimeoutError);
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(c.closed).toBe(true);
  });

  it('no greeting: connect() times out', async () => {
    const s = await fake({ greeting: '', handle: () => undefined });
    await expect(connect(s, { timeoutMs: 200 })).rejects.toBeInstanceOf(Pop3TimeoutError);
  });

  it('a reply that stops mid-body times out even though bytes came earlier', async () => {
    const s = await fake({ handle: (_l, io) => void io.send('+OK\r\nSubject: x\r\n\r\nhalf') });
    const c = await connect(s, { timeoutMs: 200 });
    await expect(c.retrBuffer(1)).rejects.toBeInstanceOf(Pop3TimeoutError);
  });

  it('hang-up mid-body: Pop3ProtocolError, and a stream errors', async () => {
    const s = await fake({
      handle: async (_l, io) => {
        await io.send('+OK 100 octets\r\nSubject: x\r\n\r\npartial bo');
        io.close();
      },
    });
    const c = await connect(s);
    const e = await c.retrBuffer(1).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ProtocolError);
    expect((e as Error).message).toMatch(/during the reply to RETR/);

    const d = await connect(s);
    const stream = await d.retr(1);
    await expect(readAll(stream)).rejects.toBeInstanceOf(Pop3ProtocolError);
  });

  it('hang-up mid status line and hang-up instead of the QUIT reply are errors', async () => {
    const s = await fake({
      handle: async (line, io) => {
        if (line === 'NOOP') await io.send('+OK half a li');
        io.close();
      },
    });
    const c = await connect(s);
    await expect(c.noop()).rejects.toBeInstanceOf(Pop3ProtocolError);
    const d = await connect(s);
    // The fetcher relies on this: no +OK to QUIT means nothing was deleted.
    await expect(d.quit()).rejects.toBeInstanceOf(Pop3ProtocolError);
  });
});

describe('STLS', () => {
  async function stlsServer(inject: string): Promise<FakeServer> {
    let secure = false;
    return fake({
      handle: async (line, io) => {
        if (line === 'STLS') {
          await io.send(`+OK Begin TLS\r\n${inject}`); // one write: the injection arrives with the +OK
          await io.startTls();
          secure = true;
          return;
        }
        if (line === 'CAPA') {
          const caps = secure ? ['USER', 'SASL PLAIN', 'PIPELINING', 'X-AFTER-TLS'] : ['STLS', 'USER'];
          return void io.send(`+OK\r\n${caps.join('\r\n')}\r\n.\r\n`);
        }
        if (line === 'QUIT') {
          await io.send('+OK bye\r\n');
          io.close();
          return false;
        }
        return void io.send('+OK\r\n');
      },
    });
  }

  for (const inject of ['-ERR injected\r\n', '+OK\r\nEVIL-CAPABILITY\r\n.\r\n']) {
    it(`bytes after the STLS +OK (${JSON.stringify(inject)}) are discarded, TLS completes, CAPA is read again`, async () => {
      const { certFile } = await testCertificate();
      const s = await stlsServer(inject);
      const c = await connect(s, { tls: 'starttls', ca: await fs.readFile(certFile) });
      expect(c.secure).toBe(true);
      const caps = await c.capa();
      expect(caps.has('X-AFTER-TLS')).toBe(true);
      expect(caps.has('EVIL-CAPABILITY')).toBe(false);
      expect(c.pipelining).toBe(true);
      expect(await c.login('u', 'p')).toBe('PLAIN');
      await c.quit();
      expect(s.received).toEqual(['STLS', 'CAPA', `AUTH PLAIN ${Buffer.from('\0u\0p').toString('base64')}`, 'QUIT']);
    });
  }

  it('STLS refused: Pop3TlsError, nothing else is tried', async () => {
    const s = await fake({ handle: (_l, io) => void io.send('-ERR no TLS here\r\n') });
    const e = await connect(s, { tls: 'starttls' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3TlsError);
    expect(s.received).toEqual(['STLS']);
  });

  it('a server that says +OK to STLS and then never does TLS: timeout', async () => {
    const s = await fake({ handle: async (_l, io) => (await io.send('+OK go ahead\r\n'), false) });
    await expect(connect(s, { tls: 'starttls', timeoutMs: 300 })).rejects.toBeInstanceOf(Pop3TimeoutError);
  });

  it('a certificate that fails verification after STLS: Pop3TlsError, no credentials were sent', async () => {
    const s = await stlsServer('');
    const e = await connect(s, { tls: 'starttls' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3TlsError);
    expect(s.received).toEqual(['STLS']);
  });
});

describe('logins against scripted servers', () => {
  it('APOP with the RFC 1939 example', async () => {
    const s = await fake({
      greeting: '+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n',
      handle: (line, io) => void io.send(line === 'APOP mrose c4c9334bac560ecc979e58001b3e22fb' ? '+OK maildrop locked\r\n' : '-ERR\r\n'),
    });
    const c = await connect(s);
    expect(c.apopTimestamp).toBe('<1896.697170952@dbc.mtview.ca.us>');
    expect(await c.login('mrose', 'tanstaaf', { mechanism: 'APOP' })).toBe('APOP');
    expect(c.authenticated).toBe(true);
    c.close();
  });

  it('APOP without a timestamp in the greeting is refused locally', async () => {
    const s = await fake({ handle: (line, io) => void io.send(line === 'CAPA' ? '-ERR\r\n' : '+OK\r\n') });
    const c = await connect(s);
    await expect(c.login('mrose', 'tanstaaf', { mechanism: 'APOP' })).rejects.toBeInstanceOf(Pop3PolicyError);
    expect(s.received).toEqual(['CAPA']);
    c.close();
  });

  it('an initial response too long for the AUTH line waits for the empty challenge (RFC 5034 §4)', async () => {
    const password = 'p'.repeat(300);
    const expected = Buffer.from(`\0u\0${password}`).toString('base64');
    const s = await fake({
      handle: (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nSASL PLAIN\r\n.\r\n');
        if (line === 'AUTH PLAIN') return void io.send('+ \r\n');
        return void io.send(line === expected ? '+OK\r\n' : '-ERR\r\n');
      },
    });
    const c = await connect(s);
    expect(await c.login('u', password)).toBe('PLAIN');
    expect(s.received).toEqual(['CAPA', 'AUTH PLAIN', expected]);
    c.close();
  });

  it('a challenge that is not base64: the client cancels with * and reports a protocol error', async () => {
    const s = await fake({
      handle: (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nSASL CRAM-MD5\r\n.\r\n');
        if (line.startsWith('AUTH')) return void io.send('+ this is not base64!\r\n');
        return void io.send('-ERR cancelled\r\n');
      },
    });
    const c = await connect(s);
    await expect(c.login('u', 'p')).rejects.toBeInstanceOf(Pop3ProtocolError);
    expect(s.received).toEqual(['CAPA', 'AUTH CRAM-MD5', '*']);
    expect(c.closed).toBe(false); // the exchange ended cleanly with -ERR
    c.close();
  });

  it('SCRAM: +OK without the server signature is not accepted', async () => {
    const s = await fake({
      handle: (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nSASL SCRAM-SHA-256\r\n.\r\n');
        if (line.startsWith('AUTH SCRAM-SHA-256 ')) {
          const first = Buffer.from(line.split(' ')[2]!, 'base64').toString();
          const nonce = /r=([^,]+)/.exec(first)![1]!;
          const serverFirst = `r=${nonce}srv,s=${Buffer.from('salt').toString('base64')},i=4096`;
          return void io.send(`+ ${Buffer.from(serverFirst).toString('base64')}\r\n`);
        }
        return void io.send('+OK welcome, no proof needed\r\n'); // skips `+ v=...`
      },
    });
    const c = await connect(s);
    const e = await c.login('u', 'p').catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ProtocolError);
    expect((e as Error).message).toMatch(/did not prove/);
    expect(c.authenticated).toBe(false);
    expect(c.closed).toBe(true);
  });

  it('SCRAM: a wrong server signature makes the client cancel', async () => {
    const s = await fake({
      handle: (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nSASL SCRAM-SHA-1\r\n.\r\n');
        if (line.startsWith('AUTH SCRAM-SHA-1 ')) {
          const first = Buffer.from(line.split(' ')[2]!, 'base64').toString();
          const nonce = /r=([^,]+)/.exec(first)![1]!;
          return void io.send(`+ ${Buffer.from(`r=${nonce}srv,s=${Buffer.from('salt').toString('base64')},i=4096`).toString('base64')}\r\n`);
        }
        if (line === '*') return void io.send('-ERR cancelled\r\n');
        return void io.send(`+ ${Buffer.from(`v=${Buffer.alloc(20).toString('base64')}`).toString('base64')}\r\n`);
      },
    });
    const c = await connect(s);
    await expect(c.login('u', 'p')).rejects.toThrow(/signature mismatch/);
    expect(s.received.at(-1)).toBe('*');
    c.close();
  });
});

describe('cleartext passwords', () => {
  const external = Object.values(os.networkInterfaces())
    .flat()
    .find((i) => i !== undefined && !i.internal && i.family === 'IPv4')?.address;

  const NON_LOOPBACK: Peer = { name: 'a non-loopback IPv4 address on this machine', install: 'a network interface besides lo' };

  it.skipIf(lacksPeer(NON_LOOPBACK, external !== undefined))('refused to a non-loopback host without TLS; CRAM-MD5 still works; allowPlaintextPassword sends', async () => {
    const plaintextOnly = await fake({
      host: external!,
      handle: (line, io) => void io.send(line === 'CAPA' ? '+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n' : '+OK\r\n'),
    });
    const c = await connect(plaintextOnly);
    await expect(c.login('u', 'secret')).rejects.toBeInstanceOf(Pop3PolicyError);
    for (const mechanism of ['USER', 'PLAIN', 'LOGIN']) {
      await expect(c.login('u', 'secret', { mechanism })).rejects.toBeInstanceOf(Pop3PolicyError);
    }
    await expect(c.loginOAuth2('u', 'token', { mechanism: 'XOAUTH2' })).rejects.toBeInstanceOf(Pop3PolicyError);
    expect(plaintextOnly.received).toEqual(['CAPA']); // the password never left
    c.close();

    const allowed = await connect(plaintextOnly, { allowPlaintextPassword: true });
    expect(await allowed.login('u', 'secret')).toBe('PLAIN');
    allowed.close();

    const withCram = await fake({
      host: external!,
      handle: (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nUSER\r\nSASL PLAIN CRAM-MD5\r\n.\r\n');
        if (line === 'AUTH CRAM-MD5') return void io.send(`+ ${Buffer.from('<1.2@host>').toString('base64')}\r\n`);
        return void io.send('+OK\r\n');
      },
    });
    const d = await connect(withCram);
    expect(await d.login('u', 'secret')).toBe('CRAM-MD5');
    expect(withCram.received.join('\n')).not.toMatch(/secret/);
    d.close();
  });
});
