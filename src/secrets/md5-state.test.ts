import { createHash, createHmac, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  MD5_IV,
  formatCramMd5Secret,
  hmacMd5FromStates,
  hmacMd5States,
  md5Compress,
  md5Resume,
  parseCramMd5Secret,
} from './md5-state.js';

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');

describe('md5-state', () => {
  it('md5Resume from the IV is MD5 for every length 0..300 (all padding cases)', () => {
    for (let n = 0; n <= 300; n++) {
      const data = randomBytes(n);
      expect(md5Resume(MD5_IV, 0, data).toString('hex'), `length ${n}`).toBe(md5(data));
    }
  });

  it('agrees with node:crypto on random inputs up to 10 kB', () => {
    for (let i = 0; i < 200; i++) {
      const data = randomBytes(Math.floor(Math.random() * 10_000));
      expect(md5Resume(MD5_IV, 0, data).toString('hex')).toBe(md5(data));
    }
  });

  it('RFC 1321 test suite', () => {
    const v: [string, string][] = [
      ['', 'd41d8cd98f00b204e9800998ecf8427e'],
      ['a', '0cc175b9c0f1b6a831c399e269772661'],
      ['abc', '900150983cd24fb0d6963f7d28e17f72'],
      ['message digest', 'f96b697d7cb7938d525a2f31aaf161d0'],
      ['12345678901234567890123456789012345678901234567890123456789012345678901234567890', '57edf4a22be3c955ac49da2e2107b67a'],
    ];
    for (const [m, h] of v) expect(md5Resume(MD5_IV, 0, Buffer.from(m)).toString('hex')).toBe(h);
  });

  it('resuming after absorbed blocks equals hashing the whole input', () => {
    for (let i = 0; i < 50; i++) {
      const head = randomBytes(64 * (1 + (i % 3)));
      const tail = randomBytes(i * 7);
      const st = Uint32Array.from(MD5_IV);
      for (let o = 0; o < head.length; o += 64) md5Compress(st, head, o);
      expect(md5Resume(st, head.length, tail).toString('hex')).toBe(md5(Buffer.concat([head, tail])));
    }
  });

  it('HMAC-MD5 from the states equals node:crypto HMAC, for short, 64-byte and long keys', () => {
    for (const klen of [0, 1, 16, 63, 64, 65, 200]) {
      for (let i = 0; i < 10; i++) {
        const key = randomBytes(klen);
        const msg = randomBytes(i * 13);
        expect(hmacMd5FromStates(hmacMd5States(key), msg).toString('hex')).toBe(createHmac('md5', key).update(msg).digest('hex'));
      }
    }
  });

  it("formats Dovecot's {CRAM-MD5} value (doveadm pw -s CRAM-MD5 -p tanstaaftanstaaf)", () => {
    const states = hmacMd5States(Buffer.from('tanstaaftanstaaf'));
    expect(formatCramMd5Secret(states)).toBe('d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b');
  });

  it('parses what it formats, in either case, and refuses malformed values', () => {
    const s = formatCramMd5Secret(hmacMd5States(Buffer.from('pencil')));
    const p = parseCramMd5Secret(s.toUpperCase());
    expect(p).toBeDefined();
    expect(formatCramMd5Secret(p ?? hmacMd5States(Buffer.alloc(0)))).toBe(s);
    for (const bad of ['', s.slice(1), `${s}0`, `${s.slice(0, 63)}g`]) expect(parseCramMd5Secret(bad)).toBeUndefined();
  });

  it('refuses a state that is not four words or a length that is not whole blocks', () => {
    expect(() => md5Resume([1, 2, 3], 0, Buffer.alloc(0))).toThrow(RangeError);
    expect(() => md5Resume(MD5_IV, 3, Buffer.alloc(0))).toThrow(RangeError);
  });
});
