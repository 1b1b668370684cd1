import { describe, it, expect } from 'vitest';
import { extValue, formatUidlist, parseUidlist, setExt, UidlistFormatError } from './uidlist.js';

describe('parseUidlist / formatUidlist', () => {
  it('round-trips a Dovecot file byte for byte, unknown header fields and ext keys included', () => {
    const text =
      '3 V1795700988 N5 Gd5c57d11fc38086b786d000083ecc375 Xfuture Zz\n' +
      '1 W17 :1700000000.M1P1.a\n' +
      '2 W36 K0 Tabc :1700000001.M1P1.b\n' +
      '3 :1700000002.M1P1.c,S=30,W=36\n' +
      '4 P0000cafe O1 W9 Qunknown :1700000003.M1P1.d\n';
    const u = parseUidlist(text);
    expect(u.uidValidity).toBe(1795700988);
    expect(u.nextUid).toBe(5);
    expect(u.headerExtra).toEqual(['Gd5c57d11fc38086b786d000083ecc375', 'Xfuture', 'Zz']);
    expect(u.records.map((r) => r.uid)).toEqual([1, 2, 3, 4]);
    expect(u.records[1]!.ext).toEqual([
      ['W', '36'],
      ['K', '0'],
      ['T', 'abc'],
    ]);
    expect(u.records[2]!.ext).toEqual([]);
    expect(u.records[2]!.basename).toBe('1700000002.M1P1.c,S=30,W=36');
    expect(u.records[3]!.ext).toEqual([
      ['P', '0000cafe'],
      ['O', '1'],
      ['W', '9'],
      ['Q', 'unknown'],
    ]);
    expect(formatUidlist(u)).toBe(text);
    expect(parseUidlist(formatUidlist(u))).toEqual(u);
  });

  it('keeps the order of ext fields and changes only the one that is set', () => {
    const u = parseUidlist('3 V1 N2 Gx\n1 Q1 W5 K2 :a\n');
    const r = u.records[0]!;
    setExt(r, 'W', '99');
    setExt(r, 'S', '80');
    expect(extValue(r, 'W')).toBe('99');
    expect(extValue(r, 'P')).toBeUndefined();
    expect(formatUidlist(u)).toBe('3 V1 N2 Gx\n1 Q1 W99 K2 S80 :a\n');
  });

  it('next UID = max(N, highest UID + 1): records appended after the header are counted', () => {
    // The state right after Dovecot's first sync: header written with N1, records appended.
    const u = parseUidlist('3 V1795700988 N1 Gd5c57d11fc38086b786d000083ecc375\n1 :a\n2 :b\n7 :c\n');
    expect(u.nextUid).toBe(8);
    expect(formatUidlist(u).split('\n')[0]).toBe('3 V1795700988 N8 Gd5c57d11fc38086b786d000083ecc375');
    // N ahead of the records (the highest UIDs were expunged) is kept: UIDs are never reused.
    expect(parseUidlist('3 V1 N40 Gx\n1 :a\n').nextUid).toBe(40);
  });

  it('skips malformed record lines and keeps the good ones', () => {
    const text = [
      '3 V10 N3 Gx',
      '1 W5 :good-a',
      'x :bad-uid',
      '0 :zero-uid',
      '-4 :negative',
      ':no-uid',
      '5',
      '6 W7 :',
      '',
      '1e3 :exponent',
      '0x10 :hex',
      '+7 :plus',
      '2 :good-b',
      '3 old-style-name',
      '4 W9 :cut-short-last-line-without-newline',
    ].join('\n');
    const u = parseUidlist(text);
    expect(u.records.map((r) => [r.uid, r.basename])).toEqual([
      [1, 'good-a'],
      [2, 'good-b'],
      [3, 'old-style-name'],
      [4, 'cut-short-last-line-without-newline'],
    ]);
    // A malformed line does not push the next UID around either.
    expect(u.nextUid).toBe(5);
  });

  it('rejects files it cannot trust instead of guessing', () => {
    expect(() => parseUidlist('1 100 5\n1 a\n')).toThrow(UidlistFormatError); // version 1
    expect(() => parseUidlist('')).toThrow(UidlistFormatError);
    expect(() => parseUidlist('3 N5 Gx\n')).toThrow(UidlistFormatError); // no UIDVALIDITY
    expect(() => parseUidlist('3 V0 N5\n')).toThrow(UidlistFormatError);
    expect(() => parseUidlist('3 Vabc N5\n')).toThrow(UidlistFormatError);
  });

  it('a name that is no plain Maildir base name makes the whole list untrusted', () => {
    for (const name of ['../../../../victims/v2.txt', 'a/b', '..', '.hidden', 'a:2,S', 'tab\there', 'nul\0x', 'x'.repeat(256)]) {
      expect(() => parseUidlist(`3 V10 N3 Gx\n1 W5 :good\n2 W5 :${name}\n`), JSON.stringify(name)).toThrow(UidlistFormatError);
    }
    expect(() => parseUidlist('3 V10 N3 Gx\n1 ../etc/passwd\n')).toThrow(UidlistFormatError); // old style too
    expect(parseUidlist(`3 V10 N3 Gx\n1 :${'x'.repeat(255)}\n2 :1700000000.M1P1.h\u00e9te,S=5\n`).records).toHaveLength(2);
  });

  it('parses a header-only file and formats an empty list', () => {
    const u = parseUidlist('3 V7 N1 Gabc\n');
    expect(u.records).toEqual([]);
    expect(formatUidlist(u)).toBe('3 V7 N1 Gabc\n');
  });
});
