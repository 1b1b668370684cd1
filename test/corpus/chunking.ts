/** Test helpers shared by the dot-stuffing / unstuffing / size tests. */
import fc from 'fast-check';

export const b = (s: string): Buffer => Buffer.from(s, 'latin1');
export const show = (buf: Buffer): string => JSON.stringify(buf.toString('latin1'));

/** Every way to cut `buf` into `parts` chunks (empty chunks included). */
export function* splits(buf: Buffer, parts: 2 | 3): Generator<Buffer[]> {
  const n = buf.length;
  for (let i = 0; i <= n; i++) {
    if (parts === 2) {
      yield [buf.subarray(0, i), buf.subarray(i)];
    } else {
      for (let j = i; j <= n; j++) yield [buf.subarray(0, i), buf.subarray(i, j), buf.subarray(j)];
    }
  }
}

/** One byte per chunk. */
export function bytewise(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i++) out.push(buf.subarray(i, i + 1));
  return out;
}

/** Unsplit, every 2-way and 3-way split, and one byte at a time. */
export function allChunkings(buf: Buffer): Buffer[][] {
  return [[buf], ...splits(buf, 2), ...splits(buf, 3), bytewise(buf)];
}

/** Cut at the given (sorted) offsets. */
export function cut(buf: Buffer, cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of cuts) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

/** Fixed-size chunks. */
export function chunked(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

/** Every bare LF -> CRLF, plus a final CRLF if non-empty and not ending in LF. */
export function canonical(x: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < x.length; i++) {
    const c = x[i]!;
    if (c === 0x0a && (i === 0 || x[i - 1] !== 0x0d)) out.push(0x0d);
    out.push(c);
  }
  if (x.length > 0 && x[x.length - 1] !== 0x0a) out.push(0x0d, 0x0a);
  return Buffer.from(out);
}

/** Inputs and their hand-written RETR encodings. */
export const TRICKY: ReadonlyArray<readonly [input: string, encoded: string]> = [
  ['.\n', '..\r\n.\r\n'],
  ['a\n.\nb', 'a\r\n..\r\nb\r\n.\r\n'],
  ['..\r\n', '...\r\n.\r\n'],
  ['x\r', 'x\r\r\n.\r\n'],
  ['\r\n.\r\n', '\r\n..\r\n.\r\n'],
  ['a\r\n.', 'a\r\n..\r\n.\r\n'],
  ['.', '..\r\n.\r\n'],
  ['', '.\r\n'],
  ['\r', '\r\r\n.\r\n'],
  ['\n', '\r\n.\r\n'],
  ['a\rb\n', 'a\rb\r\n.\r\n'],
  ['.a\r\n.\r\nb', '..a\r\n..\r\nb\r\n.\r\n'],
  ['\r.\n', '\r.\r\n.\r\n'],
  ['\r\r\n\n.', '\r\r\n\r\n..\r\n.\r\n'],
];

/** Messages rich in ".", CR and LF, plus fully arbitrary bytes; with arbitrary cut points. */
const interestingByte = fc.constantFrom(0x2e, 0x0d, 0x0a, 0x61, 0x00, 0xff);
export const messageArb = fc.oneof(
  fc.uint8Array({ maxLength: 200 }),
  fc.array(interestingByte, { maxLength: 60 }).map((a) => Uint8Array.from(a)),
);
export const chunkedArb = messageArb.chain((m) =>
  fc
    .array(fc.integer({ min: 0, max: m.length }), { maxLength: 8 })
    .map((cuts) => ({ raw: Buffer.from(m), cuts: [...cuts].sort((x, y) => x - y) })),
);
