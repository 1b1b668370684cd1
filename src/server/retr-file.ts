/**
 * RETR and TOP into a few reused output buffers: the message is encoded
 * straight into a buffer from a small per-process pool, and a buffer goes
 * back to the pool when the socket is done with it (the write callback),
 * never earlier. A message then costs no allocation per chunk, whatever its
 * size, and nothing is left for the garbage collector.
 *
 * - A message kept in a file of its own (Maildir), with the native encoder:
 *   each chunk is first read with `readStuffedInto` (preadv2 with
 *   RWF_NOWAIT), which succeeds only when the page cache already holds the
 *   bytes, so the event loop never waits for a disk. Otherwise that chunk is
 *   read on the thread pool like any file read and encoded with `stuffInto`.
 * - A message that comes as a stream of chunks (the PostgreSQL store, or any
 *   store without files): each chunk is encoded with `stuffInto` when the
 *   native encoder is there and this is a RETR; otherwise (TOP, or no native
 *   module) `DotStuffer` finds the pieces and they are copied into the same
 *   buffers. Either way a chunk is used up before the next one is asked for.
 * - The bytes on the wire are exactly those of `DotStuffer` (the tests
 *   compare them on the same messages).
 */
import type { FileHandle } from 'node:fs/promises';
import { DotStuffer, terminator } from '../protocol/dot-stuff.js';
import { native, type NativeCodec } from '../protocol/native.js';

/** Output buffer size: one socket write per chunk. */
const CHUNK = 256 * 1024;
/** A stream's output buffer is written once it has less room than this (the encoder needs 16 bytes, a line end plus a dot 4). */
const ROOM = 64;
/** Free output buffers kept per process; more are left to the garbage collector. */
const POOL_MAX = 16;
const pool: Buffer[] = [];

function take(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK);
}

function give(b: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(b);
}

/** Where the encoded message goes: a connection with output backpressure. */
export interface WireOut {
  write(data: Buffer, written?: () => void): void;
  readonly needsDrain: boolean;
  /** Resolves once more output is welcome; false if the connection closed. */
  drain(): Promise<boolean>;
  readonly closed: boolean;
}

/** The native encoder when it can encode into a caller's buffer (stream RETR). */
export const streamCodec: Pick<Required<NativeCodec>, 'stuffInto'> | undefined = native?.stuffInto !== undefined ? (native as Required<NativeCodec>) : undefined;

/** The native encoder when it has the calls this path needs. */
export const fileCodec: Required<NativeCodec> | undefined =
  native?.stuffInto !== undefined && native.readStuffedInto !== undefined ? (native as Required<NativeCodec>) : undefined;

/**
 * Send the message in `fh` dot-stuffed, with CRLF line ends and the
 * terminator. Returns the bytes queued; stops early (without the terminator)
 * if the connection closes. Read errors are thrown: the caller must drop the
 * connection, since the `+OK` is already out.
 */
export async function sendStuffedFile(codec: Required<NativeCodec>, fh: FileHandle, out: WireOut): Promise<number> {
  const state = new Uint8Array(2);
  state[0] = 1; // the message starts a line
  const consumed = new Float64Array(1);
  let input: Buffer | undefined;
  let pos = 0;
  let sent = 0;
  for (;;) {
    const dst = take();
    let n = codec.readStuffedInto(fh.fd, pos, dst, state, consumed);
    if (n < 0) {
      // Not in the page cache (or the kernel cannot promise it is): the thread pool reads it.
      input ??= Buffer.allocUnsafe(CHUNK);
      let bytesRead: number;
      try {
        ({ bytesRead } = await fh.read(input, 0, CHUNK, pos));
      } catch (e) {
        give(dst);
        throw e;
      }
      if (out.closed) {
        give(dst);
        return sent;
      }
      n = codec.stuffInto(input.subarray(0, bytesRead), state, dst, consumed);
    }
    if (consumed[0] === 0) {
      give(dst);
      break;
    }
    pos += consumed[0]!;
    out.write(dst.subarray(0, n), () => give(dst));
    sent += n;
    if (out.needsDrain && !(await out.drain())) return sent;
  }
  const end = terminator(state[0] === 1);
  out.write(end);
  return sent + end.length;
}

const CR = 0x0d;
const LF = 0x0a;

/**
 * Send a message that comes as chunks, dot-stuffed, with CRLF line ends and
 * the terminator: all of it (RETR, `bodyLines` undefined) or the header and
 * `bodyLines` body lines (TOP). `codec` (the native encoder) is used for
 * RETR; without it, or for TOP, the JavaScript encoder. Each chunk is
 * encoded before the next is asked for, so the source may hand over the same
 * buffer again. Returns the bytes queued; stops early (without the
 * terminator) if the connection closes. Errors of the source are thrown:
 * the caller must drop the connection, since the `+OK` is already out.
 */
export async function sendStuffedStream(
  source: AsyncIterable<Buffer>,
  out: WireOut,
  bodyLines: number | undefined,
  codec: Pick<Required<NativeCodec>, 'stuffInto'> | undefined = streamCodec,
): Promise<number> {
  const o = new PooledOutput(out);
  try {
    if (codec !== undefined && bodyLines === undefined) {
      const state = new Uint8Array(2);
      state[0] = 1; // the message starts a line
      const consumed = new Float64Array(1);
      for await (const chunk of source) {
        for (let at = 0; at < chunk.length; ) {
          at += o.encode(codec, at === 0 ? chunk : chunk.subarray(at), state, consumed);
        }
        if (!(await o.ready())) return o.sent;
      }
      return o.finish(terminator(state[0] === 1));
    }
    const stuffer = new DotStuffer(bodyLines === undefined ? { native: false } : { bodyLines, native: false });
    for await (const chunk of source) {
      o.copySegments(chunk, stuffer.segments(chunk));
      if (stuffer.done) break;
      if (!(await o.ready())) return o.sent;
    }
    return o.finish(stuffer.end()[0]!);
  } finally {
    o.release();
  }
}

/** One output buffer being filled; written when full, and given back to the pool by the write callback. */
class PooledOutput {
  readonly #out: WireOut;
  #dst: Buffer | null = take();
  #used = 0;
  sent = 0;

  constructor(out: WireOut) {
    this.#out = out;
  }

  #room(): Buffer {
    let dst = this.#dst!;
    if (CHUNK - this.#used < ROOM) {
      this.#flush();
      dst = this.#dst = take();
    }
    return dst;
  }

  #flush(): void {
    const dst = this.#dst!;
    if (this.#used > 0) {
      this.#out.write(dst.subarray(0, this.#used), () => give(dst));
      this.sent += this.#used;
    } else give(dst);
    this.#dst = null;
    this.#used = 0;
  }

  /** Native encoding of as much of `src` as the buffer holds; returns the `src` bytes used. */
  encode(codec: Pick<Required<NativeCodec>, 'stuffInto'>, src: Buffer, state: Uint8Array, consumed: Float64Array): number {
    const dst = this.#room();
    this.#used += codec.stuffInto(src, state, this.#used === 0 ? dst : dst.subarray(this.#used), consumed);
    return consumed[0]!;
  }

  /** Copies the pieces `DotStuffer#segments` found in `chunk`. */
  copySegments(chunk: Buffer, segs: readonly number[]): void {
    for (let k = 0; k < segs.length; k += 2) {
      let s = segs[k]!;
      if (s < 0) {
        const dst = this.#room();
        dst[this.#used++] = CR;
        dst[this.#used++] = LF;
        continue;
      }
      const e = segs[k + 1]!;
      while (s < e) {
        const dst = this.#room();
        const n = Math.min(e - s, CHUNK - this.#used);
        if (n > 48) {
          chunk.copy(dst, this.#used, s, s + n);
        } else {
          // Short piece: a plain loop beats the native copy call's fixed cost.
          for (let j = 0; j < n; j++) dst[this.#used + j] = chunk[s + j]!;
        }
        this.#used += n;
        s += n;
      }
    }
  }

  /** Between chunks: waits while the socket has enough queued; false if the connection closed. */
  async ready(): Promise<boolean> {
    if (this.#out.closed) return false;
    if (this.#out.needsDrain) return this.#out.drain();
    return true;
  }

  /** Appends `end` (the terminator) and writes what is left; returns the bytes queued in all. */
  finish(end: Buffer): number {
    const dst = this.#room();
    end.copy(dst, this.#used);
    this.#used += end.length;
    this.#flush();
    return this.sent;
  }

  /** Gives the buffer back if it was never written (an error, or the connection closed). */
  release(): void {
    if (this.#dst !== null) give(this.#dst);
    this.#dst = null;
  }
}
