import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DotStuffer, stuffMessage } from './dot-stuff.js';
import { DotUnstuffer, createDotUnstuffTransform, unstuffMessage } from './dot-unstuff.js';
import { TRICKY, allChunkings, b, canonical, chunkedArb, cut, show } from '../../test/corpus/chunking.js';

function decodeChunks(chunks: Buffer[]): { data: Buffer; done: boolean; rest: Buffer } {
  const d = new DotUnstuffer();
  const data: Buffer[] = [];
  const rest: Buffer[] = [];
  let done = false;
  for (const c of chunks) {
    const r = d.push(c);
    if (done) expect(r.data).toEqual([]);
    data.push(...r.data);
    if (r.rest !== undefined) {
      expect(r.done).toBe(true);
      expect(r.rest.length).toBeGreaterThan(0);
      rest.push(r.rest);
    }
    done = r.done;
  }
  expect(d.done).toBe(done);
  return { data: Buffer.concat(data), done, rest: Buffer.concat(rest) };
}

const describeChunks = (chunks: Buffer[]): string => JSON.stringify(chunks.map((c) => c.toString('latin1')));

describe('DotUnstuffer on encoder output, split everywhere', () => {
  for (const [input, encoded] of TRICKY) {
    it(`decodes the encoding of ${JSON.stringify(input)}`, () => {
      const want = canonical(b(input));
      for (const trailer of ['', '+OK next\r\n', '.\r\n', '\n', '.']) {
        const wire = Buffer.concat([b(encoded), b(trailer)]);
        for (const chunks of allChunkings(wire)) {
          const r = decodeChunks(chunks);
          if (!r.done || !r.data.equals(want) || r.rest.toString('latin1') !== trailer) {
            throw new Error(`${describeChunks(chunks)} -> ${show(r.data)} done=${r.done} rest=${show(r.rest)}`);
          }
        }
      }
    });
  }
});

describe('DotUnstuffer details', () => {
  it('gives rest exactly when bytes follow the terminator in the same chunk', () => {
    const r = new DotUnstuffer().push(b('a\r\n.\r\n+OK 2\r\n'));
    expect(r.done).toBe(true);
    expect(r.rest?.toString()).toBe('+OK 2\r\n');
    const r2 = new DotUnstuffer().push(b('a\r\n.\r\n'));
    expect(r2.done).toBe(true);
    expect('rest' in r2).toBe(false);
  });

  it('hands every later chunk back as rest', () => {
    const d = new DotUnstuffer();
    expect(d.push(b('.\r\n')).done).toBe(true);
    expect(d.push(b('+OK')).rest?.toString()).toBe('+OK');
    expect(d.push(Buffer.alloc(0))).toEqual({ data: [], done: true });
  });

  it('an incomplete reply is not done', () => {
    for (const s of ['', 'a', 'a\r\n', 'a\r\n.', 'a\r\n.\r', '.', '.\r', 'a\r\n..\r\n', 'x.\r\n']) {
      for (const chunks of allChunkings(b(s))) expect(decodeChunks(chunks).done).toBe(false);
    }
  });

  it('is tolerant of bare-LF servers', () => {
    expect(decodeChunks([b('..x\n.\n')]).data.toString()).toBe('.x\n');
    expect(decodeChunks([b('.\n')]).data.toString()).toBe('');
    for (const chunks of allChunkings(b('a\n..\n.y\n.\nREST'))) {
      const r = decodeChunks(chunks);
      expect(r.done).toBe(true);
      expect(r.data.toString()).toBe('a\n.\ny\n');
      expect(r.rest.toString()).toBe('REST');
    }
  });

  it('keeps the CR of a non-terminator ".\\r" line', () => {
    for (const chunks of allChunkings(b('.\rx\r\n.\r\n'))) {
      const r = decodeChunks(chunks);
      expect(show(r.data)).toBe(show(b('\rx\r\n')));
      expect(r.done).toBe(true);
    }
  });

  it('does not treat a dot after a bare CR as a line start', () => {
    expect(show(decodeChunks([b('a\r.\r\n.\r\n')]).data)).toBe(show(b('a\r.\r\n')));
  });

  it('passes undotted content through as subarrays of the input', () => {
    const wire = b('line one\r\nline two\r\n');
    const r = new DotUnstuffer().push(wire);
    expect(r.data).toHaveLength(1);
    expect(r.data[0]!.buffer).toBe(wire.buffer);
  });

  it('unstuffMessage requires the terminator', () => {
    expect(unstuffMessage(b('..a\r\n.\r\nignored')).toString()).toBe('.a\r\n');
    expect(() => unstuffMessage(b('a\r\n'))).toThrow(/terminator/);
  });
});

describe('properties (fast-check)', () => {
  it('decode(encode(x)) === canonical(x) for any chunking on both sides', () => {
    fc.assert(
      fc.property(chunkedArb, fc.array(fc.nat(), { maxLength: 8 }), messageTail(), ({ raw, cuts }, decCuts, tail) => {
        const s = new DotStuffer();
        const pieces: Buffer[] = [];
        for (const c of cut(raw, cuts)) pieces.push(...s.push(c));
        pieces.push(...s.end());
        const enc = Buffer.concat(pieces);
        const wire = Buffer.concat([enc, tail]);
        const dc = decCuts.map((c) => c % (wire.length + 1)).sort((x, y) => x - y);
        const r = decodeChunks(cut(wire, dc));
        expect(r.done).toBe(true);
        expect(r.rest.equals(tail)).toBe(true);
        expect(r.data.equals(canonical(raw))).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });

  function messageTail(): fc.Arbitrary<Buffer> {
    return fc.oneof(
      fc.constant(Buffer.alloc(0)),
      fc.uint8Array({ minLength: 1, maxLength: 20 }).map((a) => Buffer.from(a)),
    );
  }
});

describe('createDotUnstuffTransform', () => {
  it('outputs the content, ends at the terminator and reports the rest', async () => {
    const rests: Buffer[] = [];
    const t = createDotUnstuffTransform({ onRest: (r) => rests.push(r) });
    let doneEvents = 0;
    t.on('done', () => doneEvents++);
    const out: Buffer[] = [];
    await pipeline(
      Readable.from([b('..a\r\nb\r'), b('\n.'), b('\r\n+OK'), b(' next\r\n')]),
      t,
      new Writable({
        write(c: Buffer, _e, cb) {
          out.push(c);
          cb();
        },
      }),
    );
    expect(Buffer.concat(out).toString()).toBe('.a\r\nb\r\n');
    expect(Buffer.concat(rests).toString()).toBe('+OK next\r\n');
    expect(doneEvents).toBe(1);
  });

  it('fails if the input ends before the terminator', async () => {
    const sink = new Writable({
      write(_c, _e, cb) {
        cb();
      },
    });
    await expect(pipeline(Readable.from([b('a\r\n')]), createDotUnstuffTransform(), sink)).rejects.toThrow(
      /before the end/,
    );
  });

  it('round-trips a stuffed message', () => {
    const raw = b('.\n..x\r\nplain\rcr\n.');
    expect(unstuffMessage(stuffMessage(raw)).equals(canonical(raw))).toBe(true);
  });
});
