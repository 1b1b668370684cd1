import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { LineReader, type LineEvent } from './line-reader.js';
import { allChunkings, b, bytewise, chunked } from '../../test/corpus/chunking.js';

/** Events as comparable strings: `L:<latin1 text>` or `OVERLONG`. */
function show(evs: LineEvent[]): string[] {
  return evs.map((e) => (e.kind === 'line' ? `L:${e.line.toString('latin1')}` : 'OVERLONG'));
}

function feed(max: number, chunks: Buffer[]): string[] {
  const r = new LineReader(max);
  const out: LineEvent[] = [];
  for (const c of chunks) r.push(c, out);
  return show(out);
}

/**
 * Independent oracle: split at LF, drop one CR before it, flag lines whose
 * octets (line end included) exceed max; a trailing unterminated part is
 * reported as overlong only when it already reached `max` octets.
 */
function oracle(max: number, input: Buffer): string[] {
  const out: string[] = [];
  let start = 0;
  for (let i = 0; i < input.length; i++) {
    if (input[i] !== 0x0a) continue;
    let content = input.subarray(start, i);
    if (content.length + 1 > max) out.push('OVERLONG');
    else {
      if (content.length > 0 && content[content.length - 1] === 0x0d) content = content.subarray(0, -1);
      out.push(`L:${content.toString('latin1')}`);
    }
    start = i + 1;
  }
  if (input.length - start >= max) out.push('OVERLONG');
  return out;
}

describe('LineReader', () => {
  it('splits CRLF and bare LF lines, keeping CR only when it is not right before LF', () => {
    expect(feed(100, [b('STAT\r\nLIST 1\nUIDL\r\r\n\r\n\nX\rY\n')])).toEqual(['L:STAT', 'L:LIST 1', 'L:UIDL\r', 'L:', 'L:', 'L:X\rY']);
  });

  it('holds an unterminated tail until its line end arrives', () => {
    const r = new LineReader(100);
    const out: LineEvent[] = [];
    r.push(b('USER al'), out);
    expect(out).toEqual([]);
    expect(r.buffered).toBe(7);
    r.push(b('ice\r'), out);
    expect(out).toEqual([]);
    r.push(b('\nPASS'), out);
    expect(show(out)).toEqual(['L:USER alice']);
    expect(r.buffered).toBe(4);
  });

  it('gives the same events for every 2-way, 3-way and bytewise split', () => {
    const input = b('USER alice\r\nPASS a  b c\r\n\r\nLIST\nTOP 1 0\r\r\nQUIT\r\n');
    const want = feed(64, [input]);
    expect(want).toEqual(['L:USER alice', 'L:PASS a  b c', 'L:', 'L:LIST', 'L:TOP 1 0\r', 'L:QUIT']);
    for (const chunks of allChunkings(input)) expect(feed(64, chunks)).toEqual(want);
  });

  it('counts the line end in the limit: exactly max octets pass, max+1 is overlong', () => {
    // max 10: 8 octets + CRLF = 10 → fine; 9 + CRLF = 11 → overlong; 9 + LF = 10 → fine.
    expect(feed(10, [b('12345678\r\n')])).toEqual(['L:12345678']);
    expect(feed(10, [b('123456789\r\n')])).toEqual(['OVERLONG']);
    expect(feed(10, [b('123456789\n')])).toEqual(['L:123456789']);
    expect(feed(10, [b('1234567890\n')])).toEqual(['OVERLONG']);
    for (const s of ['12345678\r\n', '123456789\r\n', '123456789\n', '1234567890\n', '1234567890123\r\nok\r\n']) {
      const input = b(s);
      const want = oracle(10, input);
      for (const chunks of allChunkings(input)) expect(feed(10, chunks), JSON.stringify(s)).toEqual(want);
    }
  });

  it('reports an overlong line once, drops it up to its LF, then reads the next line normally', () => {
    const input = Buffer.concat([b('x'.repeat(100)), b('\r\nNOOP\r\n'), b('y'.repeat(50)), b('\nSTAT\r\n')]);
    const want = ['OVERLONG', 'L:NOOP', 'OVERLONG', 'L:STAT'];
    expect(feed(16, [input])).toEqual(want);
    expect(feed(16, bytewise(input))).toEqual(want);
    for (const size of [1, 2, 3, 7, 15, 16, 17, 33]) expect(feed(16, chunked(input, size)), `chunks of ${size}`).toEqual(want);
  });

  it('never buffers more than max octets of a line that does not end', () => {
    const r = new LineReader(1024);
    const out: LineEvent[] = [];
    for (let i = 0; i < 1000; i++) {
      r.push(Buffer.alloc(100, 0x41), out);
      expect(r.buffered).toBeLessThan(1024);
    }
    expect(show(out)).toEqual(['OVERLONG']);
    r.push(b('tail\r\nCAPA\r\n'), out);
    expect(show(out)).toEqual(['OVERLONG', 'L:CAPA']);
    expect(r.buffered).toBe(0);
  });

  it('copies a held partial line: reusing the chunk buffer later does not corrupt it', () => {
    const r = new LineReader(100);
    const out: LineEvent[] = [];
    const chunk = b('USER bob');
    r.push(chunk, out);
    chunk.fill(0x5a);
    r.push(b('\r\n'), out);
    expect(show(out)).toEqual(['L:USER bob']);
  });

  it('reset() forgets a partial line and the discard mode', () => {
    const r = new LineReader(8);
    const out: LineEvent[] = [];
    r.push(b('CAP'), out);
    r.reset();
    r.push(b('A\r\n'), out);
    expect(show(out)).toEqual(['L:A']);
    out.length = 0;
    r.push(b('0123456789'), out); // overlong, now discarding
    r.reset();
    r.push(b('NOOP\r\n'), out);
    expect(show(out)).toEqual(['OVERLONG', 'L:NOOP']);
  });

  it('a lowered maxLength applies to the next line', () => {
    const r = new LineReader(100);
    const out: LineEvent[] = [];
    r.push(b('0123456789\r\n'), out);
    r.maxLength = 8;
    expect(r.maxLength).toBe(8);
    r.push(b('0123456789\r\n'), out);
    expect(show(out)).toEqual(['L:0123456789', 'OVERLONG']);
  });

  it('matches the oracle for arbitrary bytes and arbitrary chunking', () => {
    const bytes = fc.array(fc.constantFrom(0x0a, 0x0d, 0x41, 0x20, 0x00, 0xff), { maxLength: 80 }).map((a) => Buffer.from(a));
    fc.assert(
      fc.property(bytes, fc.array(fc.integer({ min: 0, max: 80 }), { maxLength: 6 }), fc.integer({ min: 1, max: 20 }), (input, cuts, max) => {
        const sorted = [...new Set(cuts.map((c) => Math.min(c, input.length)))].sort((x, y) => x - y);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const c of sorted) {
          chunks.push(input.subarray(prev, c));
          prev = c;
        }
        chunks.push(input.subarray(prev));
        expect(feed(max, chunks)).toEqual(oracle(max, input));
      }),
      { numRuns: 500 },
    );
  });
});
