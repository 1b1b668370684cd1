/**
 * The wire under the POP3 client: writes commands, matches replies to them
 * strictly in order, and moves bytes from the socket to whoever waits for
 * them.
 *
 * Requests wait in `#unsent`, go out (all at once when the server does
 * PIPELINING, within a window; otherwise one at a time) and wait in
 * `#inFlight` for their reply. Only the head of `#inFlight` ever sees bytes:
 * its status line, then, for multi-line replies, the body through a
 * DotUnstuffer whose `rest` is the start of the next reply (RFC 2449 §6.6).
 * A streamed body that its consumer is not reading pauses the socket, so the
 * next reply is not read before the previous stream has been consumed.
 *
 * The watchdog only runs while the client waits for the server: it restarts
 * on every chunk and stops while a slow consumer holds the socket paused.
 */
import type net from 'node:net';
import { Readable } from 'node:stream';
import type tls from 'node:tls';
import { DotUnstuffer } from '../protocol/dot-unstuff.js';
import { Pop3AbortError, Pop3ConnectionLostError, Pop3LimitError, Pop3ProtocolError, Pop3TimeoutError } from './errors.js';
import { isContinuation, parseStatusLine, type StatusLine } from './reply.js';

export interface CallOptions {
  /** Aborting destroys the connection; the call rejects with Pop3AbortError. */
  readonly signal?: AbortSignal | undefined;
  /** The longest the server may stay silent while this call waits for it (default: the connection's). */
  readonly timeoutMs?: number | undefined;
  /**
   * The longest the whole reply may take, from the moment the connection
   * starts waiting for it to its last octet, however steadily the server
   * trickles it (default: no limit beyond `timeoutMs`). Pop3TimeoutError.
   */
  readonly deadlineMs?: number | undefined;
  /**
   * Multi-line replies: the most content octets accepted (default 64 MiB
   * for replies collected in memory, no limit for streams). Pop3LimitError.
   */
  readonly maxOctets?: number | undefined;
  /** Multi-line replies collected into lines: the most lines accepted (default 1,000,000). Pop3LimitError. */
  readonly maxLines?: number | undefined;
}

/** Requests written before their replies arrive, at most (RFC 2449 §6.6 leaves the bound to the client). */
export const PIPELINE_WINDOW = 32;
/** A status or continuation line longer than this is not POP3 (RFC 2449 §4 allows 512 octets; SASL lines more). */
const MAX_LINE = 64 * 1024;
/** Buffered content of a streamed message before the socket is paused. */
const STREAM_HIGH_WATER = 64 * 1024;
/** Default bounds of a multi-line reply collected in memory (lines(), buffer()). */
export const DEFAULT_MAX_OCTETS = 64 * 1024 * 1024;
export const DEFAULT_MAX_LINES = 1_000_000;
/** SASL challenges in one AUTH exchange, at most (SCRAM needs two; a server that keeps asking is stalling). */
const MAX_CHALLENGES = 16;
const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

/** What a request does with its reply. */
interface ReplyHandler {
  /** A line while no body is being read: `body` when a multi-line body follows, `more` to wait for another line. */
  line(line: string): 'done' | 'body' | 'more';
  /** Unstuffed body content. Returns false when the consumer wants the socket paused. */
  body(chunks: Buffer[]): boolean;
  /** The terminator was seen. */
  end(): void;
  /** The connection failed before the reply was complete. */
  fail(e: Error): void;
}

interface Request {
  /** The command verb, for error messages (arguments may be secrets). */
  readonly label: string;
  /** Null for the greeting, which is awaited without sending anything. */
  readonly bytes: Buffer | null;
  /** Sent only when nothing else is in flight, and nothing follows until it completes (AUTH, STLS). */
  readonly exclusive: boolean;
  readonly timeoutMs: number;
  readonly deadlineMs: number | undefined;
  /** Runs from the moment this request heads the queue until its reply is complete. */
  deadline: NodeJS.Timeout | undefined;
  readonly handler: ReplyHandler;
  unstuffer: DotUnstuffer | undefined;
  detach: () => void;
}

/** A multi-line reply's content, decoded into lines (line ends removed). */
export interface LinesReply {
  readonly status: StatusLine;
  readonly lines: string[];
}

export interface BufferReply {
  readonly status: StatusLine;
  readonly body: Buffer;
}

export interface StreamReply {
  readonly status: StatusLine;
  /** Present when the status is `+OK`. */
  readonly stream?: Readable;
}

export interface ConnectionOptions {
  readonly timeoutMs: number;
  /** Default `deadlineMs` of every call (none when undefined). */
  readonly deadlineMs?: number | undefined;
  /** Called once, when the connection ends for any reason (undefined after a clean QUIT). */
  readonly onClose?: (reason: Error | undefined) => void;
}

export class Pop3Connection {
  #socket: net.Socket;
  readonly #defaultTimeout: number;
  readonly #defaultDeadline: number | undefined;
  readonly #onClose: ((reason: Error | undefined) => void) | undefined;
  #buf: Buffer = EMPTY;
  readonly #unsent: Request[] = [];
  readonly #inFlight: Request[] = [];
  #pipelining = false;
  /** Between `+OK` to STLS and the new socket: nothing is read or written. */
  #upgrading = false;
  /** The request whose slow stream consumer paused the socket. */
  #pausedBy: Request | undefined;
  #draining = false;
  #timer: NodeJS.Timeout | undefined;
  /** The watchdog's period, and the command it waits for (for its message). */
  #timerMs = 0;
  #timerLabel = '';
  #closed = false;
  #failure: Error | undefined;
  #maxInFlight = 0;
  /** The socket is corked until the end of this tick (see #pump). */
  #corked = false;
  readonly #signals = new Map<AbortSignal, { users: number; listener: () => void }>();

  constructor(socket: net.Socket, options: ConnectionOptions) {
    this.#socket = socket;
    this.#defaultTimeout = options.timeoutMs;
    this.#defaultDeadline = options.deadlineMs;
    this.#onClose = options.onClose;
    this.#attach(socket);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Why the connection ended, when it did not end with a clean QUIT. */
  get failure(): Error | undefined {
    return this.#failure;
  }

  get socket(): net.Socket {
    return this.#socket;
  }

  get tlsSocket(): tls.TLSSocket | undefined {
    return 'encrypted' in this.#socket ? (this.#socket as tls.TLSSocket) : undefined;
  }

  get pipelining(): boolean {
    return this.#pipelining;
  }

  /** Write requests ahead of their replies (only when the server announced PIPELINING). */
  set pipelining(on: boolean) {
    this.#pipelining = on;
    this.#pump();
  }

  /** Requests written and not yet answered in full. */
  get inFlight(): number {
    return this.#inFlight.length;
  }

  /** The most requests ever in flight at once (tests and diagnostics). */
  get maxInFlight(): number {
    return this.#maxInFlight;
  }

  // -------------------------------------------------------------------------
  // requests

  /** The greeting: a reply nobody asked for, read before anything is sent. */
  greeting(opts: CallOptions = {}): Promise<StatusLine> {
    return this.#enqueue('greeting', null, false, opts, (resolve) => statusHandler(resolve));
  }

  /** A single-line reply (`-ERR` resolves too; the caller decides what it means). */
  single(command: string, opts: CallOptions = {}, label = verbOf(command)): Promise<StatusLine> {
    return this.#enqueue(label, encode(command), false, opts, (resolve) => statusHandler(resolve));
  }

  /** A multi-line reply collected into lines (CAPA, LIST, UIDL). */
  lines(command: string, opts: CallOptions = {}): Promise<LinesReply> {
    const label = verbOf(command);
    return this.#enqueue(label, encode(command), false, opts, (resolve) => {
      const collect = lineCollector(label, opts.maxOctets ?? DEFAULT_MAX_OCTETS, opts.maxLines ?? DEFAULT_MAX_LINES);
      let status: StatusLine | undefined;
      return {
        line: (l) => {
          status = parseStatusLine(l);
          if (status.ok) return 'body';
          resolve({ status, lines: [] });
          return 'done';
        },
        body: collect.add,
        end: () => resolve({ status: status!, lines: collect.take() }),
        fail: () => undefined,
      };
    });
  }

  /** A multi-line reply collected into one Buffer (RETR/TOP when the caller wants it whole). */
  buffer(command: string, opts: CallOptions = {}): Promise<BufferReply> {
    const label = verbOf(command);
    return this.#enqueue(label, encode(command), false, opts, (resolve) => {
      const collect = collector(label, opts.maxOctets ?? DEFAULT_MAX_OCTETS);
      let status: StatusLine | undefined;
      return {
        line: (l) => {
          status = parseStatusLine(l);
          if (status.ok) return 'body';
          resolve({ status, body: EMPTY });
          return 'done';
        },
        body: collect.add,
        end: () => resolve({ status: status!, body: collect.take() }),
        fail: () => undefined,
      };
    });
  }

  /**
   * A multi-line reply as a stream, resolved as soon as its status line is
   * in. The stream must be read (or destroyed) before any later reply can
   * arrive; destroying it discards the rest of the body from the wire.
   */
  stream(command: string, opts: CallOptions = {}): Promise<StreamReply> {
    let req: Request | undefined;
    const label = verbOf(command);
    const max = opts.maxOctets ?? Infinity;
    const p = this.#enqueue<StreamReply>(label, encode(command), false, opts, (resolve) => {
      let stream: MessageStream | undefined;
      let ended = false;
      let octets = 0;
      return {
        line: (l) => {
          const status = parseStatusLine(l);
          if (!status.ok) {
            resolve({ status });
            return 'done';
          }
          stream = new MessageStream(
            () => this.#resume(req),
            () => {
              if (!ended) this.#resume(req);
            },
          );
          resolve({ status, stream });
          return 'body';
        },
        body: (chunks) => {
          for (const c of chunks) octets += c.length;
          if (octets > max) throw new Pop3LimitError(`the reply to ${label} ran past ${max} octets`);
          if (stream === undefined || stream.destroyed) return true; // discarding what nobody reads
          let more = true;
          for (const c of chunks) more = stream.push(c);
          return more;
        },
        end: () => {
          ended = true;
          if (stream !== undefined && !stream.destroyed) stream.push(null);
        },
        fail: (e) => {
          if (stream !== undefined && !ended) stream.destroy(e);
        },
      };
    }, (r) => (req = r));
    return p;
  }

  /**
   * A multi-line reply collected into one Buffer while it stays within
   * `bufferCap` octets (resolved at its end, with `body`); one that grows past
   * `bufferCap` turns into a stream (resolved then, with `stream` holding
   * what was collected and the rest), as from stream(). For fetching small
   * messages without a stream each: the caller bounds how much is held.
   */
  streamOrBuffer(command: string, bufferCap: number, opts: CallOptions = {}): Promise<StreamReply & { readonly body?: Buffer }> {
    let req: Request | undefined;
    const label = verbOf(command);
    const max = opts.maxOctets ?? Infinity;
    return this.#enqueue<StreamReply & { readonly body?: Buffer }>(label, encode(command), false, opts, (resolve) => {
      let status: StatusLine | undefined;
      let parts: Buffer[] | undefined = [];
      let held = 0;
      let stream: MessageStream | undefined;
      let ended = false;
      let octets = 0;
      return {
        line: (l) => {
          status = parseStatusLine(l);
          if (!status.ok) {
            resolve({ status });
            return 'done';
          }
          return 'body';
        },
        body: (chunks) => {
          for (const c of chunks) octets += c.length;
          if (octets > max) throw new Pop3LimitError(`the reply to ${label} ran past ${max} octets`);
          if (parts !== undefined) {
            for (const c of chunks) {
              parts.push(c);
              held += c.length;
            }
            if (held <= bufferCap) return true;
            // Larger than the caller wants in memory: hand over a stream of it after all.
            chunks = parts;
            parts = undefined;
            stream = new MessageStream(
              () => this.#resume(req),
              () => {
                if (!ended) this.#resume(req);
              },
            );
            resolve({ status: status!, stream });
          }
          if (stream === undefined || stream.destroyed) return true; // discarding what nobody reads
          let more = true;
          for (const c of chunks) more = stream.push(c);
          return more;
        },
        end: () => {
          ended = true;
          if (parts !== undefined) resolve({ status: status!, body: parts.length === 1 ? parts[0]! : Buffer.concat(parts, held) });
          else if (stream !== undefined && !stream.destroyed) stream.push(null);
        },
        fail: (e) => {
          if (stream !== undefined && !ended) stream.destroy(e);
        },
      };
    }, (r) => (req = r));
  }

  /**
   * An AUTH exchange (RFC 5034 §4): every `+` continuation goes to
   * `onChallenge` (the text after `+ `), whose answer is sent as a line.
   * Resolves with the final `+OK`/`-ERR`.
   */
  sasl(command: string, onChallenge: (payload: string) => string, opts: CallOptions = {}): Promise<StatusLine> {
    let challenges = 0;
    return this.#enqueue('AUTH', encode(command), true, opts, (resolve) => ({
      line: (l) => {
        if (isContinuation(l)) {
          if (++challenges > MAX_CHALLENGES) throw new Pop3LimitError(`more than ${MAX_CHALLENGES} SASL challenges`);
          const answer = onChallenge(l.slice(2).trim());
          this.#socket.write(encode(answer));
          return 'more';
        }
        resolve(parseStatusLine(l));
        return 'done';
      },
      body: () => true,
      end: () => undefined,
      fail: () => undefined,
    }));
  }

  /**
   * STLS (RFC 2595 §4). On `+OK` whatever the server sent after that line is
   * thrown away and the socket is handed over untouched: the caller runs the
   * handshake on `socket` and calls upgraded(). Nothing is sent meanwhile.
   */
  stls(opts: CallOptions = {}): Promise<StatusLine> {
    return this.#enqueue('STLS', encode('STLS'), true, opts, (resolve) => ({
      line: (l) => {
        const status = parseStatusLine(l);
        if (status.ok) {
          this.#upgrading = true;
          this.#buf = EMPTY; // RFC 2595 §4: bytes after +OK are not the server's TLS, whatever they are
          this.#detach(this.#socket);
          this.#socket.on('error', () => undefined); // the handshake reports failures
        }
        resolve(status);
        return 'done';
      },
      body: () => true,
      end: () => undefined,
      fail: () => undefined,
    }));
  }

  /** The handshake after STLS succeeded: continue on the TLS socket. */
  upgraded(secure: tls.TLSSocket): void {
    this.#socket = secure;
    this.#upgrading = false;
    this.#pipelining = false; // until the new CAPA says so
    if (this.#closed) {
      secure.destroy();
      return;
    }
    this.#attach(secure);
    this.#pump();
  }

  /**
   * QUIT: whatever the answer, the session is over. The connection is closed
   * as soon as the reply line is in, so the server's close is not an error.
   */
  quit(opts: CallOptions = {}): Promise<StatusLine> {
    return this.#enqueue('QUIT', encode('QUIT'), false, opts, (resolve) => ({
      line: (l) => {
        const status = parseStatusLine(l);
        resolve(status);
        this.#finish();
        return 'done';
      },
      body: () => true,
      end: () => undefined,
      fail: () => undefined,
    }));
  }

  /** Close our side without treating the server's close as an error; pending calls fail. */
  #finish(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stopTimer();
    const s = this.#socket;
    this.#detach(s);
    s.on('error', () => undefined);
    s.end(() => s.destroy());
    setTimeout(() => s.destroy(), 2000).unref(); // a server that never closes must not keep the socket
    this.#failAll(new Pop3ProtocolError('connection closed after QUIT'));
    this.#onClose?.(undefined);
  }

  /** Tear the connection down; every pending call rejects with `reason`. */
  destroy(reason: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#failure = reason;
    this.#stopTimer();
    this.#socket.on('error', () => undefined);
    this.#socket.destroy();
    this.#failAll(reason);
    this.#onClose?.(reason);
  }

  // -------------------------------------------------------------------------
  // internals

  #enqueue<T>(
    label: string,
    bytes: Buffer | null,
    exclusive: boolean,
    opts: CallOptions,
    makeHandler: (resolve: (v: T) => void) => ReplyHandler,
    onRequest?: (r: Request) => void,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      if (this.#closed) {
        reject(new Pop3ProtocolError('the connection is closed', { cause: this.#failure }));
        return;
      }
      const signal = opts.signal;
      if (signal?.aborted) {
        reject(new Pop3AbortError(`${label} aborted`, { cause: signal.reason }));
        return;
      }
      const inner = makeHandler(resolve);
      const handler: ReplyHandler = {
        line: (l) => inner.line(l),
        body: (c) => inner.body(c),
        end: () => inner.end(),
        fail: (e) => {
          inner.fail(e); // a streamed body in progress errors its stream
          reject(e); // no effect once resolved
        },
      };
      const unwatch = signal !== undefined ? this.#watch(signal, label) : undefined;
      const req: Request = {
        label,
        bytes,
        exclusive,
        timeoutMs: opts.timeoutMs ?? this.#defaultTimeout,
        deadlineMs: opts.deadlineMs ?? this.#defaultDeadline,
        deadline: undefined,
        handler,
        unstuffer: undefined,
        detach: () => unwatch?.(),
      };
      onRequest?.(req);
      if (bytes === null) {
        // The greeting: already "sent".
        this.#inFlight.push(req);
        this.#armTimer();
        this.#drain();
      } else {
        this.#unsent.push(req);
        this.#pump();
      }
    });
  }

  /**
   * One 'abort' listener per signal however many requests share it (retrEach
   * and Promise.all of many calls would otherwise trip Node's listener-leak warning).
   */
  #watch(signal: AbortSignal, label: string): () => void {
    let w = this.#signals.get(signal);
    if (w === undefined) {
      const listener = (): void => this.destroy(new Pop3AbortError(`${label} aborted`, { cause: signal.reason }));
      w = { users: 0, listener };
      this.#signals.set(signal, w);
      signal.addEventListener('abort', listener, { once: true });
    }
    w.users++;
    const watched = w;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--watched.users === 0) {
        signal.removeEventListener('abort', watched.listener);
        this.#signals.delete(signal);
      }
    };
  }

  #pump(): void {
    // Requests queued in the same tick leave in one write (one segment, one wake-up of the server).
    while (!this.#closed && !this.#upgrading) {
      const next = this.#unsent[0];
      if (next === undefined) break;
      const n = this.#inFlight.length;
      if (n > 0) {
        const last = this.#inFlight[n - 1]!;
        if (!this.#pipelining || next.exclusive || last.exclusive || n >= PIPELINE_WINDOW) break;
      }
      this.#unsent.shift();
      this.#inFlight.push(next);
      this.#maxInFlight = Math.max(this.#maxInFlight, this.#inFlight.length);
      if (next.bytes !== null) {
        if (!this.#corked) {
          this.#corked = true;
          const s = this.#socket;
          s.cork();
          process.nextTick(() => {
            this.#corked = false;
            s.uncork();
          });
        }
        this.#socket.write(next.bytes);
      }
      if (n === 0) this.#armTimer();
    }
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#armTimer();
    this.#drain();
  };

  readonly #onSocketClose = (): void => {
    const head = this.#inFlight[0];
    this.destroy(new Pop3ConnectionLostError(head !== undefined ? `connection closed by the server during the reply to ${head.label}` : 'connection closed by the server'));
  };

  readonly #onSocketError = (e: Error): void => {
    this.destroy(new Pop3ConnectionLostError(`connection failed: ${e.message}`, { cause: e }));
  };

  #attach(s: net.Socket): void {
    s.on('data', this.#onData);
    s.on('close', this.#onSocketClose);
    s.on('error', this.#onSocketError);
  }

  #detach(s: net.Socket): void {
    s.removeListener('data', this.#onData);
    s.removeListener('close', this.#onSocketClose);
    s.removeListener('error', this.#onSocketError);
  }

  #drain(): void {
    if (this.#draining) return; // re-entered from a stream consumer; the running loop picks up the change
    this.#draining = true;
    try {
      this.#drainLoop();
    } catch (e) {
      this.destroy(e instanceof Error ? e : new Pop3ProtocolError(String(e)));
    } finally {
      this.#draining = false;
    }
  }

  #drainLoop(): void {
    while (!this.#closed && this.#pausedBy === undefined && this.#buf.length > 0) {
      const head = this.#inFlight[0];
      if (head === undefined) {
        throw new Pop3ProtocolError(`unexpected data from the server: ${JSON.stringify(this.#buf.subarray(0, 60).toString('latin1'))}`);
      }
      if (head.unstuffer === undefined) {
        const lf = this.#buf.indexOf(LF);
        if (lf < 0) {
          if (this.#buf.length > MAX_LINE) throw new Pop3ProtocolError(`reply line to ${head.label} too long`);
          return;
        }
        const end = lf > 0 && this.#buf[lf - 1] === CR ? lf - 1 : lf;
        const line = this.#buf.toString('utf8', 0, end);
        this.#buf = this.#buf.subarray(lf + 1);
        const next = head.handler.line(line);
        if (next === 'body') head.unstuffer = new DotUnstuffer();
        else if (next === 'done') this.#complete(head);
        continue;
      }
      const r = head.unstuffer.push(this.#buf);
      this.#buf = r.rest ?? EMPTY;
      const more = r.data.length === 0 || head.handler.body(r.data);
      if (r.done) {
        head.handler.end();
        this.#complete(head);
      } else if (!more) {
        this.#pausedBy = head;
        this.#socket.pause();
        this.#stopTimer(); // the consumer is slow, not the server
      }
    }
  }

  /** A stream consumer wants more (or went away): read on if it was the one holding the socket. */
  #resume(req: Request | undefined): void {
    if (req === undefined || this.#pausedBy !== req || this.#closed) return;
    this.#pausedBy = undefined;
    this.#socket.resume();
    this.#armTimer();
    this.#drain();
  }

  #complete(req: Request): void {
    if (this.#inFlight[0] === req) this.#inFlight.shift();
    clearTimeout(req.deadline);
    req.detach();
    this.#pump();
    this.#armTimer();
  }

  #failAll(reason: Error): void {
    const pending = [...this.#inFlight.splice(0), ...this.#unsent.splice(0)];
    for (const r of pending) {
      clearTimeout(r.deadline);
      r.handler.fail(reason);
      r.detach();
    }
  }

  #armTimer(): void {
    const head = this.#inFlight[0];
    if (this.#closed || head === undefined) {
      this.#stopTimer();
      return;
    }
    if (head.deadlineMs !== undefined && head.deadline === undefined) {
      const total = head.deadlineMs;
      // Counts while a slow consumer holds the socket paused too: the bound is on the whole reply.
      head.deadline = setTimeout(() => this.destroy(new Pop3TimeoutError(`the reply to ${head.label} took longer than ${total} ms in all`)), total);
    }
    if (this.#pausedBy !== undefined) {
      this.#stopTimer();
      return;
    }
    this.#timerLabel = head.label;
    const ms = head.timeoutMs;
    // Restarted on every chunk and every reply: the same timer object is refreshed rather than replaced.
    if (this.#timer !== undefined && this.#timerMs === ms) {
      this.#timer.refresh();
      return;
    }
    this.#stopTimer();
    this.#timerMs = ms;
    this.#timer = setTimeout(() => this.destroy(new Pop3TimeoutError(`no reply to ${this.#timerLabel} within ${ms} ms`)), ms);
  }

  #stopTimer(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }
}

/** The readable side of a streamed RETR/TOP; reading asks the connection for more. */
class MessageStream extends Readable {
  readonly #onRead: () => void;
  readonly #onDestroy: () => void;
  constructor(onRead: () => void, onDestroy: () => void) {
    super({ highWaterMark: STREAM_HIGH_WATER });
    // The connection may fail before the consumer has attached its handlers: the error is kept
    // (stream.errored; iteration and pipeline() still reject with it) instead of crashing the process.
    this.on('error', () => undefined);
    this.#onRead = onRead;
    this.#onDestroy = onDestroy;
  }
  override _read(): void {
    this.#onRead();
  }
  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#onDestroy();
    cb(err);
  }
}

function statusHandler(resolve: (s: StatusLine) => void): ReplyHandler {
  return {
    line: (l) => {
      resolve(parseStatusLine(l));
      return 'done';
    },
    body: () => true,
    end: () => undefined,
    fail: () => undefined,
  };
}

function collector(label: string, maxOctets: number): { add: (chunks: Buffer[]) => boolean; take: () => Buffer } {
  const parts: Buffer[] = [];
  let octets = 0;
  return {
    add: (chunks) => {
      for (const c of chunks) octets += c.length;
      if (octets > maxOctets) throw new Pop3LimitError(`the reply to ${label} ran past ${maxOctets} octets`);
      parts.push(...chunks);
      return true;
    },
    take: () => Buffer.concat(parts),
  };
}

/**
 * Lines of a multi-line body as they arrive (CRLF or bare LF; a CR elsewhere
 * stays in its line), within `maxOctets` and `maxLines`.
 */
function lineCollector(label: string, maxOctets: number, maxLines: number): { add: (chunks: Buffer[]) => boolean; take: () => string[] } {
  const lines: string[] = [];
  let partial: Buffer[] = [];
  let octets = 0;
  const push = (b: Buffer): void => {
    if (lines.length >= maxLines) throw new Pop3LimitError(`the reply to ${label} ran past ${maxLines} lines`);
    const end = b.length > 0 && b[b.length - 1] === CR ? b.length - 1 : b.length;
    lines.push(b.toString('utf8', 0, end));
  };
  return {
    add: (chunks) => {
      for (const c of chunks) {
        octets += c.length;
        if (octets > maxOctets) throw new Pop3LimitError(`the reply to ${label} ran past ${maxOctets} octets`);
        let start = 0;
        for (let lf = c.indexOf(LF); lf >= 0; lf = c.indexOf(LF, start)) {
          const piece = c.subarray(start, lf);
          push(partial.length === 0 ? piece : Buffer.concat([...partial, piece]));
          partial = [];
          start = lf + 1;
        }
        if (start < c.length) partial.push(c.subarray(start));
      }
      return true;
    },
    take: () => {
      if (partial.length > 0) push(Buffer.concat(partial));
      partial = [];
      return lines;
    },
  };
}

function verbOf(command: string): string {
  return command.split(' ', 1)[0]!.toUpperCase();
}

/** A command line; CR, LF and NUL inside would smuggle a second command. */
function encode(line: string): Buffer {
  if (/[\r\n\0]/.test(line)) throw new RangeError('CR, LF and NUL are not allowed in a POP3 command');
  return Buffer.from(`${line}\r\n`, 'utf8');
}
