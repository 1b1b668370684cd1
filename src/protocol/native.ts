/**
 * The optional native part of the wire codec (native/dotstuff.c, built by
 * `npm install` with node-gyp into build/Release). Every caller has a
 * JavaScript path that gives the same bytes; this module only says whether
 * the faster one is there. POPLAR_NO_NATIVE=1 turns it off (tests compare the
 * two).
 */
import { createRequire } from 'node:module';

export interface NativeCodec {
  /** RETR encoding of one chunk; state = [next byte starts a line, last byte was CR], updated in place. */
  stuff(chunk: Buffer, state: Uint8Array): Buffer;
  /**
   * Encode `src` into `dst` as far as `dst` holds (at least 16 bytes); returns
   * the bytes written and sets consumed[0] to the `src` bytes they cover.
   * Absent from a module built before this call existed.
   */
  stuffInto?(src: Buffer, state: Uint8Array, dst: Buffer, consumed: Float64Array): number;
  /**
   * `stuffInto` with the file's bytes from `position` on, read only if the
   * page cache holds them (Linux preadv2 with RWF_NOWAIT). Returns -1 when
   * the read would wait for the disk, cannot be done that way, or fails;
   * 0 with consumed[0] = 0 at the end of the file.
   */
  readStuffedInto?(fd: number, position: number, dst: Buffer, state: Uint8Array, consumed: Float64Array): number;
  /**
   * POP3 sizes (octets with every bare LF counted as CRLF) of these files,
   * measured on the thread pool; an entry is -errno for a file that could not
   * be read (native/crlfsize.c).
   */
  crlfSizes?(paths: string[]): Promise<Float64Array>;
  /**
   * A message in memory into a Maildir in one call (native/maildirwrite.c):
   * `tmp` created exclusively with `mode`, `data` written (CRLF stored as LF
   * when `toLf`), then, with `newPrefix`, linked to
   * `<newPrefix>,S=<octets>,W=<crlf octets>` and `tmp` unlinked; returns that
   * path (undefined without `newPrefix`). out = [descriptor left open, octets,
   * crlf octets]. Throws a Node-style errno error, leaving nothing behind.
   */
  writeMessage?(tmp: string, newPrefix: string | null, data: Buffer, toLf: boolean, mode: number, out: Float64Array): string | undefined;
  /** fsync then close each descriptor, in one thread-pool job; 0 or the fsync's errno for each. */
  fsyncClose?(fds: Int32Array): Promise<Int32Array>;
}

function load(): NativeCodec | undefined {
  if (process.env['POPLAR_NO_NATIVE'] === '1') return undefined;
  try {
    // src/protocol/ and dist/protocol/ are both two levels below the package root.
    return createRequire(import.meta.url)('../../build/Release/poplar_native.node') as NativeCodec;
  } catch {
    return undefined;
  }
}

export const native: NativeCodec | undefined = load();
