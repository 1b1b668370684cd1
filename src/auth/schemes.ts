/**
 * Dovecot-compatible password schemes.
 *
 * A stored secret looks like `{SCHEME}data`. A secret without a `{...}`
 * prefix is treated as CRYPT (Dovecot's default for passwd-file), which we
 * can verify when it is one of the crypt(3) formats `$6$` (SHA-512),
 * `$5$` (SHA-256) or `$2a$`/`$2b$`/`$2y$` (bcrypt).
 *
 * Scheme names are case-insensitive. The digest schemes (SHA, SSHA, SHA256,
 * SSHA256, SHA512, SSHA512, PLAIN-MD5, LDAP-MD5, SMD5) accept Dovecot's
 * `.HEX` / `.B64` encoding suffixes, and like Dovecot an unsalted base64
 * scheme also accepts a hex string of exactly the digest's hex length.
 *
 * All comparisons of derived values go through crypto.timingSafeEqual.
 * verifyPassword() never throws: a stored value that cannot be used yields
 * `false`; inspectSecret() tells the caller why, so it can log once.
 */
import { createHash, randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import * as argon2 from 'argon2';
import bcrypt from 'bcryptjs';
import { encrypt as unixEncrypt } from 'unixcrypt';
import { formatCramMd5Secret, hmacMd5States, parseCramMd5Secret } from '../secrets/md5-state.js';
import { saslPrep } from '../secrets/saslprep.js';
import {
  SCRAM_DEFAULT_ITERATIONS,
  SCRAM_MAX_ITERATIONS,
  SCRAM_MIN_ITERATIONS,
  deriveScramSecret,
  formatScramSecret,
  parseScramSecret,
  type ScramHash,
} from '../secrets/scram-keys.js';

/** Schemes that verifyPassword() understands (canonical names). */
export const KNOWN_SCHEMES: readonly string[] = Object.freeze([
  'PLAIN',
  'CLEAR',
  'CLEARTEXT',
  'CRYPT',
  'SHA512-CRYPT',
  'SHA256-CRYPT',
  'BLF-CRYPT',
  'ARGON2ID',
  'ARGON2I',
  'SHA',
  'SSHA',
  'SHA256',
  'SSHA256',
  'SHA512',
  'SSHA512',
  'PLAIN-MD5',
  'LDAP-MD5',
  'SMD5',
  'CRAM-MD5',
  'HMAC-MD5',
  'SCRAM-SHA-1',
  'SCRAM-SHA-256',
]);

import type { HashScheme } from './scheme-names.js';
export { HASH_SCHEMES, type HashScheme } from './scheme-names.js';

export interface Argon2Params {
  /** KiB */
  readonly memoryCost: number;
  readonly timeCost: number;
  readonly parallelism: number;
}

/**
 * Default Argon2id cost for new hashes (and for dummyVerify).
 * m=19456 KiB, t=2, p=1 is the OWASP minimum recommendation; Dovecot's
 * m=65536,t=3 costs ~4x as much (about 400 ms on the development box).
 * p=1 because Dovecot verifies through libsodium, which only supports p=1.
 */
export const ARGON2_DEFAULTS: Argon2Params = Object.freeze({ memoryCost: 19456, timeCost: 2, parallelism: 1 });

export interface HashOptions {
  readonly argon2?: Partial<Argon2Params>;
  /** rounds for SHA512-CRYPT / SHA256-CRYPT (default 5000, i.e. not written) */
  readonly rounds?: number;
  /** cost for BLF-CRYPT (default 10) */
  readonly bcryptCost?: number;
  /** iterations for SCRAM-SHA-1 / SCRAM-SHA-256 (default 4096, at least 4096) */
  readonly scramIterations?: number;
}

// ---------------------------------------------------------------------------
// helpers

const CRYPT_ALPHABET = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const ARGON2_HASH_LEN = 32;
const ARGON2_SALT_LEN = 16;
/** Refuse to spend more than this on a stored argon2 hash (KiB; 1 GiB). */
const ARGON2_MAX_MEMORY = 1 << 20;
/** bcryptjs is pure JS; cost 20 is already ~minutes. */
const BCRYPT_MAX_COST = 20;

/** Equal-length constant-time compare; different lengths → false (length is not secret). */
function safeEqual(a: Buffer, b: Buffer): boolean {
  if (a.length !== b.length) {
    timingSafeEqual(a, a);
    return false;
  }
  return timingSafeEqual(a, b);
}

function b64NoPad(buf: Buffer): string {
  return buf.toString('base64').replace(/=+$/, '');
}

const B64_RE = /^[A-Za-z0-9+/]*={0,2}$/;
const B64_NOPAD_RE = /^[A-Za-z0-9+/]+$/;
const HEX_RE = /^(?:[0-9a-fA-F]{2})*$/;

function decodeBase64Strict(s: string): Buffer | undefined {
  if (!B64_RE.test(s)) return undefined;
  const body = s.replace(/=+$/, '');
  if (body.length % 4 === 1) return undefined;
  if (s.includes('=') && s.length % 4 !== 0) return undefined;
  return Buffer.from(body, 'base64');
}

function decodeHex(s: string): Buffer | undefined {
  return HEX_RE.test(s) ? Buffer.from(s, 'hex') : undefined;
}

type Verifier = (password: string) => Promise<boolean>;
type Parsed = { readonly scheme: string; readonly verify: Verifier } | { readonly scheme: string | undefined; readonly error: string };

// ---------------------------------------------------------------------------
// crypt(3) family

const SHA_CRYPT_RE = /^\$([56])\$(?:rounds=(\d{1,9})\$)?([^$:\n]{0,16})\$([./0-9A-Za-z]+)$/;
const BCRYPT_RE = /^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$/;

function parseCrypt(scheme: string, value: string): Parsed {
  const sha = SHA_CRYPT_RE.exec(value);
  if (sha) {
    const [, id, rounds, salt, digest] = sha;
    const expectedLen = id === '6' ? 86 : 43;
    if (digest?.length !== expectedLen) return { scheme, error: 'malformed SHA-crypt hash (digest length)' };
    if (!/^[./0-9A-Za-z]*$/.test(salt ?? '')) return { scheme, error: 'SHA-crypt salt uses characters this implementation does not support' };
    const setting = `$${id}$${rounds !== undefined ? `rounds=${rounds}$` : ''}${salt}`;
    const expected = Buffer.from(value, 'latin1');
    return {
      scheme,
      verify: async (password) => safeEqual(Buffer.from(unixEncrypt(password, setting), 'latin1'), expected),
    };
  }
  if (value.startsWith('$5$') || value.startsWith('$6$')) return { scheme, error: 'malformed SHA-crypt hash' };

  if (BCRYPT_RE.test(value)) {
    const cost = Number(value.slice(4, 6));
    if (cost < 4 || cost > BCRYPT_MAX_COST) return { scheme, error: `bcrypt cost ${cost} out of supported range 4..${BCRYPT_MAX_COST}` };
    const setting = value.slice(0, 29);
    const expected = Buffer.from(value, 'latin1');
    return {
      scheme,
      verify: async (password) => safeEqual(Buffer.from(await bcrypt.hash(password, setting), 'latin1'), expected),
    };
  }
  if (value.startsWith('$2')) return { scheme, error: 'malformed bcrypt hash' };
  if (value.startsWith('$argon2')) return { scheme, error: 'argon2 hash needs an {ARGON2ID} or {ARGON2I} prefix' };
  return { scheme, error: 'unsupported crypt(3) format (only $5$, $6$ and $2a$/$2b$/$2y$ are supported)' };
}

// ---------------------------------------------------------------------------
// argon2 (PHC string)

interface Argon2Phc {
  readonly type: 'argon2i' | 'argon2id';
  readonly version: number;
  readonly m: number;
  readonly t: number;
  readonly p: number;
  readonly salt: Buffer;
  readonly hash: Buffer;
}

const PHC_RE = /^\$(argon2id|argon2i)(?:\$v=(\d+))?\$([a-z]=\d+(?:,[a-z]=\d+)*)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$/;

function parseArgon2(value: string): Argon2Phc | string {
  const mt = PHC_RE.exec(value);
  if (!mt) return 'malformed argon2 PHC string';
  const [, type, v, paramStr, saltB64, hashB64] = mt;
  const version = v === undefined ? 0x10 : Number(v);
  if (version !== 0x10 && version !== 0x13) return `unsupported argon2 version ${version}`;
  const params = new Map<string, number>();
  for (const kv of (paramStr ?? '').split(',')) {
    const [k, n] = kv.split('=');
    if (k === undefined || n === undefined || params.has(k) || !['m', 't', 'p'].includes(k)) return 'malformed argon2 parameters';
    params.set(k, Number(n));
  }
  const m = params.get('m');
  const t = params.get('t');
  const p = params.get('p');
  if (m === undefined || t === undefined || p === undefined) return 'argon2 parameters m, t and p are required';
  if (p < 1 || p > 255 || t < 1 || t > 1024 || m < 8 * p || m > ARGON2_MAX_MEMORY) return 'argon2 parameters out of supported range';
  if (!B64_NOPAD_RE.test(saltB64 ?? '') || !B64_NOPAD_RE.test(hashB64 ?? '')) return 'malformed argon2 base64';
  const salt = Buffer.from(saltB64 ?? '', 'base64');
  const hash = Buffer.from(hashB64 ?? '', 'base64');
  if (salt.length < 8 || hash.length < 4 || hash.length > 1024) return 'argon2 salt or hash length out of range';
  return { type: type === 'argon2i' ? 'argon2i' : 'argon2id', version, m, t, p, salt, hash };
}

async function argon2Raw(
  password: string,
  salt: Buffer,
  type: 'argon2i' | 'argon2id',
  prm: { m: number; t: number; p: number; version: number; hashLength: number },
): Promise<Buffer> {
  return argon2.hash(Buffer.from(password, 'utf8'), {
    raw: true,
    type: type === 'argon2i' ? argon2.argon2i : argon2.argon2id,
    salt,
    memoryCost: prm.m,
    timeCost: prm.t,
    parallelism: prm.p,
    version: prm.version,
    hashLength: prm.hashLength,
  });
}

function parseArgon2Scheme(scheme: string, value: string): Parsed {
  const phc = parseArgon2(value);
  if (typeof phc === 'string') return { scheme, error: phc };
  return {
    scheme,
    verify: async (password) =>
      safeEqual(await argon2Raw(password, phc.salt, phc.type, { ...phc, hashLength: phc.hash.length }), phc.hash),
  };
}

function formatArgon2(type: 'argon2i' | 'argon2id', prm: Argon2Params, salt: Buffer, hash: Buffer): string {
  // Parameter order m,t,p matters: libsodium (Dovecot) parses it strictly.
  return `$${type}$v=19$m=${prm.memoryCost},t=${prm.timeCost},p=${prm.parallelism}$${b64NoPad(salt)}$${b64NoPad(hash)}`;
}

// ---------------------------------------------------------------------------
// digest schemes

interface DigestScheme {
  readonly algorithm: 'md5' | 'sha1' | 'sha256' | 'sha512';
  readonly salted: boolean;
  readonly encoding: 'hex' | 'base64';
}

const DIGEST_SCHEMES: ReadonlyMap<string, DigestScheme> = new Map<string, DigestScheme>([
  ['SHA', { algorithm: 'sha1', salted: false, encoding: 'base64' }],
  ['SHA1', { algorithm: 'sha1', salted: false, encoding: 'base64' }],
  ['SSHA', { algorithm: 'sha1', salted: true, encoding: 'base64' }],
  ['SHA256', { algorithm: 'sha256', salted: false, encoding: 'base64' }],
  ['SSHA256', { algorithm: 'sha256', salted: true, encoding: 'base64' }],
  ['SHA512', { algorithm: 'sha512', salted: false, encoding: 'base64' }],
  ['SSHA512', { algorithm: 'sha512', salted: true, encoding: 'base64' }],
  ['PLAIN-MD5', { algorithm: 'md5', salted: false, encoding: 'hex' }],
  ['LDAP-MD5', { algorithm: 'md5', salted: false, encoding: 'base64' }],
  ['SMD5', { algorithm: 'md5', salted: true, encoding: 'base64' }],
]);

const DIGEST_LEN = { md5: 16, sha1: 20, sha256: 32, sha512: 64 } as const;

function parseDigest(scheme: string, ds: DigestScheme, encodingOverride: 'hex' | 'base64' | undefined, value: string): Parsed {
  const len = DIGEST_LEN[ds.algorithm];
  let raw: Buffer | undefined;
  const enc = encodingOverride ?? ds.encoding;
  if (enc === 'hex') raw = decodeHex(value);
  else if (encodingOverride === undefined && !ds.salted && value.length === len * 2 && HEX_RE.test(value)) raw = decodeHex(value);
  else raw = decodeBase64Strict(value);
  if (raw === undefined) return { scheme, error: `cannot decode ${enc} value` };
  if (ds.salted ? raw.length <= len : raw.length !== len) return { scheme, error: 'digest has the wrong length' };
  const digest = raw.subarray(0, len);
  const salt = raw.subarray(len);
  return {
    scheme,
    verify: async (password) =>
      safeEqual(createHash(ds.algorithm).update(Buffer.from(password, 'utf8')).update(salt).digest(), digest),
  };
}

// ---------------------------------------------------------------------------
// dispatch

const PREFIX_RE = /^\{([A-Za-z0-9._-]+)\}/;

function plainVerifier(expected: Buffer): Verifier {
  const want = createHash('sha256').update(expected).digest();
  return async (password) => safeEqual(createHash('sha256').update(Buffer.from(password, 'utf8')).digest(), want);
}

function parseStored(stored: string): Parsed {
  const mt = PREFIX_RE.exec(stored);
  if (!mt) {
    if (stored.startsWith('$')) return parseCrypt('CRYPT', stored);
    return { scheme: undefined, error: stored === '' ? 'empty password field' : 'unknown password format (no {SCHEME} prefix and not a crypt(3) hash)' };
  }
  const full = (mt[1] ?? '').toUpperCase();
  const value = stored.slice(mt[0].length);
  let base = full;
  let encoding: 'hex' | 'base64' | undefined;
  const dot = full.lastIndexOf('.');
  if (dot > 0) {
    const suffix = full.slice(dot + 1);
    if (suffix === 'HEX') encoding = 'hex';
    else if (suffix === 'B64' || suffix === 'BASE64') encoding = 'base64';
    else return { scheme: full, error: `unknown encoding suffix .${suffix}` };
    base = full.slice(0, dot);
  }

  switch (base) {
    case 'PLAIN':
    case 'CLEAR':
    case 'CLEARTEXT': {
      let raw: Buffer | undefined = Buffer.from(value, 'utf8');
      if (encoding === 'hex') raw = decodeHex(value);
      else if (encoding === 'base64') raw = decodeBase64Strict(value);
      if (raw === undefined) return { scheme: base, error: `cannot decode ${encoding} value` };
      return { scheme: base, verify: plainVerifier(raw) };
    }
    case 'CRYPT':
    case 'SHA512-CRYPT':
    case 'SHA256-CRYPT':
    case 'BLF-CRYPT':
      if (encoding) return { scheme: base, error: 'encoding suffix not supported for crypt schemes' };
      return parseCrypt(base, value);
    case 'ARGON2ID':
    case 'ARGON2I':
      if (encoding) return { scheme: base, error: 'encoding suffix not supported for argon2 schemes' };
      return parseArgon2Scheme(base, value);
    case 'CRAM-MD5':
    case 'HMAC-MD5': {
      if (encoding) return { scheme: base, error: 'encoding suffix not supported for CRAM-MD5' };
      const states = parseCramMd5Secret(value);
      if (states === undefined) return { scheme: base, error: 'CRAM-MD5 value must be 64 hex digits' };
      const expected = Buffer.from(formatCramMd5Secret(states), 'latin1');
      return {
        scheme: base,
        verify: async (password) => safeEqual(Buffer.from(formatCramMd5Secret(hmacMd5States(Buffer.from(password, 'utf8'))), 'latin1'), expected),
      };
    }
    case 'SCRAM-SHA-1':
    case 'SCRAM-SHA-256': {
      if (encoding) return { scheme: base, error: 'encoding suffix not supported for SCRAM' };
      const hash: ScramHash = base === 'SCRAM-SHA-1' ? 'sha1' : 'sha256';
      const secret = parseScramSecret(hash, value);
      if (secret === undefined) {
        return { scheme: base, error: `malformed ${base} value (want iterations ${SCRAM_MIN_ITERATIONS}..${SCRAM_MAX_ITERATIONS},salt,StoredKey,ServerKey)` };
      }
      return { scheme: base, verify: (password) => verifyScram(hash, secret, password) };
    }
    default: {
      const ds = DIGEST_SCHEMES.get(base);
      if (ds) return parseDigest(base, ds, encoding, value);
      return { scheme: base, error: `unknown password scheme {${base}}` };
    }
  }
}

/**
 * SCRAM clients hash the SASLprep'd password (RFC 5802 §2.2); doveadm hashes
 * the raw bytes. Accept either form, they only differ for unusual input.
 */
async function verifyScram(hash: ScramHash, secret: { iterations: number; salt: Buffer; storedKey: Buffer }, password: string): Promise<boolean> {
  const candidates = new Set([password]);
  const prepped = saslPrep(password);
  if (prepped !== undefined) candidates.add(prepped);
  let ok = false;
  for (const pw of candidates) {
    const derived = await deriveScramSecret(hash, pw, secret.salt, secret.iterations);
    if (safeEqual(derived.storedKey, secret.storedKey)) ok = true;
  }
  return ok;
}

// ---------------------------------------------------------------------------
// public API

/**
 * The cleartext password of a `{PLAIN}`-family secret (PLAIN, CLEAR,
 * CLEARTEXT, with an optional .B64/.HEX suffix), for mechanisms that need it
 * (CRAM-MD5, SCRAM, APOP). Undefined for any other scheme. Never throws.
 */
export { plaintextSecret } from '../secrets/plaintext-secret.js';

/**
 * Which scheme a stored secret uses and, when it cannot be verified, why.
 * Never throws.
 */
export function inspectSecret(stored: string): { readonly scheme: string | undefined; readonly error: string | undefined } {
  try {
    const p = parseStored(stored);
    return { scheme: p.scheme, error: 'error' in p ? p.error : undefined };
  } catch (e) {
    return { scheme: undefined, error: `cannot parse stored secret: ${String(e)}` };
  }
}

/**
 * Whether checking a password against `stored` costs about a dummyVerify or
 * more: an argon2 hash with at least the default memory × passes, or a
 * bcrypt one (under {BLF-CRYPT} or {CRYPT}) of cost 8 or more. Every other
 * secret is checked in microseconds (plain, digests) or a few milliseconds
 * (SHA-crypt, cheap parameters).
 */
export function isSlowSecret(stored: string): boolean {
  const mt = PREFIX_RE.exec(stored);
  const scheme = mt ? (mt[1] ?? '').toUpperCase() : 'CRYPT';
  const value = mt ? stored.slice(mt[0].length) : stored;
  if (scheme === 'ARGON2ID' || scheme === 'ARGON2I') {
    const phc = parseArgon2(value);
    return typeof phc !== 'string' && phc.m * phc.t >= ARGON2_DEFAULTS.memoryCost * ARGON2_DEFAULTS.timeCost;
  }
  return (scheme === 'CRYPT' || scheme === 'BLF-CRYPT') && BCRYPT_RE.test(value) && Number(value.slice(4, 6)) >= 8;
}

/** Verifies `password` against a stored `{SCHEME}...` secret. Never throws. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  try {
    const p = parseStored(stored);
    if ('error' in p) return false;
    return await p.verify(password);
  } catch {
    return false;
  }
}

function resolveArgon2(options: HashOptions | undefined): Argon2Params {
  return { ...ARGON2_DEFAULTS, ...options?.argon2 };
}

/** Hashes `password`, returning the full `{SCHEME}...` string. */
export async function hashPassword(password: string, scheme: HashScheme = 'ARGON2ID', options?: HashOptions): Promise<string> {
  switch (scheme) {
    case 'ARGON2ID': {
      const prm = resolveArgon2(options);
      const salt = randomBytes(ARGON2_SALT_LEN);
      const hash = await argon2Raw(password, salt, 'argon2id', {
        m: prm.memoryCost,
        t: prm.timeCost,
        p: prm.parallelism,
        version: 0x13,
        hashLength: ARGON2_HASH_LEN,
      });
      return `{ARGON2ID}${formatArgon2('argon2id', prm, salt, hash)}`;
    }
    case 'SHA512-CRYPT':
    case 'SHA256-CRYPT': {
      const rounds = options?.rounds;
      if (rounds !== undefined && (!Number.isInteger(rounds) || rounds < 1000 || rounds > 999_999_999)) {
        throw new RangeError('SHA-crypt rounds must be an integer in 1000..999999999');
      }
      let salt = '';
      for (let i = 0; i < 16; i++) salt += CRYPT_ALPHABET[randomInt(CRYPT_ALPHABET.length)];
      const id = scheme === 'SHA512-CRYPT' ? '6' : '5';
      const setting = `$${id}$${rounds !== undefined && rounds !== 5000 ? `rounds=${rounds}$` : ''}${salt}`;
      return `{${scheme}}${unixEncrypt(password, setting)}`;
    }
    case 'BLF-CRYPT': {
      const cost = options?.bcryptCost ?? 10;
      if (!Number.isInteger(cost) || cost < 4 || cost > BCRYPT_MAX_COST) throw new RangeError(`bcrypt cost must be in 4..${BCRYPT_MAX_COST}`);
      if (Buffer.byteLength(password, 'utf8') > 72) throw new RangeError('BLF-CRYPT only uses the first 72 bytes of a password; use ARGON2ID');
      const salt = await bcrypt.genSalt(cost);
      // Dovecot's `doveadm pw -s BLF-CRYPT` writes $2y$; the algorithm is the same as $2b$.
      return `{BLF-CRYPT}${(await bcrypt.hash(password, salt)).replace(/^\$2b\$/, '$2y$')}`;
    }
    case 'CRAM-MD5':
      return `{CRAM-MD5}${formatCramMd5Secret(hmacMd5States(Buffer.from(password, 'utf8')))}`;
    case 'SCRAM-SHA-1':
    case 'SCRAM-SHA-256': {
      const iterations = options?.scramIterations ?? SCRAM_DEFAULT_ITERATIONS;
      if (!Number.isInteger(iterations) || iterations < SCRAM_MIN_ITERATIONS || iterations > SCRAM_MAX_ITERATIONS) {
        throw new RangeError(`SCRAM iterations must be an integer in ${SCRAM_MIN_ITERATIONS}..${SCRAM_MAX_ITERATIONS}`);
      }
      // RFC 5802 §2.2: clients hash Normalize(password); a password SASLprep refuses is stored as is.
      const hash: ScramHash = scheme === 'SCRAM-SHA-1' ? 'sha1' : 'sha256';
      const secret = await deriveScramSecret(hash, saslPrep(password) ?? password, randomBytes(16), iterations);
      return `{${scheme}}${formatScramSecret(secret)}`;
    }
    case 'PLAIN':
      // passwd-file cannot hold ':' or line breaks in a field; Dovecot accepts {PLAIN.B64}.
      if (/[:\r\n\0]/.test(password)) return `{PLAIN.B64}${Buffer.from(password, 'utf8').toString('base64')}`;
      return `{PLAIN}${password}`;
    default: {
      const never: never = scheme;
      throw new TypeError(`unsupported scheme ${String(never)}`);
    }
  }
}

const DUMMY_SALT = Buffer.from('poplar-dummy-salt-v1', 'utf8').subarray(0, ARGON2_SALT_LEN);
const DUMMY_HASH = createHash('sha256').update('poplar-dummy-hash').digest();

/**
 * Spends as much as verifying an argon2id hash made with ARGON2_DEFAULTS,
 * so that an unknown user costs the same as a known one. Never throws.
 */
export async function dummyVerify(password: string): Promise<void> {
  try {
    const raw = await argon2Raw(password, DUMMY_SALT, 'argon2id', {
      m: ARGON2_DEFAULTS.memoryCost,
      t: ARGON2_DEFAULTS.timeCost,
      p: ARGON2_DEFAULTS.parallelism,
      version: 0x13,
      hashLength: ARGON2_HASH_LEN,
    });
    safeEqual(raw, DUMMY_HASH);
  } catch {
    // nothing to report: the caller fails the login anyway
  }
}
