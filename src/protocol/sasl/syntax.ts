/**
 * Wire syntax shared by the GS2-style mechanisms (SCRAM, OAUTHBEARER):
 * RFC 5801 gs2-header, RFC 5802 saslname, RFC 7628 key/value pairs.
 */
import { timingSafeEqual } from 'node:crypto';

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Decodes UTF-8, undefined when the bytes are not valid UTF-8. */
export function decodeUtf8Strict(buf: Uint8Array): string | undefined {
  try {
    return UTF8.decode(buf);
  } catch {
    return undefined;
  }
}

/** Constant-time compare; different lengths compare unequal (lengths are public). */
export function safeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) {
    timingSafeEqual(a, a);
    return false;
  }
  return timingSafeEqual(a, b);
}

/** RFC 5802 §5.1 saslname: `,` → `=2C`, `=` → `=3D`. */
export function encodeSaslname(s: string): string {
  return s.replace(/=/g, '=3D').replace(/,/g, '=2C');
}

/** Inverse of encodeSaslname; undefined for a stray `=`, a raw `,`, NUL or an empty name. */
export function decodeSaslname(s: string): string | undefined {
  if (s === '' || s.includes(',') || s.includes('\0')) return undefined;
  if (/=(?!2C|3D)/.test(s)) return undefined;
  return s.replace(/=2C|=3D/g, (m) => (m === '=2C' ? ',' : '='));
}

export interface Gs2Header {
  /** `n`: no binding; `y`: client could bind but thinks the server can't; `p`: binding of type cbName. */
  readonly flag: 'n' | 'y' | 'p';
  readonly cbName?: string;
  /** Decoded `a=` value, when present. */
  readonly authzid?: string;
  /** The header exactly as sent, trailing comma included (it goes into SCRAM's `c=`). */
  readonly header: string;
  /** What follows the header. */
  readonly rest: string;
}

/** RFC 5801 §4: `gs2-cb-flag "," [authzid] ","`; undefined when malformed. */
export function parseGs2Header(msg: string): Gs2Header | undefined {
  const c1 = msg.indexOf(',');
  const c2 = c1 === -1 ? -1 : msg.indexOf(',', c1 + 1);
  if (c2 === -1) return undefined;
  const flagText = msg.slice(0, c1);
  const authText = msg.slice(c1 + 1, c2);
  let flag: 'n' | 'y' | 'p';
  let cbName: string | undefined;
  if (flagText === 'n' || flagText === 'y') flag = flagText;
  else if (/^p=[A-Za-z0-9.-]+$/.test(flagText)) {
    flag = 'p';
    cbName = flagText.slice(2);
  } else return undefined;
  let authzid: string | undefined;
  if (authText !== '') {
    if (!authText.startsWith('a=')) return undefined;
    authzid = decodeSaslname(authText.slice(2));
    if (authzid === undefined) return undefined;
  }
  return {
    flag,
    ...(cbName !== undefined ? { cbName } : {}),
    ...(authzid !== undefined ? { authzid } : {}),
    header: msg.slice(0, c2 + 1),
    rest: msg.slice(c2 + 1),
  };
}

/**
 * `key=value` pairs each terminated by \x01, the whole ended by one more
 * \x01 (RFC 7628 §3.1; Google's XOAUTH2 uses the same layout without the
 * leading separator). Keys are 1*ALPHA; values are VCHAR/SP/HTAB (CR, LF,
 * NUL refused). Duplicate keys are refused. Undefined when malformed.
 */
export function parseKvPairs(s: string): Map<string, string> | undefined {
  if (!s.endsWith('\x01\x01')) return undefined;
  const body = s.slice(0, -2);
  const out = new Map<string, string>();
  if (body === '') return out;
  for (const pair of body.split('\x01')) {
    const eq = pair.indexOf('=');
    if (eq <= 0) return undefined;
    const key = pair.slice(0, eq);
    const value = pair.slice(eq + 1);
    if (!/^[A-Za-z]+$/.test(key) || out.has(key) || !/^[\x20-\x7e\t\u0080-\u{10ffff}]*$/u.test(value)) return undefined;
    out.set(key, value);
  }
  return out;
}

/** RFC 6750 §2.1 b64token, the shape of a bearer token. */
export const BEARER_TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;

/** `Bearer <token>` (scheme case-insensitive, RFC 7235); undefined otherwise. */
export function parseBearerAuth(value: string): string | undefined {
  const mt = /^bearer (.+)$/i.exec(value);
  const token = mt?.[1];
  return token !== undefined && BEARER_TOKEN.test(token) ? token : undefined;
}

/** A safe host part for `<...@host>` msg-ids (RFC 1939 §7, RFC 2195). */
export function msgIdHost(hostname: string): string {
  const h = hostname.replace(/[^A-Za-z0-9.\-_]/g, '');
  return h === '' ? 'localhost' : h;
}
