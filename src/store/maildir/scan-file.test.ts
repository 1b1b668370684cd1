import { describe, expect, it } from 'vitest';
import { parseScanFile } from './scan-file.js';

const KEY = '11:1.5:2.5|12:3:4|13:99:5:6';
const file = (lines: string[], count = lines.length, key = KEY): string => `poplar-scan 2 ${count} ${key}\n${lines.map((l) => `${l}\n`).join('')}`;
const plain = (r: ReturnType<typeof parseScanFile>): unknown =>
  Array.isArray(r) ? r.map((e) => ({ uid: e.uid, size: e.size, order: e.order, uidl: e.uidl, filename: e.filename, basename: e.basename })) : r;

describe('poplar-scan.cache, read back', () => {
  it('gives every field of every line, in the order of the file', () => {
    const r = parseScanFile(file(['7 1200 - 000000076b13bc93 1700000000.M1P1.h:2,S', '3 0 2 P-kept-uidl 1700000001.M2P1.h', '12 5 0 x é.M3P1.h:2,']), KEY);
    expect(plain(r)).toEqual([
      { uid: 7, size: 1200, order: undefined, uidl: '000000076b13bc93', filename: '1700000000.M1P1.h:2,S', basename: '1700000000.M1P1.h' },
      { uid: 3, size: 0, order: 2, uidl: 'P-kept-uidl', filename: '1700000001.M2P1.h', basename: '1700000001.M2P1.h' },
      { uid: 12, size: 5, order: 0, uidl: 'x', filename: 'é.M3P1.h:2,', basename: 'é.M3P1.h' },
    ]);
    expect(parseScanFile(file([]), KEY)).toEqual([]);
  });

  it('is not used under another key or another version', () => {
    expect(parseScanFile(file(['1 1 - a b']), `${KEY}x`)).toBeNull();
    expect(parseScanFile(file(['1 1 - a b']).replace('poplar-scan 2', 'poplar-scan 3'), KEY)).toBeNull();
    expect(parseScanFile('poplar-scan 2 1', KEY)).toBeNull();
  });

  it('refuses every line that is not exactly what this server writes', () => {
    const bad = [
      '0 1 - a b', // UID 0
      '01 1 - a b', // leading zero
      '1234567890123456 1 - a b', // 16 digits
      '1 1234567890123456 - a b',
      '1 -1 - a b',
      '1 1 -- a b',
      '1 1 1.5 a b',
      '1  1 - a b', // two spaces
      '1 1 - a b ', // trailing space
      '1 1 - a b c', // a space in the name
      '1 1 -  b',
      `1 1 - ${'u'.repeat(71)} b`, // uidl longer than RFC 1939 allows
      '1 1 - a\x7fb c',
      '1 1 - a ../etc/passwd',
      '1 1 - a x/y',
      '1 1 - a .hidden',
      '1 1 - a ..',
      '1 1 - a :2,S', // no base name
      '1 1 - a b\tc',
      '1 1 - a b\rc',
      '1 1 - a b\x85c',
      `1 1 - a ${'n'.repeat(256)}`,
      `1 1 - a ${'é'.repeat(128)}`, // 128 characters, 256 octets
      '1 1 - a',
      '',
    ];
    for (const line of bad) {
      const r = parseScanFile(file([line]), KEY);
      expect(r, JSON.stringify(line)).toHaveProperty('untrusted');
    }
    expect(Array.isArray(parseScanFile(file([`1 1 - a ${'é'.repeat(127)}`]), KEY))).toBe(true);
  });

  it('refuses a message twice: the same UID, the same base name (whatever the flags), the same name', () => {
    expect(parseScanFile(file(['1 1 - a m1', '1 1 - b m2']), KEY)).toHaveProperty('untrusted');
    expect(parseScanFile(file(['1 1 - a m1:2,', '2 1 - b m1:2,S']), KEY)).toHaveProperty('untrusted');
    expect(parseScanFile(file(['1 1 - a m1', '2 1 - b m1']), KEY)).toHaveProperty('untrusted');
    // Base names that share a prefix or a hash bucket are different messages.
    const many = Array.from({ length: 5000 }, (_, i) => `${i + 1} 1 - u${i} m${i}`);
    expect(parseScanFile(file([...many, '5001 1 - x m5000x']), KEY)).toEqual(expect.any(Array));
    expect(parseScanFile(file([...many, '5001 1 - x m4999:2,']), KEY)).toHaveProperty('untrusted');
  });

  it('refuses a count that does not match the lines, and a count no file could hold', () => {
    expect(parseScanFile(file(['1 1 - a b', '2 1 - a c'], 3), KEY)).toHaveProperty('untrusted');
    expect(parseScanFile(file(['1 1 - a b', '2 1 - a c'], 1), KEY)).toHaveProperty('untrusted');
    expect(parseScanFile(file(['1 1 - a b'], 999_999_999_999_999), KEY)).toHaveProperty('untrusted');
    expect(parseScanFile(file(['1 1 - a b']).slice(0, -1), KEY)).toHaveProperty('untrusted'); // torn last line
    expect(parseScanFile(file(['1 1 - a b'], 1).replace(' 1 ', ' x '), KEY)).toHaveProperty('untrusted');
  });
});
