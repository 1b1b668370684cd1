/**
 * APOP (RFC 1939 §7): the greeting carries a msg-id `<...@host>`; the client
 * sends `APOP name digest` with digest = lower-case hex MD5(timestamp + secret).
 *
 * Only a recoverable cleartext (`{PLAIN}`-family) can serve APOP. APOP is
 * weak (MD5; CVE-2007-1558): keep it off unless something needs it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { plaintextSecret } from '../../secrets/plaintext-secret.js';
import { msgIdHost, safeEqual } from './syntax.js';

/** A fresh `<pid.random.seconds@host>` timestamp for the greeting, unique per connection. */
export function apopTimestamp(hostname: string): string {
  return `<${process.pid}.${randomBytes(8).toString('hex')}.${Math.floor(Date.now() / 1000)}@${msgIdHost(hostname)}>`;
}

/** Lower-case hex MD5(timestamp + secret). */
export function apopDigest(timestamp: string, secret: string): string {
  return createHash('md5').update(Buffer.from(timestamp + secret, 'utf8')).digest('hex');
}

/**
 * Whether `digest` (32 hex digits, either case) answers `timestamp` for the
 * stored secret. Unknown users (undefined) and secrets that cannot serve APOP
 * cost one MD5 like the rest and return false.
 */
export function verifyApop(timestamp: string, digest: string, stored: string | undefined): boolean {
  const secret = stored === undefined ? undefined : plaintextSecret(stored);
  const expected = Buffer.from(apopDigest(timestamp, secret ?? `\0poplar-apop-dummy${timestamp}`), 'latin1');
  const given = Buffer.from(/^[0-9a-fA-F]{32}$/.test(digest) ? digest.toLowerCase() : '', 'latin1');
  return safeEqual(given, expected) && secret !== undefined;
}

/** Whether a stored secret can serve APOP at all. */
export function apopCapable(stored: string | undefined): boolean {
  return stored !== undefined && plaintextSecret(stored) !== undefined;
}
