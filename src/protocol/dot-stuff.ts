/**
 * Server-side encoder for POP3 multi-line replies (RFC 1939 §3, RETR/TOP §7).
 *
 * Input is the stored message exactly as it lies on disk, in arbitrary
 * chunks. Output is what goes on the wire after the `+OK` status line:
 *
 * - every line end (LF or CRLF in storage) goes out as CRLF; a CR that is not
 *   followed by LF ("bare CR") is content and passes through unchanged;
 * - a line that begins with "." gets one more "." in front of it;
 * - at the end, CRLF is added if the message did not end with a line end,
 *   followed by the terminator ".\r\n" (an empty message gives just ".\r\n").
 *
 * With `bodyLines: n` (TOP) only the header, the blank line that ends it and
 * at most n body lines are sent; after that `done` is true and every further
 * chunk is ignored so the caller can stop reading the file.
 *
 * The hot path scans with `Buffer#indexOf` and only records segment
 * boundaries; output pieces are subarrays of the input chunk plus a shared
 * CRLF constant. A doubled dot costs nothing extra: the piece before it ends
 * just after the dot and the next piece starts at the same dot.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { native } from './native.js';

const LF = 0x0a;
const CR = 0x0d;
const DOT = 0x2e;

/** Shared constant pieces; never mutate buffers returned by this module. */
const CRLF = Buffer.from('\r\n', 'latin1');
const TERMINATOR = Buffer.from('.\r\n', 'latin1');
const CRLF_TERMINATOR = Buffer.from('\r\n.\r\n', 'latin1');

/** What ends an encoded message: ".\r\n", after a CRLF of its own if the message did not end with a line end. Shared; never mutate. */
export function terminator(atLineStart: boolean): Buffer {
  return atLineStart ? TERMINATOR : CRLF_TERMINATOR;
}

/** Marker in the segment list for "insert CRLF here". */
const INSERT_CRLF = -1;

export interface DotStuffOptions {
  /** TOP mode: send the header, the blank line and at most this many body lines. */
  bodyLines?: number;
  /** Use native/dotstuff.c for RETR when it is built (default true); false forces the JavaScript path. */
  native?: boolean;
}

/** RETR: no line accounting at all. */
const PHASE_ALL = 0;
/** TOP, still in the header (no blank line seen yet). */
const PHASE_HEADER = 1;
/** TOP, in the body; counting down `remaining`. */
const PHASE_BODY = 2;
type Phase = typeof PHASE_ALL | typeof PHASE_HEADER | typeof PHASE_BODY;

export class DotStuffer {
  /** The next input byte starts a line. */
  #atLineStart = true;
  /** The last input byte seen was CR (it may pair with an LF in the next chunk). */
  #prevCR = false;
  /** TOP only: bytes of the current line seen so far, capped at 2. */
  #lineLen = 0;
  #phase: Phase;
  #remaining: number;
  #done = false;
  #ended = false;
  /** Reused list of [start, end) pairs into the current chunk; start < 0 = INSERT_CRLF. */
  readonly #segs: number[] = [];
  /** [atLineStart, prevCR] handed to the native encoder. */
  #nativeState: Uint8Array | undefined;

  readonly #native: typeof native;

  constructor(opts?: DotStuffOptions) {
    this.#native = opts?.native === false ? undefined : native;
    const n = opts?.bodyLines;
    if (n === undefined) {
      this.#phase = PHASE_ALL;
      this.#remaining = 0;
    } else {
      if (!Number.isSafeInteger(n) || n < 0) {
        throw new RangeError(`bodyLines must be a non-negative integer, got ${String(n)}`);
      }
      this.#phase = PHASE_HEADER;
      this.#remaining = n;
    }
  }

  /** TOP limit reached: the output is complete except for `end()`; further input is ignored. */
  get done(): boolean {
    return this.#done;
  }

  /**
   * Encode one chunk. Returns the pieces to write, in order (possibly none).
   * Pieces are subarrays of `chunk` (so `chunk` must not be reused by the
   * caller until they are written) or shared constants.
   */
  push(chunk: Buffer): Buffer[] {
    const segs = this.#scan(chunk);
    const out: Buffer[] = [];
    for (let k = 0; k < segs.length; k += 2) {
      const s = segs[k]!;
      out.push(s === INSERT_CRLF ? CRLF : chunk.subarray(s, segs[k + 1]!));
    }
    return out;
  }

  /**
   * Like `push`, without a Buffer per piece: the output of `chunk` as
   * [start, end) pairs into `chunk`, a pair of -1 standing for CRLF. The
   * list is reused: it is valid until the next call. For a caller that copies
   * the pieces into buffers of its own.
   */
  segments(chunk: Buffer): readonly number[] {
    return this.#scan(chunk);
  }

  /**
   * Like `push`, but returns the output as one buffer (or `null` if there is
   * none). When the chunk needs no change the result is a zero-copy view of
   * `chunk`; otherwise the pieces are copied once into a new buffer. Cheaper
   * than many tiny writes when the message is stored with bare LF.
   */
  pushJoined(chunk: Buffer): Buffer | null {
    const nat = this.#native;
    if (nat !== undefined && this.#phase === PHASE_ALL && !this.#done && !this.#ended) {
      // RETR: the same encoding in native/dotstuff.c, one pass of memchr and memcpy.
      if (chunk.length === 0) return null;
      const state = (this.#nativeState ??= new Uint8Array(2));
      state[0] = this.#atLineStart ? 1 : 0;
      state[1] = this.#prevCR ? 1 : 0;
      const out = nat.stuff(chunk, state);
      this.#atLineStart = state[0] === 1;
      this.#prevCR = state[1] === 1;
      return out;
    }
    const segs = this.#scan(chunk);
    const n = segs.length;
    if (n === 0) return null;
    if (n === 2 && segs[0]! >= 0) return chunk.subarray(segs[0]!, segs[1]!);
    let total = 0;
    for (let k = 0; k < n; k += 2) {
      const s = segs[k]!;
      total += s === INSERT_CRLF ? 2 : segs[k + 1]! - s;
    }
    const out = Buffer.allocUnsafe(total);
    let o = 0;
    for (let k = 0; k < n; k += 2) {
      const s = segs[k]!;
      if (s === INSERT_CRLF) {
        out[o++] = CR;
        out[o++] = LF;
      } else {
        const e = segs[k + 1]!;
        if (e - s > 48) {
          o += chunk.copy(out, o, s, e);
        } else {
          // Short piece: a plain loop beats the native copy call's fixed cost.
          for (let j = s; j < e; j++) out[o++] = chunk[j]!;
        }
      }
    }
    return out;
  }

  /** Finish: CRLF if the message did not end with a line end, then ".\r\n". Returns [] if called again. */
  end(): Buffer[] {
    if (this.#ended) return [];
    this.#ended = true;
    return [terminator(this.#atLineStart)];
  }

  #scan(chunk: Buffer): number[] {
    const segs = this.#segs;
    segs.length = 0;
    const len = chunk.length;
    if (this.#done || this.#ended || len === 0) return segs;

    const top = this.#phase !== PHASE_ALL;
    // Index in `chunk` where the current line started (negative: in an earlier chunk).
    let lineStart = -this.#lineLen;
    let start = 0;
    let pos = 0;

    if (this.#atLineStart && chunk[0] === DOT) segs.push(0, 1); // the dot is emitted twice

    for (;;) {
      const i = chunk.indexOf(LF, pos);
      if (i < 0) break;
      const crBefore = i > 0 ? chunk[i - 1] === CR : this.#prevCR;
      const next = i + 1;
      if (!crBefore) {
        if (i > start) segs.push(start, i);
        segs.push(INSERT_CRLF, INSERT_CRLF);
        start = next;
      }
      if (top) {
        let finished = false;
        if (this.#phase === PHASE_HEADER) {
          // Empty line: LF right at line start, or CR LF with the CR at line start.
          if (i === lineStart || (crBefore && i - 1 === lineStart)) {
            this.#phase = PHASE_BODY;
            finished = this.#remaining === 0;
          }
        } else {
          finished = --this.#remaining === 0;
        }
        if (finished) {
          if (next > start) segs.push(start, next);
          this.#done = true;
          this.#atLineStart = true;
          this.#prevCR = false;
          return segs;
        }
        lineStart = next;
      }
      if (next < len && chunk[next] === DOT) {
        segs.push(start, next + 1);
        start = next;
      }
      pos = next;
    }

    if (start < len) segs.push(start, len);
    const last = chunk[len - 1];
    this.#prevCR = last === CR;
    this.#atLineStart = last === LF;
    if (top) this.#lineLen = Math.min(len - lineStart, 2);
    return segs;
  }
}

export interface DotStuffTransformOptions extends DotStuffOptions {
  /** Called once when the TOP limit is reached (after the terminator has been pushed). */
  onDone?: () => void;
}

/**
 * A Transform that dot-stuffs a stored message and appends the terminator.
 *
 * In TOP mode, once the limit is reached it pushes the terminator, ends its
 * readable side, emits `'done'` and calls `onDone`. Its writable side stays
 * open and silently discards whatever is still written, so a `pipeline()`
 * through it always completes normally (after reading the source to its end).
 * To stop reading early, destroy the source in `onDone`: with `.pipe()` do
 * `source.unpipe(t); source.destroy()`; inside `pipeline()` destroying the
 * source makes it reject with ERR_STREAM_PREMATURE_CLOSE, which is then
 * expected. Simplest of all is to skip the Transform: iterate the file stream
 * with `for await`, write `DotStuffer#push` output, and `break` once `done`.
 */
export function createDotStuffTransform(opts?: DotStuffTransformOptions): Transform {
  const stuffer = new DotStuffer(opts);
  const onDone = opts?.onDone;
  let finished = false;
  return new Transform({
    transform(this: Transform, chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
      if (finished) {
        cb();
        return;
      }
      const out = stuffer.pushJoined(chunk);
      if (out !== null) this.push(out);
      if (stuffer.done) {
        finished = true;
        for (const b of stuffer.end()) this.push(b);
        this.push(null);
        cb();
        this.emit('done');
        onDone?.();
        return;
      }
      cb();
    },
    flush(this: Transform, cb: TransformCallback): void {
      if (!finished) {
        finished = true;
        for (const b of stuffer.end()) this.push(b);
      }
      cb();
    },
  });
}

/** Encode a whole message in one go (tests and small messages). */
export function stuffMessage(buf: Buffer, opts?: DotStuffOptions): Buffer {
  const s = new DotStuffer(opts);
  const pieces = s.push(buf);
  pieces.push(...s.end());
  return Buffer.concat(pieces);
}
