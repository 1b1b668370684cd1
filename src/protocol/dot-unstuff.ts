/**
 * Client-side decoder for POP3 multi-line replies (RFC 1939 §3).
 *
 * Feed it the bytes that follow the `+OK ...\r\n` status line, in arbitrary
 * chunks. It yields the message content with line ends kept as received and
 * the leading dot of each dot-stuffed line removed, and stops at the
 * terminator line ".". Bytes after the terminator belong to the next
 * (pipelined) reply and are handed back as `rest`.
 *
 * Tolerant of servers that end lines with bare LF: ".\n" terminates as well,
 * and "..x\n" unstuffs to ".x\n". A line that starts with a single "." that is
 * not the terminator (a server that forgot to stuff) loses that dot, as the
 * RFC prescribes.
 *
 * Only lines that start with "." cost anything: the content otherwise passes
 * through as subarrays of the input chunk.
 */
import { Transform, type TransformCallback } from 'node:stream';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;
const CR_ONLY = Buffer.from('\r', 'latin1');

export interface UnstuffResult {
  /** Message content decoded from this chunk (possibly none). Subarrays of the input. */
  data: Buffer[];
  /** The terminator has been seen; the reply is complete. */
  done: boolean;
  /** Bytes after the terminator (only present when non-empty). */
  rest?: Buffer;
}

/** Held back at the end of a chunk: nothing, "." at line start, or ".\r" at line start. */
const PENDING_NONE = 0;
const PENDING_DOT = 1;
const PENDING_DOT_CR = 2;
type Pending = typeof PENDING_NONE | typeof PENDING_DOT | typeof PENDING_DOT_CR;

export class DotUnstuffer {
  #atLineStart = true;
  #pending: Pending = PENDING_NONE;
  #done = false;

  get done(): boolean {
    return this.#done;
  }

  push(chunk: Buffer): UnstuffResult {
    const len = chunk.length;
    if (this.#done) return len > 0 ? { data: [], done: true, rest: chunk } : { data: [], done: true };
    const data: Buffer[] = [];
    if (len === 0) return { data, done: false };

    let start = 0;
    let ls: number; // index of the next line start to examine, -1 if none in this chunk

    if (this.#pending !== PENDING_NONE) {
      const b0 = chunk[0];
      if (b0 === LF) return this.#finish(data, chunk, 1);
      if (this.#pending === PENDING_DOT) {
        if (b0 === CR) {
          if (len === 1) {
            this.#pending = PENDING_DOT_CR;
            return { data, done: false };
          }
          if (chunk[1] === LF) return this.#finish(data, chunk, 2);
        }
        // Stuffed (or unstuffed-but-dotted) line: the dot is dropped, the rest is content.
      } else {
        data.push(CR_ONLY); // ".\r" followed by something other than LF: keep the CR
      }
      this.#pending = PENDING_NONE;
      const i = chunk.indexOf(LF);
      ls = i < 0 ? -1 : i + 1;
    } else if (this.#atLineStart) {
      ls = 0;
    } else {
      const i = chunk.indexOf(LF);
      ls = i < 0 ? -1 : i + 1;
    }

    while (ls >= 0) {
      if (ls === len) {
        // Chunk ended with a line end.
        if (start < len) data.push(chunk.subarray(start, len));
        this.#atLineStart = true;
        return { data, done: false };
      }
      if (chunk[ls] === DOT) {
        if (ls > start) data.push(chunk.subarray(start, ls));
        if (ls + 1 === len) {
          this.#pending = PENDING_DOT;
          return { data, done: false };
        }
        const b1 = chunk[ls + 1];
        if (b1 === LF) return this.#finish(data, chunk, ls + 2);
        if (b1 === CR) {
          if (ls + 2 === len) {
            this.#pending = PENDING_DOT_CR;
            return { data, done: false };
          }
          if (chunk[ls + 2] === LF) return this.#finish(data, chunk, ls + 3);
        }
        start = ls + 1;
      }
      const i = chunk.indexOf(LF, ls);
      ls = i < 0 ? -1 : i + 1;
    }

    if (start < len) data.push(chunk.subarray(start, len));
    this.#atLineStart = false;
    return { data, done: false };
  }

  #finish(data: Buffer[], chunk: Buffer, restStart: number): UnstuffResult {
    this.#done = true;
    this.#pending = PENDING_NONE;
    return restStart < chunk.length
      ? { data, done: true, rest: chunk.subarray(restStart) }
      : { data, done: true };
  }
}

export interface DotUnstuffTransformOptions {
  /** Receives every byte that arrives after the terminator (may be called more than once). */
  onRest?: (rest: Buffer) => void;
}

/**
 * A Transform that outputs the unstuffed content of one multi-line reply and
 * ends its readable side at the terminator (emitting `'done'`). Bytes after
 * the terminator go to `onRest` and are also emitted as `'rest'` events.
 * Ending the input before the terminator is an error.
 */
export function createDotUnstuffTransform(opts?: DotUnstuffTransformOptions): Transform {
  const dec = new DotUnstuffer();
  const onRest = opts?.onRest;
  let ended = false;
  return new Transform({
    transform(this: Transform, chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
      const r = dec.push(chunk);
      for (const b of r.data) this.push(b);
      if (r.done && !ended) {
        ended = true;
        this.push(null);
        this.emit('done');
      }
      if (r.rest !== undefined) {
        this.emit('rest', r.rest);
        onRest?.(r.rest);
      }
      cb();
    },
    flush(this: Transform, cb: TransformCallback): void {
      if (!dec.done) {
        cb(new Error('input ended before the end of the multi-line response'));
        return;
      }
      cb();
    },
  });
}

/** Decode a complete multi-line reply body (terminator required; bytes after it are ignored). */
export function unstuffMessage(buf: Buffer): Buffer {
  const dec = new DotUnstuffer();
  const r = dec.push(buf);
  if (!r.done) throw new Error('multi-line response is missing its terminator');
  return Buffer.concat(r.data);
}
