/**
 * The fetcher's sinks: `createSink` turns a spec (its schemas are in
 * ./schema.ts) into a Sink.
 *
 * ```toml
 * [sink]                          # or [accounts.x.sink]
 * type = "maildir"                # maildir | mbox | mda | lmtp | imap
 * path = "/home/me/Maildir"
 * fsync = "group"                 # true | false | "group"
 * ```
 */
import { readFile } from 'node:fs/promises';
import type { Logger } from '../../observability/log.js';
import { CredentialError, readSecret, TokenSource } from '../credentials.js';
import type { z } from 'zod';
import type { ImapSinkSchema, SinkSpec, SinkSpecInput } from './schema.js';
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
export type { SinkSpec, SinkSpecInput } from './schema.js';


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
  /** The account's name, for the sign-in an error message asks for (`poplar fetch authorize ACCOUNT --sink`). */
  readonly account?: string;
}

/** Where an IMAP sink of `user` at `host` caches its tokens for the account whose ledger is `stateFile`. */
export function imapTokenCacheFile(stateFile: string, user: string, host: string): string {
  return `${stateFile}.imap-${`${user}@${host}`.replace(/[^A-Za-z0-9._@+-]/g, '_')}.token`;
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
  const cacheFile = deps.stateFile !== undefined && s.oauth2.token_command === undefined ? imapTokenCacheFile(deps.stateFile, s.user, s.host) : undefined;
  const tokens = new TokenSource(s.oauth2, { env, ...(cacheFile !== undefined ? { cacheFile } : {}), account: `${deps.account ?? 'ACCOUNT'} --sink` });
  return { kind: 'oauth2', get: (signal, fresh) => tokens.get(signal, fresh) };
}

/**
 * A Maildir spec of the form the command line builds (`type`, `path`, and
 * perhaps `fsync`), with the defaults MaildirSinkSchema fills in; undefined
 * for anything else, which the schema checks. Saves loading zod (a tenth of
 * a second of CPU) at the start of `poplar fetch --maildir`.
 */
export function plainMaildir(spec: SinkSpecInput): SinkSpec | undefined {
  const { type, path, fsync, ...rest } = spec as Record<string, unknown>;
  if (type !== 'maildir' || typeof path !== 'string' || path === '' || Object.keys(rest).length > 0) return undefined;
  if (fsync !== undefined && fsync !== true && fsync !== false && fsync !== 'group') return undefined;
  return { type: 'maildir', path, fsync: fsync ?? true, create: true, line_ending: 'lf' };
}

/**
 * Validate `spec` (rejects with a ZodError when it is wrong) and build its
 * sink. Checks that need the machine are made here, so a bad setup fails
 * before any message is fetched: an mbox sink with fcntl locking needs the
 * fs-ext native module to load.
 */
export async function createSink(spec: SinkSpecInput, deps: SinkDeps = {}): Promise<Sink> {
  const s = plainMaildir(spec) ?? (await import('./schema.js')).SinkSpecSchema.parse(spec);
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
