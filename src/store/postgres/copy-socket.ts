/**
 * The store's database connections read into one buffer of their own, and
 * message bodies are taken out of it as they arrive.
 *
 * A socket normally hands every read over in a new buffer, and V8 frees that
 * memory only when it collects the small objects that own it: a RETR of a
 * big body read that way costs an allocation per read and a collection
 * every few megabytes (collect.ts). A store connection instead reads into a
 * buffer it keeps (Node's `onread`). Outside a body read, each read is
 * passed on to node-postgres as a copy, as before. During a body read
 * (`CopyOut`, a query node-postgres runs like any other) the COPY messages
 * are taken straight from that buffer: the rows' bytes are copied once,
 * into memory the read owns (bodies.ts), and everything from CopyDone on (CommandComplete,
 * ReadyForQuery), or an ErrorResponse, goes to node-postgres again.
 *
 * Only plain TCP or Unix-socket connections are made this way; a connection
 * with TLS gets an ordinary socket, and its bodies are read through
 * pg-copy-streams.
 */
import net from 'node:net';
import type { Connection } from 'pg';

/** Bytes per read. */
const READ_SIZE = 64 * 1024;

/** Takes bytes of the read in progress; returns what node-postgres must still see (a view, copied by the caller). */
type Tap = (data: Buffer) => Buffer | undefined;

export class TappedSocket extends net.Socket {
  #tap: Tap | undefined;

  constructor() {
    const buffer = Buffer.allocUnsafe(READ_SIZE);
    let self: TappedSocket | undefined;
    super({ onread: { buffer, callback: (n: number) => self!.#onRead(buffer.subarray(0, n)) } } as net.SocketConstructorOpts);
    self = this;
  }

  /** While set, reads go to `tap` first (one at a time). */
  set tap(tap: Tap | undefined) {
    this.#tap = tap;
  }

  #onRead(data: Buffer): boolean {
    let rest: Buffer | undefined = data;
    const tap = this.#tap;
    if (tap !== undefined) {
      try {
        rest = tap(data);
      } catch (e) {
        // The connection's state is unknown now: node-postgres fails the query as the socket goes.
        this.#tap = undefined;
        this.destroy(e instanceof Error ? e : new Error(String(e)));
        return false;
      }
    }
    // The buffer is read into again: node-postgres keeps what it is given (a message cut by the read's end).
    if (rest !== undefined && rest.length > 0) this.emit('data', Buffer.from(rest));
    return true;
  }
}

/**
 * node-postgres's `stream` option for the store's pools: a TappedSocket for
 * connections without TLS, an ordinary socket otherwise.
 */
export function storeSocket(config: { ssl?: unknown }): net.Socket {
  return config.ssl !== undefined && config.ssl !== false ? new net.Socket() : new TappedSocket();
}

/** The connection's socket when it can be tapped. */
export function tappedSocketOf(connection: Connection): TappedSocket | undefined {
  const s = (connection as unknown as { stream?: unknown }).stream;
  return s instanceof TappedSocket ? s : undefined;
}

const TYPE_COPY_OUT = 0x48; // 'H' CopyOutResponse
const TYPE_COPY_DATA = 0x64; // 'd'
const TYPE_COPY_DONE = 0x63; // 'c'
/** Messages the server may send at any time (NoticeResponse, ParameterStatus, NotificationResponse): skipped during a COPY. */
const ASYNC_TYPES = new Set([0x4e, 0x53, 0x41]);

/**
 * `COPY ... TO STDOUT` as a node-postgres query on a TappedSocket: the
 * payload of every CopyData message is handed to `sink` as a view into the
 * socket's buffer (valid only during the call: the sink copies what it
 * keeps). `done` settles once node-postgres has seen the query end
 * (ReadyForQuery), or with the first error: the server's, the sink's, a
 * lost connection, or node-postgres's query_timeout.
 */
export class CopyOut {
  readonly text: string;
  readonly done: Promise<void>;
  /** Set by node-postgres (query_timeout); called once when the query ends. */
  callback: ((err: Error | null) => void) | undefined;
  readonly #sink: (part: Buffer) => void;
  #resolve!: () => void;
  #reject!: (e: Error) => void;
  #socket: TappedSocket | undefined;
  #settled = false;
  #sinkError: Error | undefined;
  #copyDone = false;
  /** Message header being read: type and length. */
  readonly #header = Buffer.alloc(5);
  #have = 0;
  #type = 0;
  /** Payload bytes of the current message still to come; -1: reading a header. */
  #left = -1;

  constructor(text: string, sink: (part: Buffer) => void) {
    this.text = text;
    this.#sink = sink;
    this.done = new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.done.catch(() => undefined); // the caller awaits it; not an unhandled rejection meanwhile
  }

  /** node-postgres: the query's turn on the connection. */
  submit(connection: Connection): Error | undefined {
    const socket = tappedSocketOf(connection);
    if (socket === undefined) return new Error('this connection cannot read a body directly');
    this.#socket = socket;
    socket.tap = (data) => this.#feed(data);
    (connection as unknown as { query(text: string): void }).query(this.text);
    return undefined;
  }

  handleCommandComplete(): void {}

  handleReadyForQuery(): void {
    this.#untap();
    if (this.#sinkError !== undefined) this.#settle(this.#sinkError);
    else if (!this.#copyDone) this.#settle(new Error('the server ended the COPY without its data'));
    else this.#settle(undefined);
  }

  handleError(err: Error): void {
    this.#untap();
    this.#settle(err);
  }

  // Anything else node-postgres may pass on: not an answer to COPY TO STDOUT.
  handleRowDescription(): void {
    this.#sinkError ??= new Error('unexpected answer to COPY');
  }
  handleDataRow(): void {
    this.#sinkError ??= new Error('unexpected answer to COPY');
  }
  handleEmptyQuery(): void {
    this.#sinkError ??= new Error('unexpected answer to COPY');
  }
  handleCopyInResponse(connection: Connection): void {
    this.#sinkError ??= new Error('unexpected answer to COPY');
    (connection as unknown as { sendCopyFail(msg: string): void }).sendCopyFail('not expected');
  }
  handleCopyData(): void {}
  handlePortalSuspended(): void {}

  /** Ends the query now (a timeout): the caller must then drop the connection. */
  abandon(err: Error): void {
    this.#untap();
    this.#settle(err);
  }

  #untap(): void {
    if (this.#socket !== undefined) this.#socket.tap = undefined;
    this.#socket = undefined;
  }

  #settle(err: Error | undefined): void {
    if (this.#settled) return;
    this.#settled = true;
    if (err === undefined) this.#resolve();
    else this.#reject(err);
    this.callback?.(err ?? null);
  }

  /** One read: COPY messages taken here; from CopyDone or a message that is not COPY's on, handed back. */
  #feed(data: Buffer): Buffer | undefined {
    let at = 0;
    while (at < data.length) {
      if (this.#left < 0) {
        const n = Math.min(5 - this.#have, data.length - at);
        data.copy(this.#header, this.#have, at, at + n);
        this.#have += n;
        at += n;
        if (this.#have < 5) return undefined;
        this.#have = 0;
        const type = this.#header[0]!;
        const length = this.#header.readInt32BE(1) - 4;
        if ((type !== TYPE_COPY_OUT && type !== TYPE_COPY_DATA && type !== TYPE_COPY_DONE && !ASYNC_TYPES.has(type)) || length < 0) {
          // An ErrorResponse (or anything unexpected): node-postgres reads it, and what follows, as usual.
          this.#untap();
          return Buffer.concat([this.#header, data.subarray(at)]);
        }
        this.#type = type;
        this.#left = length;
      } else {
        const n = Math.min(this.#left, data.length - at);
        if (this.#type === TYPE_COPY_DATA && n > 0 && this.#sinkError === undefined) {
          try {
            this.#sink(data.subarray(at, at + n));
          } catch (e) {
            this.#sinkError = e instanceof Error ? e : new Error(String(e));
          }
        }
        at += n;
        this.#left -= n;
      }
      if (this.#left === 0) {
        this.#left = -1;
        if (this.#type === TYPE_COPY_DONE) {
          this.#copyDone = true;
          this.#untap();
          return data.subarray(at);
        }
      }
    }
    return undefined;
  }
}
