import { execFileSync } from 'node:child_process';
import { describe, it, expect, vi } from 'vitest';
import * as argon2 from 'argon2';
vi.mock('argon2', async (importOriginal) => {
  const actual = await importOriginal<typeof import('argon2')>();
  return { ...actual, hash: vi.fn(actual.hash) };
});

import { ARGON2_DEFAULTS, HASH_SCHEMES, KNOWN_SCHEMES, dummyVerify, hashPassword, inspectSecret, isSlowSecret, verifyPassword } from './schemes.js';
import { lacks } from '../../test/helpers/peers.js';

// Vectors for the password "pencil". Generated with `doveadm pw -s SCHEME -p pencil`
// (Dovecot 2.3), `openssl passwd -6|-5 -salt ...` and python3 crypt (libxcrypt).
const VECTORS: ReadonlyArray<readonly [string, string]> = [
  ['openssl -6', '{SHA512-CRYPT}$6$saltsalt$rD9fW1BwIrjB90WCgCTdIQc3phTBhf04I6Iw/XlgKD9E9aEbzqGZipjiFxGo/4wWXDA6jV6/vZO.kKdDSfUJb0'],
  ['openssl -5', '{SHA256-CRYPT}$5$saltsalt$hl9BvcGsj7AkON13nbqeQHDgRpHyFxt7WDzLoS.OCQ/'],
  ['openssl -5 rounds', '{SHA256-CRYPT}$5$rounds=10000$saltsalt$Y7BfW67OWINh/EKKLkk.g4FzdQeJk1UWMF90bY0SVb0'],
  ['libxcrypt $6$ rounds', '{SHA512-CRYPT}$6$rounds=10000$saltstring$00JQfnDwMhH2VaMVdAP2GuCZQyjtwnzHHr0Hcbeb8nT.h3/Mz4cJdNfV5c0KvZC3EaQ0NMz9tJYZg.KEY.0/Y1'],
  ['libxcrypt $2y$', '{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZu'],
  ['libxcrypt $2b$ as CRYPT', '{CRYPT}$2b$05$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZu'],
  ['doveadm SHA512-CRYPT', '{SHA512-CRYPT}$6$UsHl3Q/98tg4tNqP$XdTOJZD0NV7ze1PvA2OxwpgIe.KW2G.0e4EwWPR8ezhCNxJ032sttNpMikEQZoLg1TzyJ8I74dOeXw8SFJ0/60'],
  ['doveadm SHA256-CRYPT', '{SHA256-CRYPT}$5$y4opv8g0PzO8bTp5$rHmjnvpnLyAFCJGQtdOw4Nba9LKbrniwmnfYqtzo2X3'],
  ['doveadm BLF-CRYPT', '{BLF-CRYPT}$2y$05$xSgZOvKa.ffWaCBDebEWregWDrOTQhwJDRaBH2msVeI3VE40HvsJK'],
  ['doveadm ARGON2ID', '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$cAARHdlJolExzTjusXp/Eg$2Ogpspl7WsKKkVrBa6go+t+MfLLE7IFVXBl5IF1eKB8'],
  ['doveadm ARGON2I', '{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$FXQHxUv4hA2W3cvOkShfKA$6H8cNdRcVdQM2z1VoEJCtc0rv3PU4zT/7KmfZQ5lQPs'],
  ['doveadm SHA', '{SHA}0vxRJJChUDZGC1SJQBQ51tpUB/o='],
  ['doveadm SSHA', '{SSHA}a0i4aPpQu65lJMYpfibfLX6ZmOBuNdYJ'],
  ['doveadm SHA256', '{SHA256}E4CWaPtDY4Zwb2fcsFLtWEoEuhaowCoX1m00ww/O2iE='],
  ['doveadm SSHA256', '{SSHA256}2vBKj1AL/n9v7CmS0O0ru7BvRt+4Arn9uDeiwnVNL3618vUg'],
  ['doveadm SHA512', '{SHA512}Gd8Bqrgo+NUINrp1cJcTrtInM1344YZDkYXAbJF6Kn03cat24wfPo7a4nvGmaC1mgd3xGISHDl3hPnk/uVXu6w=='],
  ['doveadm SSHA512', '{SSHA512}sUDFVJiz4CURp4w7ISCKc6qtGeYvbpJ/vjRlJB7oIa5Rt4qyT/9Jq1/xi93S3W5mYhH4GycvUnZR15RGsBYLd5hzVIM='],
  ['doveadm PLAIN-MD5', '{PLAIN-MD5}a8f6830bce790a8a67fc2e84e12093ba'],
  ['doveadm LDAP-MD5', '{LDAP-MD5}qPaDC855Copn/C6E4SCTug=='],
  ['doveadm SMD5', '{SMD5}jvGH267mAYumYzN8VZ9F/ZvK2ZQ='],
  ['doveadm SHA256.HEX', '{SHA256.HEX}13809668fb436386706f67dcb052ed584a04ba16a8c02a17d66d34c30fceda21'],
  ['SHA256 hex without suffix', '{SHA256}13809668fb436386706f67dcb052ed584a04ba16a8c02a17d66d34c30fceda21'],
  ['PLAIN', '{PLAIN}pencil'],
  ['CLEAR', '{CLEAR}pencil'],
  ['CLEARTEXT', '{CLEARTEXT}pencil'],
  ['PLAIN.B64', '{PLAIN.B64}cGVuY2ls'],
  ['lower-case scheme', '{sha512-crypt}$6$saltsalt$rD9fW1BwIrjB90WCgCTdIQc3phTBhf04I6Iw/XlgKD9E9aEbzqGZipjiFxGo/4wWXDA6jV6/vZO.kKdDSfUJb0'],
  ['bare $6$ (CRYPT default)', '$6$saltsalt$rD9fW1BwIrjB90WCgCTdIQc3phTBhf04I6Iw/XlgKD9E9aEbzqGZipjiFxGo/4wWXDA6jV6/vZO.kKdDSfUJb0'],
  ['bare $5$ (CRYPT default)', '$5$saltsalt$hl9BvcGsj7AkON13nbqeQHDgRpHyFxt7WDzLoS.OCQ/'],
  ['bare $2y$ (CRYPT default)', '$2y$05$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZu'],
];

describe('verifyPassword with known vectors', () => {
  it.each(VECTORS)('%s: accepts the right password, rejects a wrong one', async (_name, stored) => {
    expect(inspectSecret(stored).error).toBeUndefined();
    expect(await verifyPassword('pencil', stored)).toBe(true);
    expect(await verifyPassword('pencil2', stored)).toBe(false);
    expect(await verifyPassword('', stored)).toBe(false);
  });

  it('rejects a one-character change in the stored digest', async () => {
    expect(await verifyPassword('pencil', '{SHA256-CRYPT}$5$saltsalt$hl9BvcGsj7AkON13nbqeQHDgRpHyFxt7WDzLoS.OCQ0')).toBe(false);
    expect(await verifyPassword('pencil', '{PLAIN}pencil ')).toBe(false);
    expect(await verifyPassword('pencil', '{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZv')).toBe(false);
  });
});

describe('malformed or unsupported stored values', () => {
  const GARBAGE = [
    '',
    'pencil',
    '{}pencil',
    '{NOPE}pencil',
    '{SHA512-CRYPT}',
    '{SHA512-CRYPT}$6$salt',
    '{SHA512-CRYPT}$6$salt$tooshort',
    '{SHA512-CRYPT}$6$sa lt$rD9fW1BwIrjB90WCgCTdIQc3phTBhf04I6Iw/XlgKD9E9aEbzqGZipjiFxGo/4wWXDA6jV6/vZO.kKdDSfUJb0',
    '$1$saltsalt$abcdefghijklmnopqrstuv',
    'ab01234567890',
    '{BLF-CRYPT}$2y$05$short',
    '{BLF-CRYPT}$2y$31$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZu',
    '{BLF-CRYPT}$2x$05$abcdefghijklmnopqrstuu680Yiaj5hFUaJTH/rTAcbA2PQEGfiZu',
    '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$',
    '{ARGON2ID}$argon2id$v=19$m=65536,t=3$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{ARGON2ID}$argon2id$v=19$m=999999999,t=3,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{ARGON2ID}$argon2id$v=18$m=65536,t=3,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{ARGON2ID}$argon2d$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c29t$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG',
    '{SHA256}not*base64',
    '{SHA256}cGVuY2ls',
    '{SSHA256}E4CWaPtDY4Zwb2fcsFLtWEoEuhaowCoX1m00ww/O2iE=',
    '{SHA256.ROT13}abc',
    '{PLAIN.HEX}zz',
    '{SHA512-CRYPT.HEX}abcd',
  ];
  it.each(GARBAGE)('%j → false and an explanation, no throw', async (stored) => {
    await expect(verifyPassword('pencil', stored)).resolves.toBe(false);
    const info = inspectSecret(stored);
    expect(typeof info.error).toBe('string');
  });

  it('does not throw when the underlying library throws', async () => {
    const spy = vi.mocked(argon2.hash);
    spy.mockRejectedValueOnce(new Error('boom'));
    const stored = VECTORS.find(([n]) => n === 'doveadm ARGON2ID')?.[1] ?? '';
    await expect(verifyPassword('pencil', stored)).resolves.toBe(false);
    expect(spy).toHaveBeenCalled();
  });
});

describe('hashPassword', () => {
  it('defaults to a Dovecot-style ARGON2ID PHC string (m,t,p order) that round-trips', async () => {
    const h = await hashPassword('correct horse');
    expect(h).toMatch(
      new RegExp(
        `^\\{ARGON2ID\\}\\$argon2id\\$v=19\\$m=${ARGON2_DEFAULTS.memoryCost},t=${ARGON2_DEFAULTS.timeCost},p=${ARGON2_DEFAULTS.parallelism}\\$[A-Za-z0-9+/]{22}\\$[A-Za-z0-9+/]{43}$`,
      ),
    );
    expect(await verifyPassword('correct horse', h)).toBe(true);
    expect(await verifyPassword('correct horse ', h)).toBe(false);
    // the argon2 library agrees
    expect(await argon2.verify(h.slice('{ARGON2ID}'.length), 'correct horse')).toBe(true);
  });

  it('honours custom argon2 parameters', async () => {
    const h = await hashPassword('x', 'ARGON2ID', { argon2: { memoryCost: 8192, timeCost: 1 } });
    expect(h).toContain('$m=8192,t=1,p=1$');
    expect(await verifyPassword('x', h)).toBe(true);
  });

  it.each(HASH_SCHEMES)('%s round-trips, including non-ASCII passwords', async (scheme) => {
    for (const pw of ['pencil', 'pässwörd ✓', 'a:b c']) {
      const h = await hashPassword(pw, scheme, { bcryptCost: 4 });
      expect(h.startsWith(`{${scheme}`)).toBe(true);
      expect(h).not.toMatch(/[\n\r\0]/);
      expect(await verifyPassword(pw, h)).toBe(true);
      expect(await verifyPassword(`${pw}x`, h)).toBe(false);
    }
  });

  it('produces distinct salts', async () => {
    const a = await hashPassword('pencil', 'SHA512-CRYPT');
    const b = await hashPassword('pencil', 'SHA512-CRYPT');
    expect(a).not.toBe(b);
    expect(a).toMatch(/^\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$/);
  });

  it('writes SHA-crypt rounds only when not the default', async () => {
    expect(await hashPassword('p', 'SHA256-CRYPT', { rounds: 5000 })).toMatch(/^\{SHA256-CRYPT\}\$5\$[^$]{16}\$/);
    const h = await hashPassword('p', 'SHA256-CRYPT', { rounds: 2000 });
    expect(h).toMatch(/^\{SHA256-CRYPT\}\$5\$rounds=2000\$/);
    expect(await verifyPassword('p', h)).toBe(true);
    await expect(hashPassword('p', 'SHA256-CRYPT', { rounds: 10 })).rejects.toThrow(RangeError);
  });

  it('writes BLF-CRYPT as $2y$ and refuses passwords bcrypt would truncate', async () => {
    expect(await hashPassword('pencil', 'BLF-CRYPT', { bcryptCost: 4 })).toMatch(/^\{BLF-CRYPT\}\$2y\$04\$/);
    await expect(hashPassword('x'.repeat(73), 'BLF-CRYPT', { bcryptCost: 4 })).rejects.toThrow(/72/);
  });

  it('stores PLAIN passwords that passwd-file cannot hold as PLAIN.B64', async () => {
    expect(await hashPassword('pencil', 'PLAIN')).toBe('{PLAIN}pencil');
    expect(await hashPassword('pen:cil', 'PLAIN')).toBe('{PLAIN.B64}cGVuOmNpbA==');
  });

  it('KNOWN_SCHEMES lists every scheme hashPassword can produce', () => {
    for (const s of HASH_SCHEMES) expect(KNOWN_SCHEMES).toContain(s);
  });
});

describe('isSlowSecret', () => {
  it('is true for argon2 and bcrypt (under any prefix) at their usual cost, false for cheap parameters and the cheap schemes', async () => {
    expect(isSlowSecret(await hashPassword('x'))).toBe(true);
    const bcrypt = await hashPassword('x', 'BLF-CRYPT');
    expect(isSlowSecret(bcrypt)).toBe(true);
    expect(isSlowSecret(bcrypt.replace('{BLF-CRYPT}', '{CRYPT}'))).toBe(true);
    expect(isSlowSecret(bcrypt.replace('{BLF-CRYPT}', ''))).toBe(true);
    expect(isSlowSecret(bcrypt.replace(/^\{BLF-CRYPT\}\$2(.)\$\d\d/, '{BLF-CRYPT}$2$1$04'))).toBe(false);
    expect(isSlowSecret(await hashPassword('x', 'ARGON2ID', { argon2: { memoryCost: 1024, timeCost: 1, parallelism: 1 } }))).toBe(false);
    expect(isSlowSecret(await hashPassword('x', 'SHA512-CRYPT'))).toBe(false);
    expect(isSlowSecret('{PLAIN}x')).toBe(false);
    expect(isSlowSecret('{SHA256.HEX}2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881')).toBe(false);
    expect(isSlowSecret('')).toBe(false);
  });
});

describe('dummyVerify', () => {
  it('resolves without throwing and runs an argon2 derivation', async () => {
    const spy = vi.mocked(argon2.hash);
    spy.mockClear();
    await expect(dummyVerify('whatever')).resolves.toBeUndefined();
    expect(spy).toHaveBeenCalledTimes(1);
    const opts = spy.mock.calls[0]?.[1];
    expect(opts).toMatchObject({
      memoryCost: ARGON2_DEFAULTS.memoryCost,
      timeCost: ARGON2_DEFAULTS.timeCost,
      parallelism: ARGON2_DEFAULTS.parallelism,
      type: argon2.argon2id,
    });
  });
});

describe.skipIf(lacks('doveadm'))('cross-check with doveadm (when installed)', () => {
  it.each(HASH_SCHEMES)('doveadm pw -t accepts our %s hashes', async (scheme) => {
    const h = await hashPassword('pen:cil ✓', scheme, { bcryptCost: 4 });
    const out = execFileSync('doveadm', ['pw', '-t', h, '-p', 'pen:cil ✓'], { encoding: 'utf8' });
    expect(out).toContain('(verified)');
  });
});
