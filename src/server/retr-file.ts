/**
 * RETR of a message kept in a file of its own (Maildir), with the native
 * encoder: the file is read and encoded straight into one of a few reused
 * output buffers, so a message costs no stream, no allocation per chunk and,
 * while the file is in the page cache, no trip to the thread pool.
 *
 * - Each chunk is first read with `readStuffedInto` (preadv2 with
 *   RWF_NOWAIT): it succeeds only when the page cache already holds the
 *   bytes, so the event loop never waits for a disk. Otherwise that chunk is
 *   read on the thread pool like any file read and encoded with `stuffInto`.
 * - An output buffer goes back to the pool when the socket is done with it
 *   (the write callback), never earlier.
 * - The bytes on the wire are exactly those of `DotStuffer` (the tests
 *   compare the two on the same files).
 */
import type { FileHandle } from 'node:fs/promises';
import { terminator } from '../protocol/dot-stuff.js';
import { native, type NativeCodec } from '../protocol/native.js';

/** Output buffer size: one socket write per chunk. */
const CHUNK = 256 * 1024;
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
