/**
 * A hostile or broken server against the client library, over real sockets:
 * a connection dropped mid-message, replies that never end, messages longer
 * than announced, a server that trickles, SASL challenges without end, UIDLs
 * with a CR inside, control characters in -ERR texts. Each ends in a typed
 * error within a bound, never a crash or an ever-growing buffer.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { isValidUid, Pop3Client, Pop3ConnectionLostError, Pop3LimitError, Pop3ServerError, Pop3TimeoutError } from '../../src/client/index.js';
import { flood, miniPop3, startFake, type FakeServer } from './fake-server.js';

let fake: FakeServer | undefined;
afterEach(async () => {
  await fake?.stop();
  fake = undefined;
});

const MSG = 'Subject: one\r\n\r\nbody of message one\r\n';

async function connect(over: Partial<Parameters<typeof Pop3Client.connect>[0]> = {}): Promise<Pop3Client> {
  const c = await Pop3Client.connect({ host: fake!.host, port: fake!.port, tls: 'none', timeoutMs: 5000, ...over });
  await c.login('alice', 'pw', { mechanism: 'USER' });
  return c;
}

/** Octets the server wrote beyond the bound before the client hung up: socket buffers, no more. */
const SLACK = 16 * 1024 * 1024;

describe('the server drops the connection in the middle of RETR', () => {
  for (const pipelining of [true, false]) {
    it(`retrEach rejects with Pop3ConnectionLostError, no process crash (${pipelining ? 'with' : 'without'} PIPELINING)`, async () => {
      fake = await startFake({
        handle: miniPop3({
          messages: [MSG, MSG, MSG],
          capabilities: pipelining ? ['USER', 'UIDL', 'PIPELINING'] : ['USER', 'UIDL'],
          intercept: async (verb, args, io) => {
            if (verb !== 'RETR' || args[0] !== '2') return 'pass';
            await io.send('+OK 40 octets\r\nSubject: cut sh');
            await sleep(20);
            io.close();
            return false;
          },
        }),
      });
      const c = await connect();
      await c.capa();
      const got: number[] = [];
      const run = c.retrEach([1, 2, 3], async (n, message) => {
        // A consumer that does something else first (a ledger write, a lock) before it reads.
        await sleep(100);
        const chunks: Buffer[] = [];
        for await (const ch of message) chunks.push(ch as Buffer);
        got.push(n);
      });
      await expect(run).rejects.toBeInstanceOf(Pop3ConnectionLostError);
      expect(got).toEqual([1]);
      c.close();
    });
  }
});

describe('multi-line replies are bounded', () => {
  it('a UIDL reply that never ends: Pop3LimitError after maxOctets, the server cut off soon after', async () => {
    let sent = 0;
    fake = await startFake({
      handle: miniPop3({
        messages: [MSG],
        intercept: async (verb, _args, io) => {
          if (verb !== 'UIDL') return 'pass';
          await io.send('+OK\r\n');
          sent = await flood(io, Buffer.from('1 abcdefghijklmnopqrstuvwxyz\r\n'.repeat(2000)));
          return false;
        },
      }),
    });
    const c = await connect();
    const e = await c.uidl({ maxOctets: 1024 * 1024 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3LimitError);
    expect(String(e)).toMatch(/UIDL ran past 1048576 octets/);
    await sleep(50);
    expect(sent).toBeLessThan(1024 * 1024 + SLACK);
  });

  it('maxLines bounds LIST; the default bounds any line collection', async () => {
    fake = await startFake({
      handle: miniPop3({
        messages: [MSG],
        intercept: async (verb, _args, io) => {
          if (verb !== 'LIST') return 'pass';
          await io.send('+OK\r\n');
          await flood(io, Buffer.from('1 100\r\n'.repeat(5000)));
          return false;
        },
      }),
    });
    const c = await connect();
    await expect(c.list({ maxLines: 10_000 })).rejects.toThrow(/LIST ran past 10000 lines/);
  });

  it('a CAPA reply that never ends is cut off', async () => {
    fake = await startFake({
      handle: async (line, io) => {
        if (line !== 'CAPA') return void io.send('+OK\r\n');
        await io.send('+OK\r\n');
        await flood(io, Buffer.from('X-JUNK aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n'.repeat(1000)));
        return false;
      },
    });
    const c = await Pop3Client.connect({ host: fake.host, port: fake.port, tls: 'none', timeoutMs: 5000 });
    await expect(c.capa()).rejects.toBeInstanceOf(Pop3LimitError);
  });

  it('RETR with maxOctets: a message running past it errors its stream with Pop3LimitError', async () => {
    fake = await startFake({
      handle: miniPop3({
        messages: [MSG],
        intercept: async (verb, _args, io) => {
          if (verb !== 'RETR') return 'pass';
          await io.send('+OK 29 octets\r\n');
          await flood(io, Buffer.alloc(64 * 1024, 'x'));
          return false;
        },
      }),
    });
    const c = await connect();
    const stream = await c.retr(1, { maxOctets: 100_000 });
    let octets = 0;
    const e = await (async () => {
      for await (const ch of stream) octets += (ch as Buffer).length;
    })().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3LimitError);
    expect(octets).toBeLessThanOrEqual(100_000);
  });

  it('retrBuffer is bounded by default-or-given maxOctets', async () => {
    fake = await startFake({
      handle: miniPop3({
        messages: [MSG],
        intercept: async (verb, _args, io) => {
          if (verb !== 'RETR') return 'pass';
          await io.send('+OK\r\n');
          await flood(io, Buffer.alloc(64 * 1024, 'y'));
          return false;
        },
      }),
    });
    const c = await connect();
    await expect(c.retrBuffer(1, { maxOctets: 500_000 })).rejects.toBeInstanceOf(Pop3LimitError);
  });
});

describe('time', () => {
  it('deadlineMs ends a reply that trickles in under the silence timeout', async () => {
    fake = await startFake({
      handle: miniPop3({
        messages: [MSG],
        intercept: async (verb, _args, io) => {
          if (verb !== 'RETR') return 'pass';
          await io.send('+OK\r\n');
          while (!io.socket.destroyed) {
            await io.send('x');
            await sleep(50);
          }
          return false;
        },
      }),
    });
    const c = await connect({ timeoutMs: 2000 });
    const started = Date.now();
    const e = await c.retrBuffer(1, { deadlineMs: 400 }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3TimeoutError);
    expect(String(e)).toMatch(/RETR took longer than 400 ms in all/);
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it('a server that answers AUTH with challenges forever is cut off', async () => {
    fake = await startFake({
      handle: async (line, io) => {
        if (line === 'CAPA') return void io.send('+OK\r\nSASL PLAIN\r\n.\r\n');
        if (line.startsWith('AUTH') || line === '*' || /^[A-Za-z0-9+/=]*$/.test(line)) return void io.send('+ \r\n');
        return void io.send('-ERR no\r\n');
      },
    });
    const c = await Pop3Client.connect({ host: fake.host, port: fake.port, tls: 'none', timeoutMs: 5000 });
    await expect(c.login('alice', 'pw', { mechanism: 'PLAIN' })).rejects.toBeInstanceOf(Pop3LimitError);
    expect(fake.received.length).toBeLessThan(40);
  });
});

describe('what the server says stays data', () => {
  it('a UIDL with a CR inside is kept whole (and is not valid), so two of them never collide', async () => {
    fake = await startFake({ handle: miniPop3({ messages: [MSG, MSG, MSG], uids: ['bad\rUIDL2', 'bad\rUIDL3', 'fine-3'] }) });
    const c = await connect();
    const list = await c.uidl();
    expect(list.map((u) => u.uid)).toEqual(['bad\rUIDL2', 'bad\rUIDL3', 'fine-3']);
    expect(list.map((u) => isValidUid(u.uid))).toEqual([false, false, true]);
    expect((await c.uidl(1)).uid).toBe('bad\rUIDL2');
  });

  it('isValidUid follows RFC 1939: 1 to 70 characters in 0x21..0x7E', () => {
    expect(isValidUid('a'.repeat(70))).toBe(true);
    expect(isValidUid('a'.repeat(71))).toBe(false);
    expect(isValidUid('')).toBe(false);
    expect(isValidUid('bäd')).toBe(false);
    expect(isValidUid('two words')).toBe(false);
    expect(isValidUid('~!x')).toBe(true);
  });

  it('control characters in an -ERR text do not reach the error message', async () => {
    fake = await startFake({
      handle: async (line, io) => {
        if (line.startsWith('USER')) return void io.send('-ERR [SYS/TEMP] \x1b[2J\x1b]0;pwned\x07 try later\r\n');
        return void io.send(line === 'CAPA' ? '-ERR no CAPA\r\n' : '+OK\r\n');
      },
    });
    const c = await Pop3Client.connect({ host: fake.host, port: fake.port, tls: 'none', timeoutMs: 5000 });
    const e = (await c.login('alice', 'pw', { mechanism: 'USER' }).catch((x: unknown) => x)) as Pop3ServerError;
    expect(e).toBeInstanceOf(Pop3ServerError);
    expect(e.code).toBe('SYS/TEMP');
    expect(e.message).not.toMatch(/[\x00-\x1f\x7f]/);
    expect(e.message).toMatch(/try later/);
  });
});
