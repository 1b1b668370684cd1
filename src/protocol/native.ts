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
