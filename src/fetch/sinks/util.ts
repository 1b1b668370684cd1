/**
 * Pieces shared by the sinks: the error they reject with, streaming line-end
 * conversion, and small helpers for abort signals and source streams.
 */
import { createHash, randomBytes } from 'node:crypto';
import { constants as C, promises as fs, type promises as fsp } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { MessageSource } from './types.js';

/**
 * Why a sink did not deliver. `temporary` tells the fetcher whether trying
 * again later may succeed (EX_TEMPFAIL, LMTP 4xx, a lock held too long, a
 * killed MDA) or whether the same message will be refused again (LMTP 5xx,
 * another MDA exit status). Either way nothing of the message is visible.
 */
export class SinkError extends Error {
  readonly temporary: boolean;
  /** MDA: the exit status, when it exited. */
  readonly exitCode: number | undefined;
  /** MDA: the signal that ended it, when one did. */
  readonly exitSignal: NodeJS.Signals | undefined;
  /** MDA: the last lines it wrote to stderr. */
  readonly stderr: string | undefined;
  /** LMTP: the reply code (e.g. 452), and the whole reply text. */
  readonly replyCode: number | undefined;
  readonly reply: string | undefined;

  constructor(
    message: string,
    opts: {
      temporary: boolean;
      cause?: unknown;
      exitCode?: number;
      exitSignal?: NodeJS.Signals;
      stderr?: string;
      replyCode?: number;
      reply?: string;
    },
  ) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'SinkError';
    this.temporary = opts.temporary;
    this.exitCode = opts.exitCode;
    this.exitSignal = opts.exitSignal;
    this.stderr = opts.stderr;
    this.replyCode = opts.replyCode;
    this.reply = opts.reply;
  }
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * CRLF → LF for a whole message in memory (a bare CR stays, as in CrlfToLf).
 * Done on a latin1 string (one octet per character, so no octet changes):
 * V8's replaceAll is several times faster than copying line by line.
 */
export function crlfToLf(b: Buffer): Buffer {
  const s = b.toString('latin1');
  if (!s.includes('\r\n')) return b;
  return Buffer.from(s.replaceAll('\r\n', '\n'), 'latin1');
}

/**
 * Streaming CRLF → LF. Only a CR immediately followed by LF is dropped; a
 * bare CR is content and stays. A CR at the end of a chunk is held back until
 * the next chunk (or `end`) shows what follows it.
 */
export class CrlfToLf {
  #heldCR = false;

  push(chunk: Buffer): Buffer {
    if (chunk.length === 0) return chunk;
    let out: Buffer[] | null = null;
    let start = 0;
    if (this.#heldCR) {
      this.#heldCR = false;
      if (chunk[0] !== LF) out = [CR_BUF];
    }
    let i = chunk.indexOf(LF);
    while (i !== -1) {
      if (i > 0 && chunk[i - 1] === CR) {
        (out ??= []).push(chunk.subarray(start, i - 1));
        start = i;
      }
      i = chunk.indexOf(LF, i + 1);
    }
    let end = chunk.length;
    if (chunk[end - 1] === CR) {
      this.#heldCR = true;
      end--;
    }
    if (out === null) return start === 0 && end === chunk.length ? chunk : chunk.subarray(start, end);
    out.push(chunk.subarray(start, end));
    return Buffer.concat(out);
  }

  /** What is still held back (a final bare CR). */
  end(): Buffer {
    if (!this.#heldCR) return EMPTY;
    this.#heldCR = false;
    return CR_BUF;
  }
}

const CR_BUF = Buffer.from([CR]);
export const EMPTY = Buffer.alloc(0);

/** The chunks of a message as Buffers (a stream in object or string mode gives strings). */
export async function* chunksOf(message: Readable): AsyncGenerator<Buffer> {
  for await (const chunk of message as AsyncIterable<Buffer | string | Uint8Array>) {
    if (Buffer.isBuffer(chunk)) yield chunk;
    else if (typeof chunk === 'string') yield Buffer.from(chunk, 'latin1');
    else yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  }
}

/** The error to reject with once `signal` has fired. */
export function abortReason(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/**
 * Calls `onAbort` when `signal` fires (at once if it already has). Returns a
 * function that removes the listener; call it when the operation is over.
 */
export function onAbort(signal: AbortSignal | undefined, fn: () => void): () => void {
  if (signal === undefined) return () => undefined;
  if (signal.aborted) {
    fn();
    return () => undefined;
  }
  signal.addEventListener('abort', fn, { once: true });
  return () => signal.removeEventListener('abort', fn);
}

/**
 * Makes an async iteration over `message` stop promptly when `signal` fires,
 * even while the source is silent: the source is destroyed with the abort
 * reason, which makes the iteration throw it.
 */
export function destroyOnAbort(message: Readable, signal: AbortSignal | undefined): () => void {
  return onAbort(signal, () => {
    if (!message.destroyed) message.destroy(toError(abortReason(signal!)));
  });
}

export function toError(e: unknown): Error {
  return e instanceof Error ? e : new Error(String(e));
}

/** A one-at-a-time queue: `run` calls its function after every earlier one has settled. */
export class Mutex {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn, fn);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

/** Like `Mutex`, one queue per key (e.g. per mbox path); idle keys are forgotten. */
export class KeyedMutex {
  readonly #tails = new Map<string, Promise<unknown>>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.#tails.get(key) ?? Promise.resolve();
    const result = prev.then(fn, fn);
    const tail = result.catch(() => undefined);
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }
}

/** Read size of a MessageSource. */
const SOURCE_CHUNK = 256 * 1024;

/** A message in memory as a MessageSource (tests, small messages). */
export function bufferSource(b: Buffer): MessageSource {
  return {
    size: b.length,
    chunks: async function* () {
      for (let i = 0; i < b.length; i += SOURCE_CHUNK) yield b.subarray(i, i + SOURCE_CHUNK);
    },
  };
}

export interface SpooledMessage extends MessageSource {
  close(): Promise<void>;
}

/**
 * Copy `message` to a new file in `dir` that loses its name at once (created
 * O_EXCL|O_NOFOLLOW, mode 0600): its octets stay readable until close(),
 * and nothing is left behind whatever happens.
 */
export async function spoolMessage(message: Readable, dir: string, signal?: AbortSignal): Promise<SpooledMessage> {
  const name = path.join(dir, `.poplar-spool-${process.pid}-${randomBytes(8).toString('hex')}`);
  const fh = await fs.open(name, C.O_RDWR | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW, 0o600);
  await fs.unlink(name).catch(() => undefined);
  const stop = destroyOnAbort(message, signal);
  let size = 0;
  try {
    for await (const chunk of chunksOf(message)) {
      for (let off = 0; off < chunk.length; ) off += (await fh.write(chunk, off, chunk.length - off, size + off)).bytesWritten;
      size += chunk.length;
    }
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  } finally {
    stop();
  }
  return { size, chunks: () => fileRange(fh, 0, size), close: () => fh.close().catch(() => undefined) };
}

/** `length` octets of an open file from `pos`, in pieces. */
export async function* fileRange(fh: fsp.FileHandle, pos: number, length: number): AsyncGenerator<Buffer> {
  const end = pos + length;
  while (pos < end) {
    const buf = Buffer.allocUnsafe(Math.min(SOURCE_CHUNK, end - pos));
    const { bytesRead } = await fh.read(buf, 0, buf.length, pos);
    if (bytesRead === 0) throw new SinkError('a file shrank while it was being read', { temporary: true });
    pos += bytesRead;
    yield buf.subarray(0, bytesRead);
  }
}

/** SHA-256 and length of a stream of pieces, read through once. */
export async function digestOf(chunks: AsyncIterable<Buffer>): Promise<{ key: string; length: number }> {
  const h = createHash('sha256');
  let length = 0;
  for await (const c of chunks) {
    h.update(c);
    length += c.length;
  }
  return { key: h.digest('hex'), length };
}

/** `chunks` with CRLF → LF, as a stream of pieces. */
export async function* lfOf(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  const conv = new CrlfToLf();
  for await (const c of chunks) {
    const b = conv.push(c);
    if (b.length > 0) yield b;
  }
  const tail = conv.end();
  if (tail.length > 0) yield tail;
}
