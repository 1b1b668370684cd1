import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { promises as fs } from 'node:fs';
import type net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { LmtpSink, type LmtpSinkOptions } from '../../src/fetch/sinks/lmtp.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import type { DeliveryInfo } from '../../src/fetch/sinks/types.js';

interface Received {
  from: string | false;
  rcpt: string[];
  mailArgs: Record<string, unknown> | false;
  data: Buffer;
}

/** A real LMTP server (nodemailer's smtp-server with lmtp: true) that keeps what it accepts. */
class TestLmtpServer {
  readonly received: Received[] = [];
  readonly sockets = new Set<net.Socket>();
  /** Connection errors the server reported (resets by a client that gave up). */
  readonly errors: Error[] = [];
  connects = 0;
  closes = 0;
  dataStarted = 0;
  /** Per message: the reply after the final dot (string: 250 with that text; Error with responseCode: that code). */
  finalReply: () => string | Error = () => 'OK stored';
  rcptReply: (addr: string) => Error | null = () => null;
  readonly server: SMTPServer;

  constructor(extra: Partial<SMTPServerOptions> = {}) {
    this.server = new SMTPServer({
      lmtp: true,
      authOptional: true,
      disabledCommands: ['AUTH', 'STARTTLS'],
      logger: false,
      onConnect: (_session, cb) => {
        this.connects++;
        cb();
      },
      onClose: () => {
        this.closes++;
      },
      onRcptTo: (addr, _session, cb) => cb(this.rcptReply(addr.address)),
      onData: (stream, session, cb) => {
        this.dataStarted++;
        const parts: Buffer[] = [];
        stream.on('data', (b: Buffer) => parts.push(b));
        stream.on('end', () => {
          const reply = this.finalReply();
          if (reply instanceof Error) return cb(null, [reply]);
          this.received.push({
            from: session.envelope.mailFrom ? session.envelope.mailFrom.address : false,
            mailArgs: session.envelope.mailFrom ? (session.envelope.mailFrom.args as Record<string, unknown>) : false,
            rcpt: session.envelope.rcptTo.map((r) => r.address),
            data: Buffer.concat(parts),
          });
          cb(null, [reply]);
        });
      },
      ...extra,
    });
    // A client that drops the connection in the middle of DATA (the abort test) resets it; smtp-server
    // reports that as an 'error' event, which would be an uncaught exception without a listener.
    this.server.on('error', (e: Error) => this.errors.push(e));
    this.server.server.on('connection', (s: net.Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
  }

  listen(where: number | string): Promise<void> {
    return new Promise((resolve) => {
      if (typeof where === 'string') this.server.listen(where, () => resolve());
      else this.server.listen(where, '127.0.0.1', () => resolve());
    });
  }

  get port(): number {
    return (this.server.server.address() as net.AddressInfo).port;
  }

  dropConnections(): void {
    for (const s of this.sockets) s.destroy();
  }

  close(): Promise<void> {
    this.dropConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function codeError(code: number, text: string): Error {
  return Object.assign(new Error(text), { responseCode: code });
}

const info: DeliveryInfo = { account: 'acct', uidl: 'u', size: 0 };
const sinks: LmtpSink[] = [];
let srv: TestLmtpServer;
let tmp: string;

function sinkFor(extra: Partial<LmtpSinkOptions> = {}): LmtpSink {
  const s = new LmtpSink({ host: '127.0.0.1', port: srv.port, recipient: 'alice@example.org', from: 'sender@example.org', lhlo: 'fetcher.test', ...extra } as LmtpSinkOptions);
  sinks.push(s);
  return s;
}

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

async function eventually(check: () => boolean, ms = 2000): Promise<void> {
  for (let t = 0; t < ms && !check(); t += 10) await new Promise((r) => setTimeout(r, 10));
  expect(check()).toBe(true);
}

beforeEach(async () => {
  srv = new TestLmtpServer();
  await srv.listen(0);
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-lmtp-'));
});

afterEach(async () => {
  for (const s of sinks.splice(0)) await s.close().catch(() => undefined);
  await srv.close();
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('LmtpSink against a real LMTP server', () => {
  const tricky = Buffer.from('Subject: dots\r\n\r\n.\r\n..two\r\n.leading\r\nmiddle . dot\r\n.', 'latin1');

  it('delivers several messages over one connection, dot-stuffed, with the envelope it was given', async () => {
    const sink = sinkFor();
    const lf = Buffer.from('Subject: lf\n\nbare LF lines\n.dot\n', 'latin1');
    await sink.deliver(chunked(tricky, 1), info);
    await sink.deliver(chunked(lf, 3), info);
    await sink.deliver(Readable.from([Buffer.from('Subject: 8bit\r\n\r\ncaf\xe9\r\n', 'latin1')]), info);
    expect(srv.connects).toBe(1);
    expect(sink.connections).toBe(1);
    expect(srv.received).toHaveLength(3);
    // The server un-stuffs; a message without a final line end gets CRLF before the dot.
    expect(srv.received[0]!.data.toString('latin1')).toBe(`${tricky.toString('latin1')}\r\n`);
    expect(srv.received[1]!.data.toString('latin1')).toBe('Subject: lf\r\n\r\nbare LF lines\r\n.dot\r\n');
    expect(srv.received[2]!.data.toString('latin1')).toBe('Subject: 8bit\r\n\r\ncaf\xe9\r\n');
    for (const r of srv.received) {
      expect(r.from).toBe('sender@example.org');
      expect(r.rcpt).toEqual(['alice@example.org']);
      expect(r.mailArgs).toMatchObject({ BODY: '8BITMIME' }); // offered by the server, so declared
    }
    await sink.close();
    await eventually(() => srv.closes === 1);
  });

  it('streams a large message without trouble', async () => {
    const line = Buffer.from(`${'x'.repeat(998)}\r\n`);
    const big = Buffer.concat([Buffer.from('Subject: big\r\n\r\n'), ...Array.from({ length: 8000 }, () => line)]);
    await sinkFor().deliver(chunked(big, 65536), info);
    expect(srv.received[0]!.data.equals(big)).toBe(true);
  });

  it('a 4xx for the recipient is a temporary error, and the connection serves the next message', async () => {
    const sink = sinkFor();
    srv.rcptReply = () => codeError(452, 'Mailbox busy, try later');
    const err = (await sink.deliver(Readable.from([tricky]), info).catch((e: unknown) => e)) as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.temporary).toBe(true);
    expect(err.replyCode).toBe(452);
    expect(err.message).toMatch(/Mailbox busy/);
    srv.rcptReply = () => null;
    await sink.deliver(Readable.from([tricky]), info);
    expect(srv.received).toHaveLength(1);
    expect(srv.connects).toBe(1);
  });

  it("a 5xx after the final dot is a permanent error; 2xx only then means delivered", async () => {
    const sink = sinkFor();
    srv.finalReply = () => codeError(552, 'Quota exceeded');
    const err = (await sink.deliver(Readable.from([tricky]), info).catch((e: unknown) => e)) as SinkError;
    expect(err.temporary).toBe(false);
    expect(err.replyCode).toBe(552);
    srv.finalReply = () => codeError(451, 'Temporary local problem');
    const err2 = (await sink.deliver(Readable.from([tricky]), info).catch((e: unknown) => e)) as SinkError;
    expect(err2.temporary).toBe(true);
    expect(err2.replyCode).toBe(451);
    srv.finalReply = () => 'OK stored';
    await sink.deliver(Readable.from([tricky]), info);
    expect(srv.received).toHaveLength(1);
    expect(srv.connects).toBe(1);
  });

  it('reconnects when the server dropped the kept connection between messages', async () => {
    const sink = sinkFor();
    await sink.deliver(Readable.from([tricky]), info);
    srv.dropConnections();
    await new Promise((r) => setTimeout(r, 50));
    await sink.deliver(Readable.from([tricky]), info);
    expect(srv.received).toHaveLength(2);
    expect(sink.connections).toBe(2);
  });

  it('an abort in the middle of DATA drops the connection without the final dot: nothing is delivered', async () => {
    const sink = sinkFor();
    const source = new PassThrough();
    source.write(Buffer.from('Subject: half\r\n\r\nfirst part\r\n'));
    const ac = new AbortController();
    const p = sink.deliver(source, info, ac.signal);
    await eventually(() => srv.dataStarted === 1);
    ac.abort();
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    await new Promise((r) => setTimeout(r, 200));
    expect(srv.received).toHaveLength(0);
    // The sink goes on with a fresh connection.
    await sink.deliver(Readable.from([tricky]), info);
    expect(srv.received).toHaveLength(1);
    expect(sink.connections).toBe(2);
  });

  it('a source that fails in the middle of DATA delivers nothing and rejects with the source error', async () => {
    const sink = sinkFor();
    let n = 0;
    const source = new Readable({
      read() {
        if (n++ === 0) this.push(Buffer.from('Subject: broken\r\n\r\nsome text\r\n'));
        else setTimeout(() => this.destroy(new Error('POP3 connection lost')), 30);
      },
    });
    await expect(sink.deliver(source, info)).rejects.toThrow(/POP3 connection lost/);
    await new Promise((r) => setTimeout(r, 200));
    expect(srv.dataStarted).toBe(1);
    expect(srv.received).toHaveLength(0);
  });

  it('talks over a Unix socket', async () => {
    const sock = path.join(tmp, 'lmtp.sock');
    const unix = new TestLmtpServer();
    await unix.listen(sock);
    try {
      const sink = new LmtpSink({ socketPath: sock, recipient: 'bob@example.org' });
      sinks.push(sink);
      await sink.deliver(Readable.from([tricky]), info);
      expect(unix.received).toHaveLength(1);
      expect(unix.received[0]!.from).toBe(''); // the null sender <>
      expect(unix.received[0]!.rcpt).toEqual(['bob@example.org']);
    } finally {
      for (const s of sinks.splice(0)) await s.close();
      await unix.close();
    }
  });

  it('an unreachable server is a temporary error', async () => {
    const port = srv.port;
    await srv.close();
    srv = new TestLmtpServer(); // for afterEach
    await srv.listen(0);
    const sink = new LmtpSink({ host: '127.0.0.1', port, recipient: 'alice' });
    const err = (await sink.deliver(Readable.from([tricky]), info).catch((e: unknown) => e)) as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.temporary).toBe(true);
    expect(err.message).toMatch(/ECONNREFUSED/);
  });

  it('a server that never answers times out as temporary', async () => {
    const { createServer } = await import('node:net');
    const silent = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      const sink = new LmtpSink({ host: '127.0.0.1', port: (silent.address() as net.AddressInfo).port, recipient: 'alice', timeoutMs: 200 });
      const err = (await sink.deliver(Readable.from([tricky]), info).catch((e: unknown) => e)) as SinkError;
      expect(err).toBeInstanceOf(SinkError);
      expect(err.temporary).toBe(true);
      expect(err.message).toMatch(/silent/);
      await sink.close();
    } finally {
      silent.close();
    }
  });

  it('concurrent deliveries through one sink are serialised on one connection', async () => {
    const sink = sinkFor();
    await Promise.all(Array.from({ length: 10 }, (_, i) => sink.deliver(Readable.from([Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`)]), info)));
    expect(srv.received.map((r) => r.data.toString().split('\r\n')[0])).toEqual(Array.from({ length: 10 }, (_, i) => `Subject: ${i}`));
    expect(srv.connects).toBe(1);
  });

  it('refuses addresses that would break the command line', () => {
    expect(() => new LmtpSink({ host: 'h', port: 24, recipient: 'a>\r\nRCPT TO:<b' })).toThrow(TypeError);
    expect(() => new LmtpSink({ host: 'h', port: 24, recipient: 'alice', from: 'x y' })).toThrow(TypeError);
  });
});
