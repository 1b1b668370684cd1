/**
 * The sinks' configuration: one zod schema per kind (the TOML shape:
 * snake_case keys, durations in seconds) and a tagged union of them. Kept
 * apart from createSink (./index.ts) so that a fetch whose sink needs no
 * checking beyond the command line's does not load zod at start.
 */
import { z } from 'zod';
import { OAuth2Schema } from '../oauth2-schema.js';

const seconds = z.number().nonnegative();
const lineEnding = z.enum(['lf', 'crlf']).default('lf');

export const MaildirSinkSchema = z
  .object({
    type: z.literal('maildir'),
    path: z.string().min(1),
    /** true: durable per message; "group": durable at each flush (batch); false: never fsync. */
    fsync: z.union([z.boolean(), z.literal('group')]).default(true),
    create: z.boolean().default(true),
    line_ending: lineEnding,
  })
  .strict();

export const MboxSinkSchema = z
  .object({
    type: z.literal('mbox'),
    path: z.string().min(1),
    create: z.boolean().default(true),
    fsync: z.boolean().default(true),
    fcntl_lock: z.boolean().default(true),
    dotlock: z.boolean().default(true),
    lock_timeout: seconds.default(60),
    dotlock_stale: seconds.default(300),
    spool: z.boolean().default(true),
    spool_dir: z.string().min(1).optional(),
  })
  .strict();

export const MdaSinkSchema = z
  .object({
    type: z.literal('mda'),
    command: z.string().min(1),
    env: z.record(z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/, 'expected an environment variable name'), z.string()).optional(),
    cwd: z.string().min(1).optional(),
    line_ending: lineEnding,
    /** Seconds one delivery may take; 0 = no limit. */
    timeout: seconds.default(600),
    kill_grace: seconds.default(5),
    /** Give the MDA the complete message from a temporary file (default) instead of piping it while it arrives. */
    spool: z.boolean().default(true),
    spool_dir: z.string().min(1).optional(),
  })
  .strict();

const address = z.string().regex(/^[^\s<>\x00-\x1f\x7f]*$/, 'expected an address without spaces or angle brackets');

export const LmtpSinkSchema = z
  .object({
    type: z.literal('lmtp'),
    host: z.string().min(1).optional(),
    /** Default 24 when `host` is given. */
    port: z.number().int().min(1).max(65535).optional(),
    socket_path: z.string().min(1).optional(),
    lhlo: z.string().regex(/^[\x21-\x7e]+$/).optional(),
    recipient: address.min(1),
    /** Envelope sender; "" (default) is the null path <>. */
    from: address.default(''),
    timeout: seconds.default(300),
  })
  .strict()
  .superRefine((v, ctx) => {
    if ((v.host === undefined) === (v.socket_path === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'an LMTP sink needs either host (and port) or socket_path', path: ['host'] });
    }
    if (v.port !== undefined && v.host === undefined) {
      ctx.addIssue({ code: 'custom', message: 'port needs host', path: ['port'] });
    }
  });

export const ImapSinkSchema = z
  .object({
    type: z.literal('imap'),
    host: z.string().min(1),
    /** Default 993 with tls = "implicit", else 143. */
    port: z.number().int().min(1).max(65535).optional(),
    tls: z.enum(['none', 'starttls', 'implicit']).default('implicit'),
    /** Trust anchors (PEM file) instead of the system CAs. */
    ca: z.string().min(1).optional(),
    insecure: z.boolean().default(false),
    servername: z.string().min(1).optional(),
    /** Allow credentials without TLS to a host that is not loopback. */
    allow_plaintext_password: z.boolean().default(false),
    user: z.string().min(1),
    password: z.string().min(1).optional(),
    password_env: z.string().min(1).optional(),
    password_command: z.string().min(1).optional(),
    oauth2: OAuth2Schema.optional(),
    folder: z.string().regex(/^[^\x00-\x1f\x7f]+$/, 'expected a folder name such as "INBOX" or "Archive/POP"').default('INBOX'),
    /** Create the folder if the server says it does not exist. */
    create: z.boolean().default(false),
    /** The appended message's internal date (what Gmail sorts by): its Date header, or the time of the APPEND. */
    internal_date: z.enum(['date', 'now']).default('date'),
    timeout: seconds.positive().default(300),
    /** Connections used at once for messages delivered together (1: one message at a time, in order). */
    connections: z.number().int().min(1).max(16).default(4),
    /** Messages are held in memory for APPEND: larger ones are refused. */
    max_size: z.union([z.number().int().positive(), z.string().regex(/^\s*\d+\s*[kKmMgG]?\s*$/, 'expected a size such as "100M"')]).default(100 * 1024 * 1024),
  })
  .strict()
  .superRefine((v, ctx) => {
    const pw = [v.password, v.password_env, v.password_command].filter((x) => x !== undefined).length;
    if (v.oauth2 === undefined && pw !== 1) ctx.addIssue({ code: 'custom', message: 'an IMAP sink needs exactly one of password, password_env, password_command (or oauth2)', path: ['password'] });
    if (v.oauth2 !== undefined && pw !== 0) ctx.addIssue({ code: 'custom', message: 'oauth2 and a password exclude each other', path: ['oauth2'] });
    if (v.insecure && v.ca !== undefined) ctx.addIssue({ code: 'custom', message: 'ca and insecure exclude each other', path: ['ca'] });
  });

export const SinkSpecSchema = z.discriminatedUnion('type', [MaildirSinkSchema, MboxSinkSchema, MdaSinkSchema, LmtpSinkSchema, ImapSinkSchema]);

/** A sink as written in the configuration (defaults may be left out). */
export type SinkSpecInput = z.input<typeof SinkSpecSchema>;
/** A validated sink spec with every default filled in. */
export type SinkSpec = z.output<typeof SinkSpecSchema>;
