/**
 * The fetcher's sinks and their configuration: one zod schema per kind (the
 * TOML shape: snake_case keys, durations in seconds), a tagged union of them,
 * and `createSink` that turns a spec into a Sink.
 *
 * ```toml
 * [sink]                          # or [accounts.x.sink]
 * type = "maildir"                # maildir | mbox | mda | lmtp | imap
 * path = "/home/me/Maildir"
 * fsync = "group"                 # true | false | "group"
 * ```
 */
import { readFile } from 'node:fs/promises';
import { z } from 'zod';
import type { Logger } from '../../observability/log.js';
import { CredentialError, readSecret, TokenSource } from '../credentials.js';
import { OAuth2Schema } from '../oauth2-schema.js';
import type { ImapCredentials } from './imap.js';
import { LmtpSink } from './lmtp.js';
import { MaildirSink } from './maildir.js';
import { MboxSink } from './mbox.js';
import { MdaSink } from './mda.js';
import type { Sink } from './types.js';
import { fcntlAvailable } from './fcntl-lock.js';
import { SinkError } from './util.js';

export type { DeliveryInfo, Sink } from './types.js';
export { SinkError } from './util.js';
export { MaildirSink, maildirFolderPath, type MaildirSinkOptions } from './maildir.js';
export { MboxSink, MboxrdQuoter, asctime, senderFromHead, type MboxSinkOptions } from './mbox.js';
export { MdaSink, type MdaSinkOptions } from './mda.js';
export { LmtpSink, type LmtpSinkOptions, type LmtpAddress } from './lmtp.js';
// ImapSink itself is imported from './imap.js': loading it here would load imapflow for every fetch.
export type { ImapSinkOptions, ImapCredentials } from './imap.js';
export { fcntlAvailable } from './fcntl-lock.js';

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

export interface SinkDeps {
  /** Where the MDA sink logs an MDA that exited 0 before reading the whole message. */
  readonly logger?: Logger;
  /** Where password_env and the OAuth secrets' _env settings are read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  /**
   * The account's ledger file: an IMAP sink with a token endpoint caches its
   * access token beside it (`<ledger>.imap-<user>@<host>.token`, mode 0600).
   */
  readonly stateFile?: string;
}

function sizeOf(v: number | string): number {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+)\s*([kKmMgG])?/.exec(v)!;
  return Number(m[1]) * ({ k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'k'] ?? 1);
}

function imapCredentials(s: z.output<typeof ImapSinkSchema>, deps: SinkDeps): ImapCredentials {
  const env = deps.env ?? process.env;
  if (s.oauth2 === undefined) {
    return { kind: 'password', get: (signal) => readSecret({ value: s.password, env: s.password_env, command: s.password_command }, 'IMAP sink password', env, signal) };
  }
  const cacheFile = deps.stateFile !== undefined && s.oauth2.token_command === undefined ? `${deps.stateFile}.imap-${`${s.user}@${s.host}`.replace(/[^A-Za-z0-9._@+-]/g, '_')}.token` : undefined;
  const tokens = new TokenSource(s.oauth2, { env, ...(cacheFile !== undefined ? { cacheFile } : {}) });
  return { kind: 'oauth2', get: (signal, fresh) => tokens.get(signal, fresh) };
}

/**
 * Validate `spec` (rejects with a ZodError when it is wrong) and build its
 * sink. Checks that need the machine are made here, so a bad setup fails
 * before any message is fetched: an mbox sink with fcntl locking needs the
 * fs-ext native module to load.
 */
export async function createSink(spec: SinkSpecInput, deps: SinkDeps = {}): Promise<Sink> {
  const s = SinkSpecSchema.parse(spec);
  if (s.type === 'mbox' && s.fcntl_lock && !fcntlAvailable()) {
    throw new SinkError('mbox sink: fcntl locking needs the fs-ext native module, which did not load (set fcntl_lock = false to rely on the dotlock alone)', {
      temporary: false,
    });
  }
  switch (s.type) {
    case 'maildir':
      return new MaildirSink({ path: s.path, fsync: s.fsync, create: s.create, lineEnding: s.line_ending });
    case 'mbox':
      return new MboxSink({
        path: s.path,
        create: s.create,
        fsync: s.fsync,
        fcntlLock: s.fcntl_lock,
        dotlock: s.dotlock,
        lockTimeoutMs: s.lock_timeout * 1000,
        dotlockStaleSeconds: s.dotlock_stale,
        spool: s.spool,
        ...(s.spool_dir !== undefined ? { spoolDir: s.spool_dir } : {}),
      });
    case 'mda':
      return new MdaSink({
        command: s.command,
        lineEnding: s.line_ending,
        timeoutMs: s.timeout * 1000,
        killGraceMs: s.kill_grace * 1000,
        spool: s.spool,
        ...(s.spool_dir !== undefined ? { spoolDir: s.spool_dir } : {}),
        ...(s.env !== undefined ? { env: s.env } : {}),
        ...(s.cwd !== undefined ? { cwd: s.cwd } : {}),
        ...(deps.logger !== undefined ? { logger: deps.logger } : {}),
      });
    case 'lmtp': {
      const common = {
        recipient: s.recipient,
        from: s.from,
        timeoutMs: s.timeout * 1000,
        ...(s.lhlo !== undefined ? { lhlo: s.lhlo } : {}),
      };
      return s.socket_path !== undefined
        ? new LmtpSink({ socketPath: s.socket_path, ...common })
        : new LmtpSink({ host: s.host!, port: s.port ?? 24, ...common });
    }
    case 'imap': {
      let ca: Buffer | undefined;
      if (s.ca !== undefined) {
        try {
          ca = await readFile(s.ca);
        } catch (e) {
          throw new CredentialError(`IMAP sink: cannot read CA file ${s.ca}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, false);
        }
      }
      const { ImapSink } = await import('./imap.js'); // imapflow and its dependencies load only for an IMAP sink
      return new ImapSink({
        host: s.host,
        tls: s.tls,
        insecure: s.insecure,
        allowPlaintextPassword: s.allow_plaintext_password,
        user: s.user,
        credentials: imapCredentials(s, deps),
        folder: s.folder,
        create: s.create,
        internalDate: s.internal_date,
        timeoutMs: s.timeout * 1000,
        maxMessageOctets: sizeOf(s.max_size),
        connections: s.connections,
        ...(s.port !== undefined ? { port: s.port } : {}),
        ...(ca !== undefined ? { ca } : {}),
        ...(s.servername !== undefined ? { servername: s.servername } : {}),
      });
    }
  }
}
