/**
 * Thunderbird's autoconfig file (config-v1.1.xml, the "clientConfig"
 * format that Thunderbird, K-9/Thunderbird for Android and others read) for
 * one of the configured domains. The user name is a placeholder the client
 * fills in, so the file is the same for every address of the domain.
 */
import type { AuthMethod, ClientSettings, Endpoint } from './settings.js';
import { el, renderXml, type XmlElement } from './xml.js';

const SOCKET_TYPE = { tls: 'SSL', starttls: 'STARTTLS' } as const;

export function thunderbirdConfig(s: ClientSettings, domain: string): string {
  const username = s.username === 'address' ? '%EMAILADDRESS%' : '%EMAILLOCALPART%';
  const pop3Advice: XmlElement[] = [el('leaveMessagesOnServer', [String(s.leaveMessagesOnServer)])];
  if (s.daysToLeaveMessagesOnServer !== undefined) pop3Advice.push(el('daysToLeaveMessagesOnServer', [String(s.daysToLeaveMessagesOnServer)]));
  pop3Advice.push(el('downloadOnBiff', ['true']));
  if (s.checkIntervalMinutes !== undefined) pop3Advice.push(el('checkInterval', [], { minutes: String(s.checkIntervalMinutes) }));
  const server = (kind: 'incomingServer' | 'outgoingServer', type: string, e: Endpoint, auth: readonly AuthMethod[], extra: XmlElement[]): XmlElement =>
    el(kind, [
      el('hostname', [e.hostname]),
      el('port', [String(e.port)]),
      el('socketType', [SOCKET_TYPE[e.security]]),
      el('username', [username]),
      ...auth.map((a) => el('authentication', [a])),
      ...extra,
    ], { type });
  const provider: XmlElement[] = [
    el('domain', [domain]),
    el('displayName', [s.displayName ?? domain]),
    el('displayShortName', [s.displayShortName ?? s.displayName ?? domain.split('.')[0]!]),
    ...s.incoming.map((e) => server('incomingServer', 'pop3', e, s.auth, [el('pop3', pop3Advice)])),
  ];
  // The submission server is the admin's to name; it is never guessed from the POP3 host.
  if (s.outgoing !== undefined) provider.push(server('outgoingServer', 'smtp', s.outgoing, ['password-cleartext'], []));
  return renderXml(el('clientConfig', [el('emailProvider', provider, { id: domain })], { version: '1.1' }));
}
