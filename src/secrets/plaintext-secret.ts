/**
 * The cleartext of a `{PLAIN}`-family stored secret (PLAIN, CLEAR,
 * CLEARTEXT, with Dovecot's optional .B64/.BASE64/.HEX suffix), for the
 * mechanisms that need it (CRAM-MD5, SCRAM, APOP). Re-exported by
 * ../auth/schemes.ts; kept here so the SASL code (and the client library
 * that imports it) does not load the password-hashing modules.
 */

const PREFIX_RE = /^\{([A-Za-z0-9._-]+)\}/;
const B64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?$/;
const HEX_RE = /^(?:[0-9a-fA-F]{2})*$/;

/** Undefined for any other scheme or an undecodable value. Never throws. */
export function plaintextSecret(stored: string): string | undefined {
  const mt = PREFIX_RE.exec(stored);
  if (!mt) return undefined;
  const [base, suffix, extra] = (mt[1] ?? '').toUpperCase().split('.');
  if (extra !== undefined || (base !== 'PLAIN' && base !== 'CLEAR' && base !== 'CLEARTEXT')) return undefined;
  const value = stored.slice(mt[0].length);
  if (suffix === undefined) return value;
  if (suffix === 'HEX') return HEX_RE.test(value) ? Buffer.from(value, 'hex').toString('utf8') : undefined;
  if (suffix === 'B64' || suffix === 'BASE64') return B64_RE.test(value) ? Buffer.from(value, 'base64').toString('utf8') : undefined;
  return undefined;
}
