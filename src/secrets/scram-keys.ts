/**
 * SCRAM key derivation (RFC 5802 §3) and Dovecot's stored SCRAM secret
 * format, `{SCRAM-SHA-256}<iterations>,<base64 salt>,<base64 StoredKey>,<base64 ServerKey>`.
 * Shared by the SCRAM mechanism and the password schemes.
 */
import { createHash, createHmac, pbkdf2, pbkdf2Sync } from 'node:crypto';
import { promisify } from 'node:util';

const pbkdf2Async = promisify(pbkdf2);

export type ScramHash = 'sha1' | 'sha256';

export const SCRAM_HASH_LEN: Readonly<Record<ScramHash, number>> = Object.freeze({ sha1: 20, sha256: 32 });

/** RFC 5802 §5.1: i SHOULD be at least 4096 (RFC 7677 §4 too). */
export const SCRAM_MIN_ITERATIONS = 4096;
export const SCRAM_DEFAULT_ITERATIONS = 4096;
/** Refuse to derive beyond this (a stored secret or a server must not make us spin). */
export const SCRAM_MAX_ITERATIONS = 10_000_000;

export interface ScramSecret {
  readonly iterations: number;
  readonly salt: Buffer;
  readonly storedKey: Buffer;
  readonly serverKey: Buffer;
}

export function hmac(hash: ScramHash, key: Uint8Array, data: Uint8Array | string): Buffer {
  return createHmac(hash, key).update(data).digest();
}

export function digest(hash: ScramHash, data: Uint8Array): Buffer {
  return createHash(hash).update(data).digest();
}

/** Hi() of RFC 5802 §2.2 is PBKDF2 with HMAC-H and dkLen = the hash length. */
export function saltedPasswordSync(hash: ScramHash, password: string, salt: Uint8Array, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(password, 'utf8'), salt, iterations, SCRAM_HASH_LEN[hash], hash);
}

export async function saltedPassword(hash: ScramHash, password: string, salt: Uint8Array, iterations: number): Promise<Buffer> {
  return pbkdf2Async(Buffer.from(password, 'utf8'), salt, iterations, SCRAM_HASH_LEN[hash], hash);
}

/** StoredKey and ServerKey from a SaltedPassword. */
export function keysFromSalted(hash: ScramHash, salted: Buffer): { clientKey: Buffer; storedKey: Buffer; serverKey: Buffer } {
  const clientKey = hmac(hash, salted, 'Client Key');
  return { clientKey, storedKey: digest(hash, clientKey), serverKey: hmac(hash, salted, 'Server Key') };
}

/** Derives a stored secret; `password` must already be SASLprep'd. */
export async function deriveScramSecret(hash: ScramHash, password: string, salt: Buffer, iterations: number): Promise<ScramSecret> {
  const { storedKey, serverKey } = keysFromSalted(hash, await saltedPassword(hash, password, salt, iterations));
  return { iterations, salt, storedKey, serverKey };
}

export function formatScramSecret(s: ScramSecret): string {
  return `${s.iterations},${s.salt.toString('base64')},${s.storedKey.toString('base64')},${s.serverKey.toString('base64')}`;
}

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Parses Dovecot's value (after the `{SCRAM-...}` prefix); undefined when malformed or out of range. */
export function parseScramSecret(hash: ScramHash, value: string): ScramSecret | undefined {
  const parts = value.split(',');
  if (parts.length !== 4) return undefined;
  const [it, salt, stored, server] = parts as [string, string, string, string];
  if (!/^[1-9]\d{0,8}$/.test(it)) return undefined;
  const iterations = Number(it);
  if (iterations < SCRAM_MIN_ITERATIONS || iterations > SCRAM_MAX_ITERATIONS) return undefined;
  if (![salt, stored, server].every((p) => p !== '' && B64.test(p))) return undefined;
  const s = { iterations, salt: Buffer.from(salt, 'base64'), storedKey: Buffer.from(stored, 'base64'), serverKey: Buffer.from(server, 'base64') };
  const len = SCRAM_HASH_LEN[hash];
  if (s.salt.length === 0 || s.storedKey.length !== len || s.serverKey.length !== len) return undefined;
  return s;
}
