/**
 * Outlook's Autodiscover in its plain-old-XML form (POX, the
 * "outlook/responseschema/2006a" answer): the client POSTs a request naming
 * the address, and gets the POP3 (and, when configured, SMTP) settings.
 */
import { randomInt } from 'node:crypto';
import type { MailAddress } from './address.js';
import { loginName } from './address.js';
import type { ClientSettings, Endpoint } from './settings.js';
import { childOf, el, parseXml, renderXml, textOf, type XmlElement } from './xml.js';

export const REQUEST_NS = 'http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006';
export const RESPONSE_NS = 'http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006';
export const OUTLOOK_SCHEMA = 'http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a';

/** A request that is well-formed XML but not an Autodiscover request. */
export class AutodiscoverRequestError extends Error {
  override name = 'AutodiscoverRequestError';
}

export interface AutodiscoverRequest {
  readonly email: string;
  /** AcceptableResponseSchema, when the client named one. */
  readonly schema: string | undefined;
}

/** The address and schema of a request body; XmlSyntaxError when it is not well-formed, AutodiscoverRequestError when it is not a request. */
export function readAutodiscoverRequest(body: string): AutodiscoverRequest {
  const root = parseXml(body, { maxDepth: 8, maxElements: 64 });
  if (root.local !== 'Autodiscover' || root.ns !== REQUEST_NS) throw new AutodiscoverRequestError('not an Autodiscover request (document element or namespace)');
  const request = childOf(root, 'Request', REQUEST_NS);
  const email = request && childOf(request, 'EMailAddress', REQUEST_NS);
  if (email === undefined) throw new AutodiscoverRequestError('the request names no EMailAddress');
  const schema = childOf(request!, 'AcceptableResponseSchema', REQUEST_NS);
  return { email: textOf(email).trim(), schema: schema === undefined ? undefined : textOf(schema).trim() };
}

const ENCRYPTION = { tls: 'SSL', starttls: 'TLS' } as const;

function protocol(type: 'POP3' | 'SMTP', e: Endpoint, login: string, extra: XmlElement[] = []): XmlElement {
  return el('Protocol', [
    el('Type', [type]),
    el('Server', [e.hostname]),
    el('Port', [String(e.port)]),
    el('LoginName', [login]),
    el('DomainRequired', ['off']),
    el('SPA', ['off']),
    el('SSL', ['on']),
    // Encryption overrides SSL where it is understood: SSL = implicit TLS, TLS = STARTTLS.
    el('Encryption', [ENCRYPTION[e.security]]),
    el('AuthRequired', ['on']),
    ...extra,
  ]);
}

/** The settings for `a`: every POP3 endpoint, the preferred first, then SMTP when configured. */
export function autodiscoverResponse(s: ClientSettings, a: MailAddress): string {
  const login = loginName(a, s.username);
  const protocols = s.incoming.map((e) => protocol('POP3', e, login));
  if (s.outgoing !== undefined) protocols.push(protocol('SMTP', s.outgoing, login, [el('UsePOPAuth', ['on'])]));
  const account = el('Account', [el('AccountType', ['email']), el('Action', ['settings']), ...protocols]);
  return renderXml(el('Autodiscover', [el('Response', [account], { xmlns: OUTLOOK_SCHEMA })], { xmlns: RESPONSE_NS }));
}

/** An Autodiscover error (600 invalid request, 601 no provider for the schema, 500 unknown address). */
export function autodiscoverError(code: 500 | 600 | 601, message: string): string {
  const now = new Date();
  const time = `${String(now.getUTCHours()).padStart(2, '0')}:${String(now.getUTCMinutes()).padStart(2, '0')}:${String(now.getUTCSeconds()).padStart(2, '0')}`;
  const error = el('Error', [el('ErrorCode', [String(code)]), el('Message', [message]), el('DebugData')], { Time: time, Id: String(randomInt(1, 2 ** 31)) });
  return renderXml(el('Autodiscover', [el('Response', [error])], { xmlns: RESPONSE_NS }));
}
