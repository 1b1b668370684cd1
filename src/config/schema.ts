import { z } from 'zod';
import { AdminConfigSchema } from '../admin/config.js';
import { OAuthConfigSchema } from '../auth/oauth/config.js';
import { AutoconfigConfigSchema } from '../autoconfig/config.js';
import { PostgresConfigSchema } from '../auth/postgres/config.js';
import { LmtpConfigSchema, QuotaConfigSchema } from '../delivery/config.js';
import { PostgresStoreConfigSchema } from '../store/postgres/config.js';
import { SniEntrySchema } from './sni.js';

/** host:port, IPv6 in brackets: `[::1]:110`. */
const listenAddress = z.string().regex(/^(\[[0-9a-fA-F:.]+\]|[^\s:[\]]+):\d{1,5}$/, 'expected HOST:PORT');

const seconds = z.number().nonnegative();

/** A user or group name as getent(1) takes it, or a numeric id. */
const accountName = z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\$?$/, 'expected a user or group name');

export const ConfigSchema = z
  .object({
    data_dir: z.string().min(1).default('./poplar-data'),
    log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    log_format: z.enum(['auto', 'json', 'pretty']).default('auto'),
    server: z
      .object({
        listen: z.array(listenAddress).default(['127.0.0.1:1110']),
        listen_tls: z.array(listenAddress).default(['127.0.0.1:1995']),
        hostname: z.string().min(1).optional(),
        implementation: z.string().regex(/^[\x21-\x7e][\x20-\x7e]*$/).max(100).default('Poplar'),
        /** Cleartext logins without TLS: never, only from loopback addresses, or always. */
        plaintext_auth: z.enum(['never', 'loopback', 'always']).default('loopback'),
        max_line_length: z.number().int().min(255).max(1_048_576).default(4096),
        max_auth_line_length: z.number().int().min(255).max(1_048_576).default(16_384),
        max_bad_commands: z.number().int().min(1).default(10),
        max_connections: z.number().int().min(1).default(20_000),
        max_connections_per_ip: z.number().int().min(1).default(100),
        login_timeout: seconds.default(60),
        /** Read a PROXY protocol header (v1 or v2) before anything else on every listener. */
        proxy_protocol: z.boolean().default(false),
        /** The only peers a PROXY protocol header is taken from (CIDRs); every other connection is closed. */
        trusted_proxies: z.array(z.string()).default([]),
        /** Total seconds from the greeting to a successful login, whatever the client sends meanwhile; 0 = no limit. */
        login_deadline: seconds.default(120),
        /** Client addresses are counted per prefix of this many bits (connection limit per address, login throttle). */
        ipv4_prefix: z.number().int().min(1).max(32).default(32),
        ipv6_prefix: z.number().int().min(1).max(128).default(64),
        idle_timeout: seconds.min(600, 'RFC 1939 §3 requires at least 10 minutes').default(600),
        /** Delay before answering the first failed login; it doubles per failure from the same address or for the same user. */
        auth_failure_delay: seconds.default(2),
        auth_failure_max_delay: seconds.default(30),
        /** Failed logins from one address (IPv6: one /64) within 15 minutes after which it is refused outright; 0 disables. */
        auth_block_after: z.number().int().nonnegative().default(100),
        /** RFC 1939 APOP (MD5 of a greeting timestamp and the cleartext secret): weak, off by default. */
        apop: z.boolean().default(false),
        /** SASL mechanisms to offer, in this order; default: every mechanism the configured backends can serve. */
        sasl_mechanisms: z.array(z.string().regex(/^[A-Z0-9-_]{1,20}$/, 'expected a SASL mechanism name in upper case')).optional(),
        shutdown_grace: seconds.default(10),
        /** RFC 2449 LOGIN-DELAY, seconds between logins; advertised only when set. */
        login_delay: z.number().int().nonnegative().optional(),
        /** RFC 2449 EXPIRE: days messages are kept, or "NEVER"; advertised only when set. */
        expire: z.union([z.number().int().nonnegative(), z.literal('NEVER')]).optional(),
        /** The account every process switches to once the listeners are bound (name or number); its primary group unless `group` says otherwise. */
        user: accountName.optional(),
        group: accountName.optional(),
        /** Run as root when `user` is not set (otherwise Poplar refuses to start as root). */
        allow_root: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    tls: z
      .object({
        cert: z.string().min(1).optional(),
        key: z.string().min(1).optional(),
        min_version: z.enum(['TLSv1.2', 'TLSv1.3']).default('TLSv1.2'),
        /** CA bundle (PEM) for client certificates; when set, clients are asked for one and SASL EXTERNAL is offered to those that present a valid one. */
        client_ca: z.string().min(1).optional(),
        /** Certificates chosen by the name the client asks for (SNI): `[[tls.sni]] name, cert, key`. */
        sni: z.array(SniEntrySchema).default([]),
      })
      .strict()
      .prefault({}),
    store: z
      .object({
        /** Where mail is kept: Maildirs on this machine, or PostgreSQL (for several nodes). */
        type: z.enum(['maildir', 'postgres']).default('maildir'),
        maildir_root: z.string().min(1).optional(),
        /** The PostgreSQL store: the [auth.postgres] settings plus lease_timeout (seconds). */
        postgres: PostgresStoreConfigSchema.optional(),
        /** Seconds after which another process's dovecot-uidlist.lock is considered stale. */
        uidlist_lock_stale: seconds.default(120),
        fsync: z.boolean().default(true),
        /** Open a maildrop directory that is a symbolic link out of the Maildir root (or, for a path from the user database, reached through one). */
        allow_symlinked_maildrops: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    /** The LMTP server for the MTA (docs/delivery.md); off until `listen` names an address. */
    lmtp: LmtpConfigSchema.prefault({}),
    /** The admin listener and socket (docs/monitoring.md): metrics, health, who and kick; off until configured. */
    admin: AdminConfigSchema.prefault({}),
    /** Mail-client setup over HTTP (docs/client-setup.md); off until `listen` or `listen_tls` names an address. */
    autoconfig: AutoconfigConfigSchema.prefault({}),
    /** Default limits of every maildrop (a user's own from the user database come first). */
    quota: QuotaConfigSchema.prefault({}),
    auth: z
      .object({
        /** Where passwords are checked. */
        type: z.enum(['passwd-file', 'postgres']).default('passwd-file'),
        users: z.string().min(1).optional(),
        postgres: PostgresConfigSchema.optional(),
        /** OAuth 2.0 bearer tokens (XOAUTH2, OAUTHBEARER); offered only when configured. */
        oauth: OAuthConfigSchema.optional(),
      })
      .strict()
      .prefault({}),
  })
  .strict();

export type Config = z.infer<typeof ConfigSchema>;
