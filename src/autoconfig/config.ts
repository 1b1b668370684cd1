/**
 * The `[autoconfig]` section: a public HTTP(S) listener that tells mail
 * clients how to reach this POP3 server (Thunderbird autoconfig, Outlook
 * Autodiscover, an Apple profile and a setup page; docs/client-setup.md).
 * Off until `listen` or `listen_tls` names an address.
 */
import { z } from 'zod';

/** HOST:PORT, IPv6 in brackets. */
const listenAddress = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'expected HOST:PORT');

/** A DNS name (letters, digits, hyphens; labels of 1 to 63 characters), what clients are told to connect to. */
export const DNS_NAME = /^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const dnsName = z.string().regex(DNS_NAME, 'expected a DNS name such as pop.example.com');

const port = z.number().int().min(0).max(65535);
/** A name shown to users: printable, no control characters. */
const label = z.string().min(1).max(100).regex(/^[^\u0000-\u001f\u007f]+$/, 'expected text without control characters');

export const AutoconfigConfigSchema = z
  .object({
    /** Plain HTTP addresses (Thunderbird asks http://autoconfig.DOMAIN/ too); empty with listen_tls empty: off. */
    listen: z.array(listenAddress).default([]),
    /** HTTPS addresses, with the [tls] certificate (which must then name the autoconfig./autodiscover. hosts). */
    listen_tls: z.array(listenAddress).default([]),
    /** The POP3 host name clients are told to use; default: server.hostname. */
    hostname: dnsName.optional(),
    /** The mail domains answered for; an address of any other domain gets 404. */
    domains: z.array(dnsName).default([]),
    /** The implicit-TLS port clients use; default: the port of the first server.listen_tls address; 0: none is advertised. */
    pop3s_port: port.optional(),
    /** The STLS port clients use; default: the port of the first server.listen address; 0: none is advertised. */
    pop3_port: port.optional(),
    /** What clients log in with: the whole address or its local part. */
    username: z.enum(['address', 'local_part']).default('address'),
    /** The provider's name in Thunderbird and the profile; default: the address's domain. */
    display_name: label.optional(),
    display_short_name: label.optional(),
    /** Advice for clients: keep retrieved messages on the server (and for how many days; default server.expire). */
    leave_messages_on_server: z.boolean().default(false),
    days_to_leave_messages_on_server: z.number().int().min(1).max(36_500).optional(),
    /** The outgoing (submission) server; Thunderbird and Apple devices need one, so without it they are not fully configured. */
    smtp_host: dnsName.optional(),
    smtp_port: z.number().int().min(1).max(65535).default(587),
    /** "starttls" (port 587) or "tls" (implicit TLS, port 465); default: tls on 465, starttls otherwise. */
    smtp_security: z.enum(['starttls', 'tls']).optional(),
    /** Simultaneous HTTP connections per process. */
    max_connections: z.number().int().min(1).max(100_000).default(200),
  })
  .strict();

export type AutoconfigConfig = z.output<typeof AutoconfigConfigSchema>;
