/**
 * What mail clients are told, derived once from Poplar's own configuration:
 * the public host name, the ports and their TLS modes, the login methods
 * that actually work, and the advice for a POP3 client. Every answer of the
 * autoconfig listener (Thunderbird XML, Autodiscover, the Apple profile, the
 * setup page) is written from this one value, so they cannot disagree.
 */
import { ConfigError } from '../config/errors.js';
import type { Config } from '../config/schema.js';
import { DEFAULT_ENABLED_MECHANISMS } from '../protocol/sasl/index.js';
import { DNS_NAME } from './config.js';

/** How a client reaches a server: implicit TLS (POP3S 995, SMTPS 465) or a plain port upgraded with STLS/STARTTLS. */
export type Security = 'tls' | 'starttls';

/** Login methods as Thunderbird's autoconfig format names them. */
export type AuthMethod = 'password-cleartext' | 'password-encrypted' | 'OAuth2';

export interface Endpoint {
  readonly hostname: string;
  readonly port: number;
  readonly security: Security;
}

export interface ClientSettings {
  /** POP3 endpoints, the preferred one (implicit TLS when there is one) first. */
  readonly incoming: readonly Endpoint[];
  /** Login methods, the one clients should pick first. */
  readonly auth: readonly AuthMethod[];
  readonly username: 'address' | 'local_part';
  /** Lower-case mail domains answered for. */
  readonly domains: readonly string[];
  readonly displayName: string | undefined;
  readonly displayShortName: string | undefined;
  readonly leaveMessagesOnServer: boolean;
  readonly daysToLeaveMessagesOnServer: number | undefined;
  /** Minutes between checks, at least the server's LOGIN-DELAY. */
  readonly checkIntervalMinutes: number | undefined;
  /** The outgoing server, only when configured (never made up). */
  readonly outgoing: Endpoint | undefined;
  /** Whether SCRAM mechanisms are offered (they have no name in the autoconfig formats; the page lists them). */
  readonly scram: readonly string[];
}

export interface ListenerFacts {
  /** Whether the POP3 server has TLS material, so its plain listeners offer STLS. */
  readonly stls: boolean;
}

/**
 * The client settings for `config`, or a ConfigError that says what is
 * missing. Plain POP3 without STLS is never advertised: a client would send
 * its password in the clear.
 */
export function clientSettings(config: Config, facts: ListenerFacts): ClientSettings {
  const a = config.autoconfig;
  const hostname = a.hostname ?? config.server.hostname;
  if (hostname === undefined) throw new ConfigError('invalid configuration: autoconfig needs autoconfig.hostname or server.hostname (the POP3 host name clients connect to)');
  if (!DNS_NAME.test(hostname)) throw new ConfigError(`invalid configuration: server.hostname ${JSON.stringify(hostname)} is not a DNS name; set autoconfig.hostname`);
  if (a.domains.length === 0) throw new ConfigError('invalid configuration: autoconfig.domains is empty (the mail domains to answer for)');

  const firstPort = (list: readonly string[]): number | undefined => {
    const first = list[0];
    return first === undefined ? undefined : Number(first.slice(first.lastIndexOf(':') + 1));
  };
  const pop3s = a.pop3s_port ?? firstPort(config.server.listen_tls);
  const pop3 = a.pop3_port ?? (facts.stls ? firstPort(config.server.listen) : undefined);
  const incoming: Endpoint[] = [];
  if (pop3s !== undefined && pop3s !== 0) {
    if (config.server.listen_tls.length === 0) throw new ConfigError('invalid configuration: autoconfig.pop3s_port is set but there is no server.listen_tls listener');
    incoming.push({ hostname, port: pop3s, security: 'tls' });
  }
  if (pop3 !== undefined && pop3 !== 0) {
    if (config.server.listen.length === 0 || !facts.stls) throw new ConfigError('invalid configuration: autoconfig.pop3_port is set but there is no server.listen listener with STLS');
    incoming.push({ hostname, port: pop3, security: 'starttls' });
  }
  if (incoming.length === 0) throw new ConfigError('invalid configuration: autoconfig has no POP3 port to advertise (no server.listen_tls, no server.listen with STLS, or both ports set to 0)');

  const oauth = config.auth.oauth !== undefined;
  const mechanisms = config.server.sasl_mechanisms ?? [...DEFAULT_ENABLED_MECHANISMS, ...(oauth ? ['OAUTHBEARER', 'XOAUTH2'] : [])];
  // USER/PASS is accepted over TLS whatever plaintext_auth says, and every endpoint above is TLS.
  const cleartext: AuthMethod = 'password-cleartext';
  // Clients that read these formats do CRAM-MD5 or APOP for "password-encrypted" (none of them SCRAM).
  const encrypted = mechanisms.includes('CRAM-MD5') || config.server.apop;
  // Cleartext first unless the admin took PLAIN and LOGIN out of the mechanisms (then the challenge-response ones are meant).
  const cleartextFirst = !encrypted || mechanisms.includes('PLAIN') || mechanisms.includes('LOGIN');
  const auth: AuthMethod[] = cleartextFirst ? [cleartext] : ['password-encrypted', cleartext];
  if (encrypted && cleartextFirst) auth.push('password-encrypted');
  if (oauth && (mechanisms.includes('XOAUTH2') || mechanisms.includes('OAUTHBEARER'))) auth.push('OAuth2');

  const smtpSecurity: Security = a.smtp_security ?? (a.smtp_port === 465 ? 'tls' : 'starttls');
  const expire = typeof config.server.expire === 'number' && config.server.expire > 0 ? config.server.expire : undefined;
  return {
    incoming,
    auth,
    username: a.username,
    domains: a.domains.map((d) => d.toLowerCase()),
    displayName: a.display_name,
    displayShortName: a.display_short_name,
    leaveMessagesOnServer: a.leave_messages_on_server,
    daysToLeaveMessagesOnServer: a.leave_messages_on_server ? (a.days_to_leave_messages_on_server ?? expire) : undefined,
    checkIntervalMinutes: config.server.login_delay !== undefined && config.server.login_delay > 0 ? Math.ceil(config.server.login_delay / 60) : undefined,
    outgoing: a.smtp_host === undefined ? undefined : { hostname: a.smtp_host, port: a.smtp_port, security: smtpSecurity },
    scram: mechanisms.filter((m) => m.startsWith('SCRAM-')),
  };
}
