import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import { baseName, compareMaildirNames, sizeFromName, uniqueName } from './names.js';

describe('compareMaildirNames (Dovecot maildir_filename_sort_cmp)', () => {
  it('reproduces the order Dovecot gave in DOVECOT-FACTS.md', () => {
    const dovecotOrder = [
      'abc',
      '999999999.x.h',
      '1700000000.M5P1.g',
      '1700000000.M5P1.h',
      '1700000000.M7P1.h',
      '1700000000.M10P1.h',
      '1700000000.M500000P1.h',
      '1700000000.P3.h',
      '1700000000.P5.h',
      '1700000000_2.h',
      '1700000001.a',
    ];
    // Several shuffles, so the result cannot come from the input order.
    for (let seed = 1; seed <= 5; seed++) {
      const shuffled = [...dovecotOrder];
      let x = seed;
      for (let i = shuffled.length - 1; i > 0; i--) {
        x = (x * 1103515245 + 12345) % 2147483648;
        const j = x % (i + 1);
        [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
      }
      expect(shuffled.sort(compareMaildirNames)).toEqual(dovecotOrder);
    }
  });

  it('compares the leading seconds as numbers, not as text', () => {
    expect(compareMaildirNames('999999999.x', '1000000000.x')).toBeLessThan(0);
    expect(compareMaildirNames('9.a', '10.a')).toBeLessThan(0);
    expect(compareMaildirNames('10.a', '9.a')).toBeGreaterThan(0);
    // No digits at all counts as 0 seconds.
    expect(compareMaildirNames('zzz', '0.a')).toBeGreaterThan(0); // tie on 0, then bytes: 'zzz' > '.a'
    expect(compareMaildirNames('zzz', '1.a')).toBeLessThan(0);
  });

  it('compares M<usec> as numbers when both names have one', () => {
    expect(compareMaildirNames('1700000000.M5P9.h', '1700000000.M10P1.h')).toBeLessThan(0);
    expect(compareMaildirNames('1700000000.M10P1.h', '1700000000.M500000P1.h')).toBeLessThan(0);
    expect(compareMaildirNames('1700000000.M099P1.h', '1700000000.M100P1.h')).toBeLessThan(0);
    // Same usec: the rest decides, byte by byte.
    expect(compareMaildirNames('1700000000.M5P2.h', '1700000000.M5P10.h')).toBeGreaterThan(0);
    expect(compareMaildirNames('1700000000.M5P1.g', '1700000000.M5P1.h')).toBeLessThan(0);
    // Only one of them has an M part: plain byte comparison of the rest.
    expect(compareMaildirNames('1700000000.M900P1.h', '1700000000.P3.h')).toBeLessThan(0);
    expect(compareMaildirNames('1700000000.P3.h', '1700000000.M1P1.h')).toBeGreaterThan(0);
  });

  it('falls back to byte order (UTF-8), not UTF-16 code unit order', () => {
    // U+FF61 is EF BD A1 in UTF-8, U+1F600 is F0 9F 98 80: bytes put U+FF61 first,
    // while JavaScript's default string order (UTF-16 D83D < FF61) would not.
    const a = '1700000000.x\uff61';
    const b = '1700000000.x\u{1f600}';
    expect(a < b).toBe(false);
    expect(compareMaildirNames(a, b)).toBeLessThan(0);
    expect(compareMaildirNames(b, a)).toBeGreaterThan(0);
    expect(compareMaildirNames('1700000000.Z', '1700000000.a')).toBeLessThan(0);
  });

  it('is 0 only for equal names and is antisymmetric', () => {
    const names = ['a', '1.a', '1.M1P1.a', '1.M1P1.b', '2.M1.a', '2.M2.a', '10', '', '1.M1', '1.M'];
    for (const x of names) {
      expect(compareMaildirNames(x, x)).toBe(0);
      for (const y of names) {
        if (x === y) continue;
        const xy = compareMaildirNames(x, y);
        expect(xy, `${x} vs ${y}`).not.toBe(0);
        expect(Math.sign(xy) + Math.sign(compareMaildirNames(y, x)), `${x} vs ${y}`).toBe(0);
      }
    }
  });
});

describe('sizeFromName / baseName', () => {
  it('reads ,W= from the base name only', () => {
    expect(sizeFromName('1700000000.M1P1.a,S=30,W=36')).toBe(36);
    expect(sizeFromName('1700000000.M1P1.a,S=30,W=36:2,S')).toBe(36);
    expect(sizeFromName('1700000000.M1P1.a,W=0:2,')).toBe(0);
    expect(sizeFromName('1700000000.M1P1.a,W=5368709120')).toBe(5368709120);
    expect(sizeFromName('1700000000.M1P1.a,S=30')).toBeUndefined();
    expect(sizeFromName('1700000000.M1P1.a')).toBeUndefined();
    expect(sizeFromName('1700000000.M1P1.a:2,W=5')).toBeUndefined(); // in the info part: not a size
    expect(sizeFromName('1700000000.M1P1.a,W=:2,')).toBeUndefined();
    expect(sizeFromName('1700000000.M1P1.a,W=x,W=12:2,')).toBe(12); // the first ,W= with digits
    // A size that is no safe integer is no size: the file is measured instead.
    expect(sizeFromName('1700000000.M1P1.a,W=999999999999999:2,')).toBe(999999999999999);
    expect(sizeFromName('1700000000.M1P1.a,W=9999999999999999:2,')).toBeUndefined();
    expect(sizeFromName('1700000000.M1P1.a,W=99999999999999999999999:2,')).toBeUndefined();
  });

  it('agrees with the plain reading (the first ,W=<digits> before the colon) on any name', () => {
    const reference = (f: string): number | undefined => {
      const m = /,W=(\d+)/.exec(baseName(f));
      return m && m[1]!.length <= 15 ? Number(m[1]) : undefined;
    };
    fc.assert(
      fc.property(fc.array(fc.constantFrom(',', 'W', '=', '0', '7', '9', ':', 'a', ',W=', ',W=1', '99999999'), { maxLength: 14 }), (parts) => {
        const f = parts.join('');
        expect(sizeFromName(f)).toBe(reference(f));
      }),
      { numRuns: 5000 },
    );
  });

  it('baseName cuts the :2,flags info', () => {
    expect(baseName('1700000000.M1P1.a,S=3:2,RS')).toBe('1700000000.M1P1.a,S=3');
    expect(baseName('1700000000.M1P1.a')).toBe('1700000000.M1P1.a');
    expect(baseName('x:')).toBe('x');
  });
});

describe('uniqueName', () => {
  it('makes distinct Dovecot-style names without / or :, in delivery order', () => {
    const now = 1_700_000_000_123;
    const names: string[] = [];
    for (let i = 0; i < 2000; i++) names.push(uniqueName(now));
    expect(new Set(names).size).toBe(2000);
    for (const n of names) {
      expect(n).toMatch(/^1700000000\.M\d+P\d+Q\d+R[0-9a-f]{8}\./);
      expect(n).not.toMatch(/[/:]/);
      expect(Number(/\.M(\d+)P/.exec(n)![1])).toBeGreaterThanOrEqual(123000);
    }
    // Names made one after the other sort (and so get UIDs) in that order.
    for (let i = 1; i < names.length; i++) expect(compareMaildirNames(names[i - 1]!, names[i]!)).toBeLessThan(0);
  });
});
