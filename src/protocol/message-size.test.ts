import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { stuffMessage } from './dot-stuff.js';
import { CrlfSizeCounter, crlfSize } from './message-size.js';
import { edgeCorpus, expectedRetr } from '../../test/corpus/corpus.js';
import { TRICKY, allChunkings, b, canonical, chunked, chunkedArb, cut } from '../../test/corpus/chunking.js';

/** canonical() adds a final CRLF when the message does not end in LF; the size does not. */
const addedCrlf = (raw: Buffer): number => (raw.length > 0 && raw[raw.length - 1] !== 0x0a ? 2 : 0);

function countStuffedDots(canon: Buffer): number {
  let dots = 0;
  for (let i = 0; i < canon.length; i++) if (canon[i] === 0x2e && (i === 0 || canon[i - 1] === 0x0a)) dots++;
  return dots;
}

describe('crlfSize', () => {
  it('examples', () => {
    expect(crlfSize(b('a\nb\n'))).toBe(6);
    expect(crlfSize(b('a\r\nb'))).toBe(4);
    expect(crlfSize(b(''))).toBe(0);
    expect(crlfSize(b('\n'))).toBe(2);
    expect(crlfSize(b('\r'))).toBe(1);
    expect(crlfSize(b('a\rb\n'))).toBe(5);
    expect(crlfSize(b('.\n'))).toBe(3);
    expect(crlfSize(b('\r\r\n\n'))).toBe(5);
  });

  it('is independent of chunking on the tricky inputs', () => {
    for (const [input] of TRICKY) {
      const raw = b(input);
      const want = canonical(raw).length - addedCrlf(raw);
      for (const chunks of allChunkings(raw)) {
        const c = new CrlfSizeCounter();
        for (const ch of chunks) c.push(ch);
        expect(c.size).toBe(want);
      }
    }
  });

  it('property: equals the canonical length, and the encoded length minus dots, CRLF and terminator', () => {
    fc.assert(
      fc.property(chunkedArb, ({ raw, cuts }) => {
        const c = new CrlfSizeCounter();
        for (const ch of cut(raw, cuts)) c.push(ch);
        const canon = canonical(raw);
        const added = addedCrlf(raw);
        expect(c.size).toBe(canon.length - added);
        expect(c.size).toBe(stuffMessage(raw).length - countStuffedDots(canon) - added - 3);
      }),
      { numRuns: 3000 },
    );
  });

  it('agrees with the reference encoder on the corpus', () => {
    for (const m of edgeCorpus()) {
      const c = new CrlfSizeCounter();
      for (const ch of chunked(m.raw, 4093)) c.push(ch);
      const canon = canonical(m.raw);
      expect(c.size, m.name).toBe(canon.length - addedCrlf(m.raw));
      expect(c.size, m.name).toBe(
        expectedRetr(m.raw).length - countStuffedDots(canon) - addedCrlf(m.raw) - 3,
      );
    }
  });
});
