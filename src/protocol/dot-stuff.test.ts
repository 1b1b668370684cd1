import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DotStuffer, createDotStuffTransform, stuffMessage, type DotStuffOptions } from './dot-stuff.js';
import { unstuffMessage } from './dot-unstuff.js';
import { native } from './native.js';
import { edgeCorpus, expectedRetr, expectedTop } from '../../test/corpus/corpus.js';
import { TRICKY, allChunkings, b, canonical, chunked, chunkedArb, cut, messageArb, show } from '../../test/corpus/chunking.js';

function encodeChunks(chunks: Buffer[], opts?: DotStuffOptions): Buffer {
  const s = new DotStuffer(opts);
  const out: Buffer[] = [];
  for (const c of chunks) out.push(...s.push(c));
  out.push(...s.end());
  return Buffer.concat(out);
}

describe('native encoder (native/dotstuff.c)', () => {
  it.runIf(process.env['POPLAR_REQUIRE_NATIVE'] === '1')('is built and loaded (CI sets POPLAR_REQUIRE_NATIVE=1)', () => {
    expect(native).toBeDefined();
  });

  it.runIf(native !== undefined)('gives exactly the bytes of the JavaScript encoder, for any input and chunking', () => {
    fc.assert(
      fc.property(chunkedArb, ({ raw, cuts }) => {
        const chunks = cut(raw, cuts);
        expect(show(encodeChunksJoined(chunks))).toBe(show(encodeChunksJoined(chunks, { native: false })));
      }),
      { numRuns: 3000 },
    );
    for (const [input] of TRICKY) {
      for (const chunks of allChunkings(b(input))) expect(show(encodeChunksJoined(chunks))).toBe(show(encodeChunksJoined(chunks, { native: false })));
    }
  });

  it.runIf(native !== undefined)('a 5 MiB message in 256 KiB chunks: the same bytes both ways', () => {
    let s = '';
    for (let i = 0; s.length < 5 * 1024 * 1024; i++) s += i % 7 === 0 ? `.dot ${i}\n` : i % 11 === 0 ? `crlf ${i}\r\n` : i % 13 === 0 ? `bare\rcr ${i}\n` : `line ${i} ${'x'.repeat(i % 90)}\n`;
    const raw = b(s);
    const chunks: Buffer[] = [];
    for (let o = 0; o < raw.length; o += 256 * 1024) chunks.push(raw.subarray(o, o + 256 * 1024));
    expect(encodeChunksJoined(chunks).equals(encodeChunksJoined(chunks, { native: false }))).toBe(true);
    expect(encodeChunksJoined(chunks).equals(stuffMessage(raw))).toBe(true);
  });
});

/** Line-shaped messages long enough for the 16-byte vector loop: runs of text broken by LF, CRLF, bare CR and dots. */
const longMessageArb = fc
  .array(
    fc.record({
      dot: fc.boolean(),
      text: fc.array(fc.constantFrom(0x61, 0x2e, 0x0d, 0x20, 0xff, 0x00), { maxLength: 70 }),
      end: fc.constantFrom('\n', '\r\n', '\r', '', '\n.'),
    }),
    { maxLength: 40 },
  )
  .map((lines) => Buffer.concat(lines.map((l) => Buffer.concat([l.dot ? b('.') : Buffer.alloc(0), Buffer.from(l.text), b(l.end)]))));

/** The whole RETR body through stuffInto with a `dst` of `cap` bytes and the given input cuts. */
function encodeInto(raw: Buffer, cuts: number[], cap: number): Buffer {
  const nat = native!;
  const state = Uint8Array.of(1, 0);
  const consumed = new Float64Array(1);
  const dst = Buffer.alloc(cap);
  const out: Buffer[] = [];
  for (const chunk of cut(raw, cuts)) {
    let off = 0;
    while (off < chunk.length) {
      const n = nat.stuffInto!(chunk.subarray(off), state, dst, consumed);
      expect(consumed[0]).toBeGreaterThan(0);
      out.push(Buffer.from(dst.subarray(0, n)));
      off += consumed[0]!;
    }
  }
  out.push(b(state[0] === 1 ? '.\r\n' : '\r\n.\r\n'));
  return Buffer.concat(out);
}

describe('native stuffInto / readStuffedInto (the RETR file path)', () => {
  const messages = fc.oneof(longMessageArb, messageArb.map((m) => Buffer.from(m)));

  it.runIf(native !== undefined)('gives the bytes of stuffMessage for any input, any input cuts and any output size', () => {
    fc.assert(
      fc.property(
        messages.chain((raw) =>
          fc.record({
            raw: fc.constant(raw),
            cuts: fc.array(fc.integer({ min: 0, max: raw.length }), { maxLength: 6 }).map((c) => [...c].sort((x, y) => x - y)),
            cap: fc.integer({ min: 16, max: 300 }),
          }),
        ),
        ({ raw, cuts, cap }) => {
          expect(show(encodeInto(raw, cuts, cap))).toBe(show(stuffMessage(raw, { native: false })));
        },
      ),
      { numRuns: 3000 },
    );
    for (const [input, encoded] of TRICKY) {
      for (const cap of [16, 17, 18, 64]) expect(show(encodeInto(b(input), [], cap))).toBe(show(b(encoded)));
    }
  });

  it.runIf(native !== undefined)('never writes past the bytes it reports, even when dst is nearly full', () => {
    const raw = b('.x\n'.repeat(50) + 'a'.repeat(100) + '\n.\n');
    for (let cap = 16; cap < 80; cap++) {
      const dst = Buffer.alloc(cap + 32, 0x7e);
      const n = native!.stuffInto!(raw, Uint8Array.of(1, 0), dst.subarray(0, cap), new Float64Array(1));
      expect(n).toBeLessThanOrEqual(cap);
      expect(dst.subarray(cap).every((x) => x === 0x7e)).toBe(true);
    }
  });

  it.runIf(native?.readStuffedInto !== undefined)('reads a cached file in pieces to the same bytes, and reports the end of the file', async () => {
    const { mkdtempSync, writeFileSync, openSync, closeSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const path = await import('node:path');
    const dir = mkdtempSync(path.join(tmpdir(), 'poplar-into-'));
    try {
      fc.assert(
        fc.property(messages, fc.integer({ min: 16, max: 500 }), (raw, cap) => {
          const file = path.join(dir, 'm');
          writeFileSync(file, raw);
          const fd = openSync(file, 'r');
          try {
            const state = Uint8Array.of(1, 0);
            const consumed = new Float64Array(1);
            const dst = Buffer.alloc(cap);
            const out: Buffer[] = [];
            let pos = 0;
            for (;;) {
              const n = native!.readStuffedInto!(fd, pos, dst, state, consumed);
              expect(n).toBeGreaterThanOrEqual(0); // just written: in the page cache
              if (consumed[0] === 0) break;
              out.push(Buffer.from(dst.subarray(0, n)));
              pos += consumed[0]!;
            }
            expect(pos).toBe(raw.length);
            out.push(b(state[0] === 1 ? '.\r\n' : '\r\n.\r\n'));
            expect(show(Buffer.concat(out))).toBe(show(stuffMessage(raw, { native: false })));
          } finally {
            closeSync(fd);
          }
        }),
        { numRuns: 300 },
      );
      // A descriptor that cannot be read: -1, so that the caller's own read reports the error.
      expect(native!.readStuffedInto!(987654, 0, Buffer.alloc(64), Uint8Array.of(1, 0), new Float64Array(1))).toBe(-1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(native !== undefined)('rejects a dst smaller than 16 bytes and arguments of the wrong type', () => {
    expect(() => native!.stuffInto!(b('abc'), Uint8Array.of(1, 0), Buffer.alloc(8), new Float64Array(1))).toThrow(/16 bytes/);
    expect(() => native!.stuffInto!(b('abc'), new Uint8Array(1), Buffer.alloc(64), new Float64Array(1))).toThrow(/state/);
    expect(() => native!.stuffInto!(b('abc'), Uint8Array.of(1, 0), Buffer.alloc(64), new Float32Array(1) as unknown as Float64Array)).toThrow(/consumed/);
  });
});

function encodeChunksJoined(chunks: Buffer[], opts?: DotStuffOptions): Buffer {
  const s = new DotStuffer(opts);
  const out: Buffer[] = [];
  for (const c of chunks) {
    const j = s.pushJoined(c);
    if (j !== null) out.push(j);
  }
  out.push(...s.end());
  return Buffer.concat(out);
}

describe('DotStuffer: tricky inputs at every split point', () => {
  for (const [input, encoded] of TRICKY) {
    it(`encodes ${JSON.stringify(input)}`, () => {
      const raw = b(input);
      const want = b(encoded);
      expect(show(stuffMessage(raw))).toBe(show(want));
      expect(show(expectedRetr(raw))).toBe(show(want));
      for (const chunks of allChunkings(raw)) {
        const got = encodeChunks(chunks);
        if (!got.equals(want)) {
          throw new Error(`chunks ${JSON.stringify(chunks.map((c) => c.toString('latin1')))} -> ${show(got)}`);
        }
        expect(encodeChunksJoined(chunks).equals(want)).toBe(true);
      }
    });
  }

  it('never emits anything after end()', () => {
    const s = new DotStuffer();
    s.push(b('a'));
    expect(Buffer.concat(s.end()).toString()).toBe('\r\n.\r\n');
    expect(s.end()).toEqual([]);
    expect(s.push(b('more'))).toEqual([]);
  });

  it('emits zero-copy subarrays when nothing needs changing', () => {
    const chunk = b('line one\r\nline two\r\n');
    const s = new DotStuffer();
    const out = s.push(chunk);
    expect(out).toHaveLength(1);
    expect(out[0]!.buffer).toBe(chunk.buffer);
    const j = new DotStuffer().pushJoined(chunk);
    expect(j!.buffer).toBe(chunk.buffer);
  });

  it('rejects a bad bodyLines', () => {
    expect(() => new DotStuffer({ bodyLines: -1 })).toThrow(RangeError);
    expect(() => new DotStuffer({ bodyLines: 1.5 })).toThrow(RangeError);
  });
});

describe('properties (fast-check)', () => {
  it('chunking never changes the output, and it matches the reference', () => {
    fc.assert(
      fc.property(chunkedArb, ({ raw, cuts }) => {
        const enc = encodeChunks(cut(raw, cuts));
        expect(enc.equals(stuffMessage(raw))).toBe(true);
        expect(encodeChunksJoined(cut(raw, cuts)).equals(enc)).toBe(true);
        expect(enc.equals(expectedRetr(raw))).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });

  it('the terminator sequence appears only at the very end', () => {
    fc.assert(
      fc.property(chunkedArb, ({ raw, cuts }) => {
        const enc = encodeChunks(cut(raw, cuts));
        if (raw.length === 0) {
          expect(enc.toString()).toBe('.\r\n');
          return;
        }
        expect(enc.subarray(0, 3).equals(b('.\r\n'))).toBe(false);
        expect(enc.indexOf(b('\r\n.\r\n'))).toBe(enc.length - 5);
      }),
      { numRuns: 3000 },
    );
  });

  it('TOP agrees with the reference for any n and chunking', () => {
    fc.assert(
      fc.property(chunkedArb, fc.nat({ max: 6 }), ({ raw, cuts }, n) => {
        const s = new DotStuffer({ bodyLines: n });
        const out: Buffer[] = [];
        for (const ch of cut(raw, cuts)) out.push(...s.push(ch));
        out.push(...s.end());
        expect(show(Buffer.concat(out))).toBe(show(expectedTop(raw, n)));
      }),
      { numRuns: 3000 },
    );
  });
});

describe('TOP', () => {
  const top = (input: string, n: number): string =>
    new Set(allChunkings(b(input)).map((c) => encodeChunks(c, { bodyLines: n }).toString('latin1'))).size === 1
      ? encodeChunks([b(input)], { bodyLines: n }).toString('latin1')
      : 'chunking-dependent!';

  it('LF-only message', () => {
    const m = 'A: 1\nB: 2\n\nl1\n.l2\nl3\n';
    expect(top(m, 0)).toBe('A: 1\r\nB: 2\r\n\r\n.\r\n');
    expect(top(m, 1)).toBe('A: 1\r\nB: 2\r\n\r\nl1\r\n.\r\n');
    expect(top(m, 2)).toBe('A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n');
    expect(top(m, 10)).toBe('A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n');
  });

  it('CRLF-only message', () => {
    const m = 'A: 1\r\n\r\n.\r\nl2\r\nl3';
    expect(top(m, 0)).toBe('A: 1\r\n\r\n.\r\n');
    expect(top(m, 1)).toBe('A: 1\r\n\r\n..\r\n.\r\n');
    expect(top(m, 3)).toBe('A: 1\r\n\r\n..\r\nl2\r\nl3\r\n.\r\n');
    expect(top(m, 99)).toBe('A: 1\r\n\r\n..\r\nl2\r\nl3\r\n.\r\n');
  });

  it('no blank line: everything is header', () => {
    expect(top('A: 1\nB: 2\n', 0)).toBe('A: 1\r\nB: 2\r\n.\r\n');
    expect(top('A: 1\r\nB: 2', 0)).toBe('A: 1\r\nB: 2\r\n.\r\n');
  });

  it('a line holding only a bare CR is not the blank line', () => {
    expect(top('A: 1\n\rx\n\nbody\n', 0)).toBe('A: 1\r\n\rx\r\n\r\n.\r\n');
    expect(top('A: 1\n\r\n', 0)).toBe('A: 1\r\n\r\n.\r\n');
  });

  it('empty message and empty body', () => {
    expect(top('', 0)).toBe('.\r\n');
    expect(top('A: 1\n\n', 5)).toBe('A: 1\r\n\r\n.\r\n');
  });

  it('becomes done early for a big body with n = 0 and ignores the rest', () => {
    const s = new DotStuffer({ bodyLines: 0 });
    const head = s.push(b('Subject: big\nX: y\n\nfirst body line\n'));
    expect(s.done).toBe(true);
    expect(Buffer.concat(head).toString()).toBe('Subject: big\r\nX: y\r\n\r\n');
    expect(s.push(Buffer.alloc(1 << 20, 0x61))).toEqual([]);
    expect(Buffer.concat(s.end()).toString()).toBe('.\r\n');
  });
});

describe('createDotStuffTransform', () => {
  async function collect(chunks: Buffer[], opts?: DotStuffOptions): Promise<Buffer> {
    const out: Buffer[] = [];
    await pipeline(
      Readable.from(chunks),
      createDotStuffTransform(opts),
      new Writable({
        write(c: Buffer, _e, cb) {
          out.push(c);
          cb();
        },
      }),
    );
    return Buffer.concat(out);
  }

  it('encodes a chunked stream', async () => {
    const got = await collect([b('.a\n'), b('b\r'), b('\n.'), b('\r')]);
    expect(show(got)).toBe(show(b('..a\r\nb\r\n..\r\r\n.\r\n')));
    expect((await collect([])).toString()).toBe('.\r\n');
  });

  it('TOP: stops reading the source early', async () => {
    let reads = 0;
    const total = 10_000;
    const source = new Readable({
      read() {
        reads++;
        if (reads === 1) this.push(b('Subject: x\n\nbody 1\nbody 2\n'));
        else if (reads < total) this.push(Buffer.alloc(64 * 1024, 0x0a));
        else this.push(null);
      },
    });
    const out: Buffer[] = [];
    const t = createDotStuffTransform({
      bodyLines: 1,
      onDone: () => {
        source.unpipe(t);
        source.destroy();
      },
    });
    let doneEvents = 0;
    t.on('done', () => doneEvents++);
    t.on('data', (c: Buffer) => out.push(c));
    const ended = new Promise<void>((resolve) => t.on('end', resolve));
    source.pipe(t);
    await ended;
    expect(Buffer.concat(out).toString()).toBe('Subject: x\r\n\r\nbody 1\r\n.\r\n');
    expect(doneEvents).toBe(1);
    expect(reads).toBeLessThan(50);
    expect(source.destroyed).toBe(true);
  });

  it('TOP inside pipeline(): completes normally, discarding input after the limit', async () => {
    const got = await collect([b('A: 1\n\nx\ny\n'), b('z\n'), b('w\n')], { bodyLines: 1 });
    expect(got.toString()).toBe('A: 1\r\n\r\nx\r\n.\r\n');
  });
});

describe('corpus: reference and DotStuffer agree', () => {
  const corpus = edgeCorpus();

  it('is deterministic and covers the required cases', () => {
    const again = edgeCorpus();
    expect(again.map((m) => m.name)).toEqual(corpus.map((m) => m.name));
    for (let i = 0; i < corpus.length; i++) expect(again[i]!.raw.equals(corpus[i]!.raw)).toBe(true);
    const big = corpus.find((m) => m.raw.length === 5 * 1024 * 1024);
    expect(big).toBeDefined();
    expect(corpus.some((m) => m.raw.length === 0)).toBe(true);
  });

  for (const m of corpus) {
    it(`RETR/TOP: ${m.name}`, () => {
      const want = expectedRetr(m.raw);
      expect(stuffMessage(m.raw).equals(want)).toBe(true);
      // Odd-sized chunks so boundaries fall everywhere, including mid-CRLF.
      for (const size of [1, 2, 3, 7, 4096, 65_537]) {
        if (size < 8 && m.raw.length > 20_000) continue;
        expect(encodeChunksJoined(chunked(m.raw, size)).equals(want)).toBe(true);
      }
      for (const n of [0, 1, 3, 1000]) {
        expect(stuffMessage(m.raw, { bodyLines: n }).equals(expectedTop(m.raw, n))).toBe(true);
      }
      expect(unstuffMessage(want).equals(canonical(m.raw))).toBe(true);
    });
  }
});
