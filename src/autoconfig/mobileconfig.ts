/**
 * An Apple configuration profile (.mobileconfig) that adds a POP account on
 * iPhone, iPad and Mac: an unsigned XML property list. Its identifiers are
 * derived from the host name and the address, so downloading the profile
 * again for the same address replaces the account instead of adding another.
 */
import { createHash } from 'node:crypto';
import type { MailAddress } from './address.js';
import { loginName } from './address.js';
import type { ClientSettings } from './settings.js';
import { el, renderXml, type XmlElement } from './xml.js';

const PLIST_DOCTYPE = '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n';

type PlistValue = string | number | boolean | PlistValue[] | { [key: string]: PlistValue };

function plistValue(v: PlistValue): XmlElement {
  if (typeof v === 'string') return el('string', v === '' ? [] : [v]);
  if (typeof v === 'number') return el('integer', [String(Math.trunc(v))]);
  if (typeof v === 'boolean') return el(v ? 'true' : 'false');
  if (Array.isArray(v)) return el('array', v.map(plistValue));
  return el('dict', Object.entries(v).flatMap(([k, x]) => [el('key', [k]), plistValue(x)]));
}

/** A name-based UUID (RFC 9562 version 5 layout over SHA-1), stable for the same inputs. */
export function stableUuid(...parts: string[]): string {
  const h = createHash('sha1').update(`poplar-autoconfig\u0000${parts.join('\u0000')}`).digest();
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex').toUpperCase();
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
}

/** The profile file name offered for `a`. */
export function profileFileName(a: MailAddress): string {
  return `${a.address.replace(/[^A-Za-z0-9.@_-]/g, '_')}.mobileconfig`;
}

/**
 * The profile for `a`, or undefined when no outgoing server is configured
 * (Apple's mail payload requires one, and none is made up).
 */
export function appleProfile(s: ClientSettings, a: MailAddress, fullName?: string): string | undefined {
  if (s.outgoing === undefined) return undefined;
  const incoming = s.incoming[0]!;
  const login = loginName(a, s.username);
  const provider = s.displayName ?? a.domain;
  const id = incoming.hostname.toLowerCase().split('.').reverse().join('.');
  const key = a.address.toLowerCase();
  const accountUuid = stableUuid('account', incoming.hostname.toLowerCase(), key);
  const profileUuid = stableUuid('profile', incoming.hostname.toLowerCase(), key);
  const account: Record<string, PlistValue> = {
    EmailAccountDescription: `${provider} (${a.address})`,
    ...(fullName !== undefined && fullName !== '' ? { EmailAccountName: fullName } : {}),
    EmailAccountType: 'EmailTypePOP',
    EmailAddress: a.address,
    IncomingMailServerAuthentication: 'EmailAuthPassword',
    IncomingMailServerHostName: incoming.hostname,
    IncomingMailServerPortNumber: incoming.port,
    // Implicit TLS when there is a POP3S port; on a STLS-only server the device upgrades the plain port.
    IncomingMailServerUseSSL: incoming.security === 'tls',
    IncomingMailServerUsername: login,
    OutgoingMailServerAuthentication: 'EmailAuthPassword',
    OutgoingMailServerHostName: s.outgoing.hostname,
    OutgoingMailServerPortNumber: s.outgoing.port,
    // Apple's flag covers STARTTLS on a submission port as well as implicit TLS.
    OutgoingMailServerUseSSL: true,
    OutgoingMailServerUsername: login,
    OutgoingPasswordSameAsIncomingPassword: true,
    PayloadDescription: `POP mail account ${a.address}`,
    PayloadDisplayName: `${provider} mail`,
    PayloadIdentifier: `${id}.mailaccount.${accountUuid}`,
    PayloadType: 'com.apple.mail.managed',
    PayloadUUID: accountUuid,
    PayloadVersion: 1,
  };
  const profile: Record<string, PlistValue> = {
    PayloadContent: [account],
    PayloadDescription: `Adds the POP mail account ${a.address} (${incoming.hostname}).`,
    PayloadDisplayName: `${provider} mail: ${a.address}`,
    PayloadIdentifier: `${id}.profile.${profileUuid}`,
    PayloadOrganization: provider,
    PayloadRemovalDisallowed: false,
    PayloadType: 'Configuration',
    PayloadUUID: profileUuid,
    PayloadVersion: 1,
  };
  return renderXml(el('plist', [plistValue(profile)], { version: '1.0' }), PLIST_DOCTYPE);
}
