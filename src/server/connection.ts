import type net from 'node:net';
import type tls from 'node:tls';
import { handshake, peerAuthorized, serverTlsSocket, type ServerNameCallback } from './tls-accept.js';
import { LineReader, type LineEvent } from '../protocol/line-reader.js';

/** Lines queued beyond this pause reading from the socket (input backpressure for pipelining). */
const HIGH_WATER_LINES = 32;
const LOW_WATER_LINES = 4;
/** The abort reason of every closed connection (one object: nothing to build per connection). */
const CLOSED = Object.freeze(new Error('the connection is closed'));

/**
 * The byte-level side of one client connection: a bounded line queue in,
 * corked writes with drain-aware flushing out, the STLS upgrade, timeouts.
 * It knows nothing about POP3 commands.
 */
export class Connection {
  /** Made on first use: most sessions never ask for it, and an abort with a ready reason costs no DOMException. */
  #abort: AbortController | undefined;
  readonly #reader: LineReader;
  readonly #queue: LineEvent[] = [];
  readonly #raw: net.Socket;
  #sock: net.Socket;
  #secure: boolean;
  #waiter: ((ev: LineEvent | null) => void) | null = null;
  #drainWaiter: (() => void) | null = null;
  #paused = false;
  #corked = false;
  #closed = false;
  /** end() was called: nothing more may be written. */
  #ending = false;
  #inputEnded = false;
  #onTimeout: (() => void) | null = null;
  #tlsInfo: { protocol: string; cipher: string } | null = null;
  #peerAuthorized = false;
  /** Bytes handed to the socket so far (the observer's per-command figure). */
  #bytesOut = 0;
  /** Bytes received so far (after TLS), for the admin `who` listing. */
  #bytesIn = 0;
  readonly #onData = (chunk: Buffer): void => this.#ingest(chunk);

  /**
   * `socket` is a plain socket, or a TLS socket whose handshake is done
   * (implicit TLS: `peerAuthorized` tells whether its client certificate verified).
   */
  constructor(socket: net.Socket, secure: boolean, maxLineLength: number, peerAuthorized = false) {
    this.#raw = socket;
    this.#sock = socket;
    this.#secure = secure;
    this.#peerAuthorized = peerAuthorized;
    this.#reader = new LineReader(maxLineLength);
    if (secure) this.#noteTls(socket as tls.TLSSocket);
    this.#attach(socket);
    socket.setNoDelay(true);
    socket.on('timeout', () => this.#onTimeout?.());
  }

  get secure(): boolean {
    return this.#secure;
  }
  get tls(): { protocol: string; cipher: string } | null {
    return this.#tlsInfo;
  }
  /** The TLS socket once TLS is active (channel binding, client certificate). */
  get tlsSocket(): tls.TLSSocket | null {
    return this.#secure ? (this.#sock as tls.TLSSocket) : null;
  }
  /** The identity of a verified client certificate (SASL EXTERNAL), if the listener asked for one. */
  get certificateIdentity(): string | undefined {
    const s = this.tlsSocket;
    if (!s || !(s.authorized || this.#peerAuthorized)) return undefined;
    const cert = s.getPeerCertificate();
    if (!cert || Object.keys(cert).length === 0) return undefined;
    const cn = cert.subject?.CN;
    return typeof cn === 'string' && cn !== '' ? cn : undefined;
  }
  get closed(): boolean {
    return this.#closed;
  }
  get bytesOut(): number {
    return this.#bytesOut;
  }
  get bytesIn(): number {
    return this.#bytesIn;
  }
  /** Aborted when the connection is gone: cancels pending storage and auth work. */
  get signal(): AbortSignal {
    if (this.#abort === undefined) {
      this.#abort = new AbortController();
      if (this.#closed) this.#abort.abort(CLOSED);
    }
    return this.#abort.signal;
  }

  #attach(sock: net.Socket): void {
    sock.on('data', this.#onData);
    sock.on('error', () => this.destroy());
    // The client may half-close after its last command: answer what is queued, then close.
    sock.on('end', () => {
      this.#inputEnded = true;
      if (this.#queue.length === 0) this.#wake();
    });
    sock.on('close', () => this.#markClosed());
  }

  #ingest(chunk: Buffer): void {
    this.#bytesIn += chunk.length;
    this.#reader.push(chunk, this.#queue);
    this.#deliver();
    if (!this.#paused && this.#queue.length >= HIGH_WATER_LINES) {
      this.#paused = true;
      this.#sock.pause();
    }
  }

  #deliver(): void {
    if (this.#waiter !== null && this.#queue.length > 0) {
      const w = this.#waiter;
      this.#waiter = null;
      w(this.#queue.shift()!);
    }
  }

  /** The next input line, or null once the connection is closed. */
  nextLine(): Promise<LineEvent | null> {
    if (this.#paused && this.#queue.length <= LOW_WATER_LINES) {
      this.#paused = false;
      this.#sock.resume();
    }
    const ev = this.#queue.shift();
    if (ev !== undefined) return Promise.resolve(ev);
    if (this.#closed || this.#inputEnded) return Promise.resolve(null);
    // Nothing waiting: send what the batch produced before blocking on input.
    this.#uncork();
    return new Promise((resolve) => {
      this.#waiter = resolve;
    });
  }

  /** The session waits for the client's next line (it is not in the middle of a reply). */
  get awaitingInput(): boolean {
    return this.#waiter !== null;
  }

  /** More input is already queued: a pipelined batch is being answered. */
  get hasPendingInput(): boolean {
    return this.#queue.length > 0;
  }

  set maxLineLength(n: number) {
    this.#reader.maxLength = n;
  }

  /** Queue output; `written` runs once the socket is done with `data` (sent, or failed), so its buffer may be reused. */
  write(data: string | Buffer, written?: () => void): void {
    if (this.#closed || this.#ending) {
      written?.();
      return;
    }
    this.#bytesOut += typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    if (!this.#corked) {
      this.#corked = true;
      this.#sock.cork();
    }
    if (written === undefined) this.#sock.write(data);
    else this.#sock.write(data, written);
  }

  get needsDrain(): boolean {
    return this.#sock.writableNeedDrain;
  }

  #uncork(): void {
    if (this.#corked) {
      this.#corked = false;
      this.#sock.uncork();
    }
  }

  /** Wait until the socket accepts more output (output backpressure); false if the connection closed. */
  async drain(): Promise<boolean> {
    this.#uncork();
    if (this.#closed) return false;
    const sock = this.#sock;
    if (!sock.writableNeedDrain) return true;
    // Called for nearly every chunk of a big RETR: plain listeners, nothing to build or throw per call.
    await new Promise<void>((resolve) => {
      const done = (): void => {
        sock.off('drain', done);
        sock.off('close', done);
        this.#drainWaiter = null;
        resolve();
      };
      sock.on('drain', done);
      sock.on('close', done);
      // Either socket closing ends the wait (after STLS the raw one may go first).
      this.#drainWaiter = done;
    });
    return !this.#closed;
  }

  setTimeout(ms: number, onTimeout: () => void): void {
    this.#onTimeout = onTimeout;
    this.#raw.setTimeout(ms);
  }

  /**
   * RFC 2595 §4: after `+OK` to STLS the handshake starts at once, and any
   * plaintext already received after the STLS line is thrown away.
   */
  async startTls(context: tls.SecureContext, handshakeTimeoutMs: number, requestCert = false, sni?: ServerNameCallback): Promise<boolean> {
    // The client may have gone while STLS waited its turn: no handshake to wait for then.
    if (this.#closed) return false;
    this.#queue.length = 0;
    this.#reader.reset();
    this.#uncork();
    const raw = this.#sock;
    raw.removeListener('data', this.#onData);
    const secure = serverTlsSocket(raw, context, requestCert, sni);
    this.#sock = secure;
    this.#paused = false;
    this.#attach(secure);
    // Done when the handshake completes, fails, times out, or either socket closes (the abort).
    const failed = await handshake(secure, handshakeTimeoutMs, this.signal);
    if (failed !== null) this.destroy();
    if (this.#closed) return false;
    this.#secure = true;
    this.#peerAuthorized = peerAuthorized(secure, requestCert);
    this.#noteTls(secure);
    return true;
  }

  #noteTls(s: tls.TLSSocket): void {
    try {
      s.disableRenegotiation();
    } catch {
      // not available on every socket type; the context also forbids it
    }
    this.#tlsInfo = { protocol: s.getProtocol() ?? '', cipher: s.getCipher()?.name ?? '' };
  }

  /** Send the last words, then close gracefully once they are out. */
  end(last?: string): void {
    if (this.#closed || this.#ending) return;
    if (last !== undefined) this.write(last);
    this.#ending = true;
    this.#uncork();
    this.#sock.end();
    // A client that never reads must not keep the socket: bound the wait.
    setTimeout(() => this.destroy(), 5000).unref();
  }

  destroy(): void {
    if (!this.#sock.destroyed) this.#sock.destroy();
    if (!this.#raw.destroyed) this.#raw.destroy();
    this.#markClosed();
  }

  #markClosed(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#abort?.abort(CLOSED);
    this.#wake();
    this.#drainWaiter?.();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.(null);
  }
}
