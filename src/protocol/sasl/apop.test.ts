import { describe, expect, it } from 'vitest';
import { apopCapable, apopDigest, apopTimestamp, verifyApop } from './apop.js';

const TS = '<1896.697170952@dbc.mtview.ca.us>';
const DIGEST = 'c4c9334bac560ecc979e58001b3e22fb';

describe('APOP', () => {
  it('RFC 1939 §7 vector', () => {
    expect(apopDigest(TS, 'tanstaaf')).toBe(DIGEST);
  });

  it('verifies against {PLAIN}-family secrets, either hex case', () => {
    expect(verifyApop(TS, DIGEST, '{PLAIN}tanstaaf')).toBe(true);
    expect(verifyApop(TS, DIGEST.toUpperCase(), '{CLEARTEXT}tanstaaf')).toBe(true);
    expect(verifyApop(TS, DIGEST, `{PLAIN.B64}${Buffer.from('tanstaaf').toString('base64')}`)).toBe(true);
  });

  it('refuses wrong digests, unknown users, hashed secrets and malformed digests', () => {
    expect(verifyApop(TS, DIGEST.replace(/b$/, 'c'), '{PLAIN}tanstaaf')).toBe(false);
    expect(verifyApop('<other@host>', DIGEST, '{PLAIN}tanstaaf')).toBe(false);
    expect(verifyApop(TS, DIGEST, undefined)).toBe(false);
    expect(verifyApop(TS, DIGEST, '{SHA512-CRYPT}$6$x$y')).toBe(false);
    expect(verifyApop(TS, `${DIGEST}0`, '{PLAIN}tanstaaf')).toBe(false);
    expect(verifyApop(TS, '', '{PLAIN}tanstaaf')).toBe(false);
    expect(apopCapable('{PLAIN}x')).toBe(true);
    expect(apopCapable('{SSHA}x')).toBe(false);
    expect(apopCapable(undefined)).toBe(false);
  });

  it('timestamps are fresh msg-ids', () => {
    const a = apopTimestamp('pop.example.org');
    expect(a).toMatch(new RegExp(`^<${process.pid}\\.[0-9a-f]{16}\\.\\d+@pop\\.example\\.org>$`));
    expect(apopTimestamp('pop.example.org')).not.toBe(a);
    expect(apopTimestamp('a b\r\n')).toMatch(/@ab>$/);
  });
});
