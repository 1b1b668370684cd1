/**
 * MD5 (RFC 1321) with a resumable state, just enough for Dovecot's
 * `{CRAM-MD5}` / `{HMAC-MD5}` secrets.
 *
 * Such a secret stores HMAC-MD5's two intermediate states: the MD5 chaining
 * values (A, B, C, D) after absorbing the single block key⊕opad (outer) and
 * key⊕ipad (inner), each word little-endian, outer first, as 64 hex digits.
 * node:crypto cannot start an MD5 from a given state, so the compression
 * function lives here. It only runs on short inputs (a challenge, a digest),
 * so clarity wins over speed.
 */
import { createHash } from 'node:crypto';

const BLOCK = 64;

/** Per-round shift amounts. */
const S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21] as const;

/** K[i] = floor(abs(sin(i + 1)) * 2^32). */
const K = Uint32Array.from({ length: 64 }, (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32));

/** The initial chaining values A, B, C, D. */
export const MD5_IV: readonly number[] = Object.freeze([0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]);

/** Absorbs one 64-byte block into `state` (four 32-bit words), in place. */
export function md5Compress(state: Uint32Array, block: Uint8Array, offset = 0): void {
  const m = new Uint32Array(16);
  for (let i = 0; i < 16; i++) {
    const o = offset + i * 4;
    m[i] = ((block[o] ?? 0) | ((block[o + 1] ?? 0) << 8) | ((block[o + 2] ?? 0) << 16) | ((block[o + 3] ?? 0) << 24)) >>> 0;
  }
  let a = state[0] ?? 0;
  let b = state[1] ?? 0;
  let c = state[2] ?? 0;
  let d = state[3] ?? 0;
  for (let i = 0; i < 64; i++) {
    const round = i >> 4;
    let f: number;
    let g: number;
    if (round === 0) {
      f = (b & c) | (~b & d);
      g = i;
    } else if (round === 1) {
      f = (d & b) | (~d & c);
      g = (5 * i + 1) & 15;
    } else if (round === 2) {
      f = b ^ c ^ d;
      g = (3 * i + 5) & 15;
    } else {
      f = c ^ (b | ~d);
      g = (7 * i) & 15;
    }
    const sum = (a + f + (K[i] ?? 0) + (m[g] ?? 0)) >>> 0;
    const s = S[(round << 2) | (i & 3)] ?? 0;
    a = d;
    d = c;
    c = b;
    b = (b + ((sum << s) | (sum >>> (32 - s)))) >>> 0;
  }
  state[0] = ((state[0] ?? 0) + a) >>> 0;
  state[1] = ((state[1] ?? 0) + b) >>> 0;
  state[2] = ((state[2] ?? 0) + c) >>> 0;
  state[3] = ((state[3] ?? 0) + d) >>> 0;
}

/**
 * Finishes an MD5 whose state already absorbed `absorbed` bytes (a multiple
 * of 64), then `data`. With MD5_IV and absorbed = 0 this is plain MD5.
 */
export function md5Resume(state: ArrayLike<number>, absorbed: number, data: Uint8Array): Buffer {
  if (state.length !== 4 || absorbed % BLOCK !== 0) throw new RangeError('md5Resume: bad state');
  const st = Uint32Array.from(state);
  const total = absorbed + data.length;
  const padLen = ((BLOCK - ((data.length + 9) % BLOCK)) % BLOCK) + 9;
  const buf = Buffer.alloc(data.length + padLen);
  buf.set(data, 0);
  buf[data.length] = 0x80;
  // Message length in bits, 64-bit little-endian.
  const bits = BigInt(total) * 8n;
  buf.writeBigUInt64LE(bits & 0xffffffffffffffffn, buf.length - 8);
  for (let o = 0; o < buf.length; o += BLOCK) md5Compress(st, buf, o);
  const out = Buffer.alloc(16);
  for (let i = 0; i < 4; i++) out.writeUInt32LE(st[i] ?? 0, i * 4);
  return out;
}

/** HMAC-MD5's precomputed states: `inner` after key⊕ipad, `outer` after key⊕opad. */
export interface HmacMd5States {
  readonly inner: Uint32Array;
  readonly outer: Uint32Array;
}

/** RFC 2104 key schedule for HMAC-MD5, stopped after the first block of each hash. */
export function hmacMd5States(key: Uint8Array): HmacMd5States {
  const k = Buffer.alloc(BLOCK);
  k.set(key.length > BLOCK ? createHash('md5').update(key).digest() : key);
  const ipad = Buffer.alloc(BLOCK);
  const opad = Buffer.alloc(BLOCK);
  for (let i = 0; i < BLOCK; i++) {
    ipad[i] = (k[i] ?? 0) ^ 0x36;
    opad[i] = (k[i] ?? 0) ^ 0x5c;
  }
  const inner = Uint32Array.from(MD5_IV);
  const outer = Uint32Array.from(MD5_IV);
  md5Compress(inner, ipad);
  md5Compress(outer, opad);
  return { inner, outer };
}

/** HMAC-MD5 of `message` from precomputed states. */
export function hmacMd5FromStates(states: HmacMd5States, message: Uint8Array): Buffer {
  return md5Resume(states.outer, BLOCK, md5Resume(states.inner, BLOCK, message));
}

/** Dovecot's `{CRAM-MD5}` value: 64 hex digits, outer state then inner state, words little-endian. */
export function formatCramMd5Secret(states: HmacMd5States): string {
  const out = Buffer.alloc(32);
  for (let i = 0; i < 4; i++) {
    out.writeUInt32LE(states.outer[i] ?? 0, i * 4);
    out.writeUInt32LE(states.inner[i] ?? 0, 16 + i * 4);
  }
  return out.toString('hex');
}

/** Parses the 64 hex digits of a `{CRAM-MD5}` value; undefined when malformed. */
export function parseCramMd5Secret(value: string): HmacMd5States | undefined {
  if (!/^[0-9a-fA-F]{64}$/.test(value)) return undefined;
  const raw = Buffer.from(value, 'hex');
  const outer = new Uint32Array(4);
  const inner = new Uint32Array(4);
  for (let i = 0; i < 4; i++) {
    outer[i] = raw.readUInt32LE(i * 4);
    inner[i] = raw.readUInt32LE(16 + i * 4);
  }
  return { inner, outer };
}
