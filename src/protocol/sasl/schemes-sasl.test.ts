/** The password schemes the SASL mechanisms added to ../../auth/schemes.ts. */
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { HASH_SCHEMES, KNOWN_SCHEMES, hashPassword, inspectSecret, plaintextSecret, verifyPassword } from '../../auth/schemes.js';
import { lacks } from '../../../test/helpers/peers.js';

const DOVECOT = {
  cram: '{CRAM-MD5}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b', // tanstaaftanstaaf
  scram256: '{SCRAM-SHA-256}4096,9dVGD1GbVU9HrgNSKKdU0w==,k+Hz/ml5Wv2SdF3brKZ3w9LBWLLQCeCi3Q1DTu13pXg=,qQIa620M30ij5gUntCXz22/AyOAWMLQFaWj/hJMwSYo=', // pencil
  scram1: '{SCRAM-SHA-1}4096,3fd54XLmY5DOLdKKVmEvgA==,6NxPABuYT+KKCW37FicNcJJxQYQ=,jEWNcOEkdpwGTwRhfLeO0ThZzAo=', // pencil
};

describe('CRAM-MD5 / SCRAM schemes', () => {
  it('are known and hashable', () => {
    for (const s of ['CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256'] as const) {
      expect(HASH_SCHEMES).toContain(s);
      expect(KNOWN_SCHEMES).toContain(s);
    }
    expect(KNOWN_SCHEMES).toContain('HMAC-MD5');
  });

  it('verify Dovecot-generated secrets', async () => {
    expect(await verifyPassword('tanstaaftanstaaf', DOVECOT.cram)).toBe(true);
    expect(await verifyPassword('tanstaaftanstaaF', DOVECOT.cram)).toBe(false);
    expect(await verifyPassword('tanstaaftanstaaf', DOVECOT.cram.replace('CRAM-MD5', 'HMAC-MD5').toUpperCase().replace('{HMAC-MD5}', '{hmac-md5}'))).toBe(true);
    expect(await verifyPassword('pencil', DOVECOT.scram256)).toBe(true);
    expect(await verifyPassword('pencil', DOVECOT.scram1)).toBe(true);
    expect(await verifyPassword('pencil2', DOVECOT.scram256)).toBe(false);
    expect(inspectSecret(DOVECOT.scram256)).toEqual({ scheme: 'SCRAM-SHA-256', error: undefined });
  });

  it('CRAM-MD5 hashing is deterministic and matches doveadm', async () => {
    expect(await hashPassword('tanstaaftanstaaf', 'CRAM-MD5')).toBe(DOVECOT.cram);
  });

  it('SCRAM hashing: Dovecot format, random 16-byte salt, iterations option with a 4096 floor', async () => {
    const h = await hashPassword('pencil', 'SCRAM-SHA-256');
    expect(h).toMatch(/^\{SCRAM-SHA-256\}4096,[A-Za-z0-9+/]{22}==,[A-Za-z0-9+/]{43}=,[A-Za-z0-9+/]{43}=$/);
    expect(await hashPassword('pencil', 'SCRAM-SHA-256')).not.toBe(h);
    expect(await hashPassword('pencil', 'SCRAM-SHA-1', { scramIterations: 10000 })).toMatch(/^\{SCRAM-SHA-1\}10000,[^,]+,[A-Za-z0-9+/]{27}=,[A-Za-z0-9+/]{27}=$/);
    await expect(hashPassword('pencil', 'SCRAM-SHA-1', { scramIterations: 4095 })).rejects.toThrow(RangeError);
    await expect(hashPassword('pencil', 'SCRAM-SHA-1', { scramIterations: 5000.5 })).rejects.toThrow(RangeError);
  });

  it('SCRAM stores the SASLprep form; both spellings verify', async () => {
    const h = await hashPassword('pen\u00ADcil', 'SCRAM-SHA-256');
    expect(await verifyPassword('pencil', h)).toBe(true);
    expect(await verifyPassword('pen\u00ADcil', h)).toBe(true);
    expect(await verifyPassword('pen cil', h)).toBe(false);
  });

  it('malformed values are reported, not thrown', async () => {
    for (const bad of [
      '{CRAM-MD5}abc',
      '{CRAM-MD5.HEX}d06d4e1b26fccaa4b0b61801132340a354b21152711fb604ca3e035e7015116b',
      '{SCRAM-SHA-256}4096,salt',
      '{SCRAM-SHA-256}1000,9dVGD1GbVU9HrgNSKKdU0w==,k+Hz/ml5Wv2SdF3brKZ3w9LBWLLQCeCi3Q1DTu13pXg=,qQIa620M30ij5gUntCXz22/AyOAWMLQFaWj/hJMwSYo=',
      '{SCRAM-SHA-1}4096,3fd54XLmY5DOLdKKVmEvgA==,k+Hz/ml5Wv2SdF3brKZ3w9LBWLLQCeCi3Q1DTu13pXg=,qQIa620M30ij5gUntCXz22/AyOAWMLQFaWj/hJMwSYo=',
      '{SCRAM-SHA-256}04096,9dVGD1GbVU9HrgNSKKdU0w==,k+Hz/ml5Wv2SdF3brKZ3w9LBWLLQCeCi3Q1DTu13pXg=,qQIa620M30ij5gUntCXz22/AyOAWMLQFaWj/hJMwSYo=',
    ]) {
      expect(inspectSecret(bad).error, bad).toBeDefined();
      expect(await verifyPassword('pencil', bad)).toBe(false);
    }
  });
});

describe('plaintextSecret', () => {
  it.each([
    ['{PLAIN}pencil', 'pencil'],
    ['{plain}pen:cil', 'pen:cil'],
    ['{CLEAR}pencil', 'pencil'],
    ['{CLEARTEXT}pencil', 'pencil'],
    ['{PLAIN.B64}cGVuOmNpbA==', 'pen:cil'],
    ['{CLEAR.BASE64}cGVuY2ls', 'pencil'],
    ['{PLAIN.HEX}70656e63696c', 'pencil'],
    ['{PLAIN}', ''],
  ])('%s → %s', (stored, plain) => {
    expect(plaintextSecret(stored)).toBe(plain);
  });
  it.each(['pencil', '{SSHA}abc', '{PLAIN-MD5}abc', '{PLAIN.HEX}zz', '{PLAIN.B64}!!', '{PLAIN.FOO}x', '{PLAIN.B64.HEX}x', '$6$a$b', DOVECOT.cram])(
    '%s → undefined',
    (stored) => {
      expect(plaintextSecret(stored)).toBeUndefined();
    },
  );
});

describe.skipIf(lacks('doveadm'))('doveadm pw -t accepts our CRAM-MD5 and SCRAM secrets', () => {
  it.each(['CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256'] as const)('%s', async (scheme) => {
    for (const pw of ['pencil', 'pässwörd ✓', 'x'.repeat(100)]) {
      const h = await hashPassword(pw, scheme);
      expect(execFileSync('doveadm', ['pw', '-t', h, '-p', pw], { encoding: 'utf8' })).toContain('(verified)');
    }
  });
});
