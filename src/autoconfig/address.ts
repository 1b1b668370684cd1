/**
 * A mail address as the autoconfig listener takes it from a query string or
 * a request body: a dot-atom local part (RFC 5322 §3.2.3) and a DNS domain.
 * Anything else (quoted local parts, comments, control characters, markup)
 * is refused rather than carried into XML or a profile.
 */
import { domainToASCII } from 'node:url';
import { DNS_NAME } from './config.js';

export interface MailAddress {
  /** As given (case kept: a local part may be case-sensitive). */
  readonly localPart: string;
  /** Lower-case ASCII (an internationalized domain in its xn-- form). */
  readonly domain: string;
  /** localPart@domain. */
  readonly address: string;
}

const ATEXT_DOTS = /^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$/;

/** The longest address accepted (RFC 5321 §4.5.3.1.3: a path holds 256 octets, the brackets included). */
export const MAX_ADDRESS_LENGTH = 254;

/** The address in `text`, or null when it is not one this listener answers for anyone. */
export function parseAddress(text: string): MailAddress | null {
  const s = text.trim();
  if (s.length === 0 || s.length > MAX_ADDRESS_LENGTH * 4) return null;
  const at = s.lastIndexOf('@');
  if (at <= 0 || at === s.length - 1) return null;
  const localPart = s.slice(0, at);
  if (localPart.length > 64 || !ATEXT_DOTS.test(localPart)) return null;
  const rawDomain = s.slice(at + 1);
  // Letters outside ASCII only through the IDNA conversion; what comes back is checked like any DNS name.
  const domain = /^[\x21-\x7e]+$/.test(rawDomain) ? rawDomain.toLowerCase() : domainToASCII(rawDomain);
  if (domain === '' || !DNS_NAME.test(domain)) return null;
  const address = `${localPart}@${domain}`;
  if (address.length > MAX_ADDRESS_LENGTH) return null;
  return { localPart, domain, address };
}

/** The login name for `a` under the `username` setting. */
export function loginName(a: MailAddress, username: 'address' | 'local_part'): string {
  return username === 'address' ? a.address : a.localPart;
}
