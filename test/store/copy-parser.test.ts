/**
 * The parser of binary COPY output that the PostgreSQL store reads message
 * bodies with: rows come out the same whatever pieces the socket delivers,
 * and a damaged or hostile stream is an error, not a wrong message.
 */
import { describe, expect, it } from 'vitest';
import { BinaryCopyParser } from '../../src/store/postgres/bodies.js';

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

function int(n: number, bytes: 2 | 4): Buffer {
  const b = Buffer.alloc(bytes);
  if (bytes === 2) b.writeInt16BE(n);
  else b.writeInt32BE(n);
  return b;
}

function copyOutput(rows: { seq: number; data: Buffer }[], ext = Buffer.alloc(0)): Buffer {
  const parts = [SIGNATURE, int(0, 4), int(ext.length, 4), ext];
  for (const r of rows) parts.push(int(2, 2), int(4, 4), int(r.seq, 4), int(r.data.length, 4), r.data);
  parts.push(int(-1, 2));
  return Buffer.concat(parts);
}

function parse(parts: Buffer[]): { seq: number; data: string }[] {
  const p = new BinaryCopyParser();
  for (const part of parts) p.push(part);
  return p.finish().map((r) => ({ seq: r.seq, data: Buffer.concat(r.data).toString('latin1') }));
}

function split(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < buf.length; at += size) out.push(buf.subarray(at, at + size));
  return out;
}

describe('BinaryCopyParser (bodies read from PostgreSQL)', () => {
  const rows = [
    { seq: 0, data: Buffer.from('Subject: x\r\n\r\n.dot\r\n', 'latin1') },
    { seq: 1, data: Buffer.alloc(0) },
    { seq: 2, data: Buffer.from('\xff\x00\x01 last', 'latin1') },
  ];
  const want = rows.map((r) => ({ seq: r.seq, data: r.data.toString('latin1') }));

  it('gives the same rows whatever pieces the bytes arrive in, header extension included', () => {
    for (const buf of [copyOutput(rows), copyOutput(rows, Buffer.from('ext!'))]) {
      for (const size of [1, 2, 3, 5, 13, 19, 64, buf.length]) expect(parse(split(buf, size))).toEqual(want);
    }
    expect(parse(split(copyOutput([]), 1))).toEqual([]);
  });

  it('keeps the data as views of the pieces it was given (no copy)', () => {
    const buf = copyOutput(rows);
    const p = new BinaryCopyParser();
    p.push(buf);
    const data = p.finish()[0]!.data;
    expect(data).toHaveLength(1);
    expect(data[0]!.buffer).toBe(buf.buffer);
  });

  it('refuses a damaged or unexpected stream', () => {
    const good = copyOutput(rows);
    const bad: Buffer[] = [
      Buffer.concat([Buffer.from('PGCOPX'), good.subarray(6)]), // signature
      good.subarray(0, good.length - 2), // no trailer
      good.subarray(0, good.length - 5), // cut inside a row
      Buffer.concat([good, Buffer.from('x')]), // bytes after the trailer
      copyOutput([]).subarray(0, 10),
      Buffer.concat([SIGNATURE, int(0, 4), int(0, 4), int(3, 2)]), // three fields
      Buffer.concat([SIGNATURE, int(0, 4), int(0, 4), int(2, 2), int(8, 4), Buffer.alloc(8), int(0, 4), int(-1, 2)]), // seq not int4
      Buffer.concat([SIGNATURE, int(0, 4), int(0, 4), int(2, 2), int(4, 4), int(0, 4), int(-1, 4), int(-1, 2)]), // NULL data
    ];
    for (const b of bad) expect(() => parse(split(b, 3)), b.toString('latin1')).toThrow(/malformed COPY data/);
  });

  it('in copy mode: rows are copied out of the pieces (which the socket reuses), into the arena while they fit', () => {
    const buf = copyOutput(rows);
    for (const arena of [undefined, Buffer.alloc(64), Buffer.alloc(8)]) {
      for (const size of [1, 7, buf.length]) {
        const p = new BinaryCopyParser({ copy: true, ...(arena !== undefined ? { arena } : {}) });
        const scratch = Buffer.alloc(size);
        for (const piece of split(buf, size)) {
          piece.copy(scratch);
          p.push(scratch.subarray(0, piece.length));
          scratch.fill(0x2a); // the next read overwrites the buffer
        }
        const got = p.finish();
        expect(got.map((r) => ({ seq: r.seq, data: Buffer.concat(r.data).toString('latin1') }))).toEqual(want);
        if (arena?.length === 64) expect(got[0]!.data[0]!.buffer).toBe(arena.buffer);
        if (arena?.length === 8) {
          // The first row (20 bytes) does not fit and gets a buffer of its own; the last (8 bytes) does.
          expect(p.allocatedOctets).toBe(rows[0]!.data.length);
          expect(got[2]!.data[0]!.buffer).toBe(arena.buffer);
        }
      }
    }
  });

  it('refuses more rows than were asked for, and a row longer than any chunk, before giving them memory', () => {
    expect(() => new BinaryCopyParser({ maxRows: 2 }).push(copyOutput(rows))).toThrow(/malformed COPY data/);
    const huge = Buffer.concat([SIGNATURE, int(0, 4), int(0, 4), int(2, 2), int(4, 4), int(0, 4), int(0x7fffffff, 4)]);
    expect(() => new BinaryCopyParser({ copy: true }).push(huge)).toThrow(/malformed COPY data/);
  });
});
