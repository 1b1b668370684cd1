/**
 * Delivery to an LMTP server (RFC 2033) such as Dovecot's lmtp, Cyrus or
 * Poplar's own: over TCP or a Unix socket,
 *
 *   <- 220 greeting          -> LHLO <name>            <- 250 capabilities
 *   -> MAIL FROM:<from>      <- 250   (BODY=8BITMIME when the server offers it)
 *   -> RCPT TO:<recipient>   <- 250
 *   -> DATA                  <- 354
 *   -> message, dot-stuffed, line ends CRLF, then ".\r\n"
 *   <- one reply per accepted recipient (here: one)
 *
 * 2xx after the final dot is the server's promise that the message is stored
 * durably: `deliver` resolves then and not before. 4xx rejects with a
 * temporary SinkError, 5xx with a permanent one; the connection stays open
 * for the next message, which starts with RSET. Any failure in the middle of
 * DATA (source error, abort, timeout, broken connection) destroys the
 * connection without sending the final dot, so the server discards the
 * partial message; the next delivery connects afresh. A kept connection the
 * server has closed meanwhile (idle timeout) is noticed at RSET, before
 * anything of the next message is sent, and replaced.
 * Deliveries through one sink run one at a time, in call order.
 *
 * There is no crash probe (`findDelivered`): LMTP cannot ask a server whether
 * it already has a message. The fetcher therefore records each delivery here
 * as soon as the server has answered 250, and after a crash delivers again
 * only the one message whose record may not have been written.
 */
import net from 'node:net';
import os from 'node:os';
import type { Readable } from 'node:stream';
import { DotStuffer } from '../../protocol/dot-stuff.js';
import { LineReader, type LineEvent } from '../../protocol/line-reader.js';
import type { DeliveryInfo, Sink } from './types.js';
import { abortReason, chunksOf, destroyOnAbort, onAbort, Mutex, SinkError, toError } from './util.js';

export type LmtpAddress = { readonly host: string; readonly port: number } | { readonly socketPath: string };

export type LmtpSinkOptions = LmtpAddress & {
  /** Name sent with LHLO (default: this host's name). */
  readonly lhlo?: string;
  /** The local user the message is for (RCPT TO). */
  readonly recipient: string;
  /** Envelope sender (MAIL FROM); default the null path `<>`. */
  readonly from?: string;
  /** The longest the server may stay silent, or not take data, before the connection is given up (default 300 000 ms). */
  readonly timeoutMs?: number;
};

interface Reply {
  readonly code: number;
  /** The text of each line, without the code and separator. */
  readonly lines: readonly string[];
}

/** RFC 5321 allows 512 octets per reply line; be lenient. */
const MAX_LINE = 8192;
/** Replies the server sent without being asked, at most, before it is taken for broken. */
const MAX_QUEUED = 64;

function checkAddress(what: string, addr: string): void {
  if (/[\s<>]/.test(addr) || /[\x00-\x1f\x7f]/.test(addr)) throw new TypeError(`LmtpSink: invalid ${what} address ${JSON.stringify(addr)}`);
}

function replyText(r: Reply): string {
  return r.lines.map((l) => `${r.code} ${l}`.trimEnd()).join(' / ');
}

function replyError(what: string, r: Reply): SinkError {
  return new SinkError(`LMTP ${what}: ${replyText(r)}`, {
    temporary: r.code < 500,
    replyCode: r.code,
    reply: r.lines.join('\n'),
  });
}

/** One connection to the server; replies are read in order. */
class LmtpConnection {
  readonly socket: net.Socket;
  readonly extensions = new Set<string>();
  transactions = 0;
  readonly #reader = new LineReader(MAX_LINE);
  readonly #events: LineEvent[] = [];
  #lines: string[] = [];
  #code = 0;
  readonly #replies: Reply[] = [];
  #waiter: { resolve: (r: Reply) => void; reject: (e: unknown) => void } | null = null;
  #error: unknown;

  constructor(socket: net.Socket, timeoutMs: number) {
    this.socket = socket;
    socket.setTimeout(timeoutMs);
    socket.on('timeout', () => this.fail(new SinkError(`LMTP server silent for ${timeoutMs} ms`, { temporary: true })));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (e) => this.fail(new SinkError(`LMTP connection failed: ${e.message}`, { temporary: true, cause: e })));
    socket.on('close', () => this.fail(new SinkError('LMTP server closed the connection', { temporary: true })));
  }

  get alive(): boolean {
    return this.#error === undefined && !this.socket.destroyed;
  }

  /** End the connection with `e`: whoever waits for a reply gets it. */
  fail(e: unknown): void {
    if (this.#error === undefined) this.#error = e;
    const w = this.#waiter;
    this.#waiter = null;
    w?.reject(this.#error);
    if (!this.socket.destroyed) this.socket.destroy();
  }

  #onData(chunk: Buffer): void {
    const ev = this.#events;
    ev.length = 0;
    this.#reader.push(chunk, ev);
    for (const e of ev) {
      if (e.kind === 'overlong') return this.fail(new SinkError('LMTP reply line too long', { temporary: true }));
      const line = e.line.toString('latin1');
      const m = /^(\d{3})([ -]|$)(.*)$/.exec(line);
      if (m === null) return this.fail(new SinkError(`malformed LMTP reply ${JSON.stringify(line.slice(0, 100))}`, { temporary: true }));
      const code = Number(m[1]);
      if (this.#lines.length > 0 && code !== this.#code) {
        return this.fail(new SinkError('LMTP multi-line reply with mixed codes', { temporary: true }));
      }
      this.#code = code;
      this.#lines.push(m[3]!);
      if (m[2] === '-') continue;
      const reply: Reply = { code, lines: this.#lines };
      this.#lines = [];
      const w = this.#waiter;
      if (w !== null) {
        this.#waiter = null;
        w.resolve(reply);
      } else if (this.#replies.push(reply) > MAX_QUEUED) {
        return this.fail(new SinkError('LMTP server sends replies nobody asked for', { temporary: true }));
      }
    }
  }

  /** The next complete reply. */
  next(): Promise<Reply> {
    const r = this.#replies.shift();
    if (r !== undefined) return Promise.resolve(r);
    if (this.#error !== undefined) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** Write with backpressure: resolves once the socket can take more. */
  async write(buf: Buffer): Promise<void> {
    if (this.#error !== undefined) throw this.#error;
    if (this.socket.write(buf)) return;
    await new Promise<void>((resolve, reject) => {
      const done = (): void => {
        this.socket.off('drain', done);
        this.socket.off('close', done);
        if (this.#error !== undefined) reject(this.#error);
        else resolve();
      };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  async command(line: string): Promise<Reply> {
    await this.write(Buffer.from(`${line}\r\n`, 'latin1'));
    return this.next();
  }
}

export class LmtpSink implements Sink {
  readonly #address: LmtpAddress;
  readonly #lhlo: string;
  readonly #recipient: string;
  readonly #from: string;
  readonly #timeoutMs: number;
  readonly #mutex = new Mutex();
  #conn: LmtpConnection | undefined;
  #closed = false;
  /** Connections opened so far (tests, metrics). */
  connections = 0;

  constructor(opts: LmtpSinkOptions) {
    this.#address = 'socketPath' in opts ? { socketPath: opts.socketPath } : { host: opts.host, port: opts.port };
    this.#lhlo = opts.lhlo ?? os.hostname();
    if (!/^[\x21-\x7e]+$/.test(this.#lhlo)) throw new TypeError(`LmtpSink: invalid LHLO name ${JSON.stringify(this.#lhlo)}`);
    this.#recipient = opts.recipient;
    this.#from = opts.from ?? '';
    checkAddress('recipient', this.#recipient);
    if (this.#recipient === '') throw new TypeError('LmtpSink: empty recipient');
    checkAddress('sender', this.#from);
    this.#timeoutMs = opts.timeoutMs ?? 300_000;
  }

  deliver(message: Readable, _info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
    return this.#mutex.run(async () => {
      if (this.#closed) throw new SinkError('the LMTP sink is closed', { temporary: true });
      signal?.throwIfAborted();
      const conn = await this.#ready(signal);
      // From here on an abort destroys the connection: the server then drops what it got.
      const removeAbort = onAbort(signal, () => conn.fail(abortReason(signal!)));
      try {
        await this.#transaction(conn, message, signal);
      } catch (e) {
        if (!conn.alive && this.#conn === conn) this.#conn = undefined;
        throw e;
      } finally {
        removeAbort();
      }
    });
  }

  /** Say goodbye (QUIT) and close the connection. */
  close(): Promise<void> {
    this.#closed = true;
    return this.#mutex.run(async () => {
      const conn = this.#conn;
      this.#conn = undefined;
      if (conn === undefined || !conn.alive) return;
      const bye = conn.command('QUIT').catch(() => undefined);
      const t = setTimeout(() => conn.fail(new Error('QUIT timed out')), 5000);
      await bye;
      clearTimeout(t);
      conn.socket.end();
      conn.fail(new SinkError('LMTP sink closed', { temporary: true }));
    });
  }

  /** A connection ready for MAIL FROM: the kept one after RSET, or a new one. */
  async #ready(signal: AbortSignal | undefined): Promise<LmtpConnection> {
    const kept = this.#conn;
    if (kept !== undefined && kept.alive) {
      try {
        const r = await kept.command('RSET');
        if (r.code === 250) return kept;
      } catch {
        // closed by the server meanwhile: nothing of this message was sent, connect again
      }
      kept.fail(new SinkError('LMTP connection replaced', { temporary: true }));
    }
    this.#conn = undefined;
    signal?.throwIfAborted();
    const conn = await this.#connect(signal);
    this.#conn = conn;
    return conn;
  }

  async #connect(signal: AbortSignal | undefined): Promise<LmtpConnection> {
    const where = 'socketPath' in this.#address ? this.#address.socketPath : `${this.#address.host}:${this.#address.port}`;
    const socket = 'socketPath' in this.#address ? net.connect({ path: this.#address.socketPath }) : net.connect({ host: this.#address.host, port: this.#address.port });
    this.connections++;
    const conn = new LmtpConnection(socket, this.#timeoutMs);
    const removeAbort = onAbort(signal, () => conn.fail(abortReason(signal!)));
    try {
      const greeting = await conn.next();
      if (greeting.code !== 220) throw new SinkError(`LMTP server ${where} refused the connection: ${replyText(greeting)}`, { temporary: true, replyCode: greeting.code });
      const hello = await conn.command(`LHLO ${this.#lhlo}`);
      if (hello.code !== 250) throw new SinkError(`LMTP LHLO refused by ${where}: ${replyText(hello)}`, { temporary: true, replyCode: hello.code });
      for (const l of hello.lines.slice(1)) {
        const kw = l.split(' ')[0];
        if (kw !== undefined && kw !== '') conn.extensions.add(kw.toUpperCase());
      }
      return conn;
    } catch (e) {
      conn.fail(e);
      if (e instanceof SinkError || signal?.aborted === true) throw e;
      throw new SinkError(`cannot connect to the LMTP server ${where}: ${toError(e).message}`, { temporary: true, cause: e });
    } finally {
      removeAbort();
    }
  }

  async #transaction(conn: LmtpConnection, message: Readable, signal: AbortSignal | undefined): Promise<void> {
    conn.transactions++;
    const body = conn.extensions.has('8BITMIME') ? ' BODY=8BITMIME' : '';
    const mail = await conn.command(`MAIL FROM:<${this.#from}>${body}`);
    if (mail.code !== 250) throw replyError('MAIL FROM', mail);
    const rcpt = await conn.command(`RCPT TO:<${this.#recipient}>`);
    if (rcpt.code !== 250 && rcpt.code !== 251) throw replyError(`RCPT TO:<${this.#recipient}>`, rcpt);
    const data = await conn.command('DATA');
    if (data.code !== 354) throw replyError('DATA', data);

    const stuffer = new DotStuffer();
    const stopWatching = destroyOnAbort(message, signal);
    try {
      for await (const chunk of chunksOf(message)) {
        signal?.throwIfAborted();
        const out = stuffer.pushJoined(chunk);
        if (out !== null) await conn.write(out);
      }
      signal?.throwIfAborted();
    } catch (e) {
      // Never send the final dot for an incomplete message: drop the connection instead.
      conn.fail(e);
      throw e;
    } finally {
      stopWatching();
    }
    for (const b of stuffer.end()) await conn.write(b);
    const final = await conn.next();
    if (final.code < 200 || final.code >= 300) throw replyError(`delivery to <${this.#recipient}>`, final);
  }
}
