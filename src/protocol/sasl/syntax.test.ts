import { describe, expect, it } from 'vitest';
import { saslPrep } from '../../secrets/saslprep.js';
import { decodeSaslname, encodeSaslname, parseBearerAuth, parseGs2Header, parseKvPairs } from './syntax.js';

describe('SASLprep (RFC 4013 §3 examples)', () => {
  it.each([
    ['I\u00ADX', 'IX'],
    ['user', 'user'],
    ['USER', 'USER'],
    ['\u00AA', 'a'],
    ['\u2168', 'IX'],
    ['a\u00A0b', 'a b'],
  ])('%j → %j', (input, out) => {
    expect(saslPrep(input)).toBe(out);
  });
  it('prohibited output and bidi violations are refused', () => {
    expect(saslPrep('\u0007')).toBeUndefined();
    expect(saslPrep('\u0627\u0031')).toBeUndefined();
    expect(saslPrep('a\u0000b')).toBeUndefined();
  });
});

describe('saslname', () => {
  it('round-trips , and =', () => {
    expect(encodeSaslname('a,b=c')).toBe('a=2Cb=3Dc');
    expect(decodeSaslname('a=2Cb=3Dc')).toBe('a,b=c');
    expect(decodeSaslname('=3D2C')).toBe('=2C');
  });
  it('refuses stray =, raw commas, NUL and empty names', () => {
    for (const bad of ['a=b', 'a=2c', 'a=', 'a,b', '', 'a\0b']) expect(decodeSaslname(bad), bad).toBeUndefined();
  });
});

describe('gs2 header', () => {
  it('parses the three flags and the authzid', () => {
    expect(parseGs2Header('n,,rest')).toEqual({ flag: 'n', header: 'n,,', rest: 'rest' });
    expect(parseGs2Header('y,a=bob,rest')).toEqual({ flag: 'y', authzid: 'bob', header: 'y,a=bob,', rest: 'rest' });
    expect(parseGs2Header('p=tls-exporter,a=a=2Cb,x')).toEqual({ flag: 'p', cbName: 'tls-exporter', authzid: 'a,b', header: 'p=tls-exporter,a=a=2Cb,', rest: 'x' });
  });
  it('refuses malformed headers', () => {
    for (const bad of ['n', 'n,', 'N,,', 'p=,,', 'p=a b,,', 'n,b=x,', 'n,a=,', 'n,a=x=y,', 'yy,,']) expect(parseGs2Header(bad), bad).toBeUndefined();
  });
});

describe('kv pairs and bearer', () => {
  it('parses and refuses', () => {
    expect(parseKvPairs('a=1\x01b=x y\x01\x01')).toEqual(new Map([['a', '1'], ['b', 'x y']]));
    expect(parseKvPairs('\x01\x01')).toEqual(new Map());
    for (const bad of ['a=1\x01', 'a=1', '=1\x01\x01', 'a\x01\x01', 'a=1\x01a=2\x01\x01', 'a=\n\x01\x01']) expect(parseKvPairs(bad), bad).toBeUndefined();
  });
  it('bearer auth values', () => {
    expect(parseBearerAuth('Bearer abc.def-_~+/==')).toBe('abc.def-_~+/==');
    expect(parseBearerAuth('BEARER x')).toBe('x');
    for (const bad of ['Bearer', 'Bearer ', 'Bearer a b', 'Basic x', 'Bearer  x', 'Bearer a=b']) expect(parseBearerAuth(bad), bad).toBeUndefined();
  });
});
