/**
 * The fetcher's sinks and their configuration: one zod schema per kind (the
 * TOML shape: snake_case keys, durations in seconds), a tagged union of them,
 * and `createSink` that turns a spec into a Sink.
 *
 * ```toml
 * [sink]                          # or [accounts.x.sink]
 * type = "maildir"                # maildir | mbox | mda | lmtp
 * path = "/home/me/Maildir"
 * fsync = "group"                 # true | false | "group"
 * ```
 */
import { z } from 'zod';
import type { Logger } from '../../observability/log.js';
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

export const SinkSpecSchema = z.discriminatedUnion('type', [MaildirSinkSchema, MboxSinkSchema, MdaSinkSchema, LmtpSinkSchema]);

/** A sink as written in the configuration (defaults may be left out). */
export type SinkSpecInput = z.input<typeof SinkSpecSchema>;
/** A validated sink spec with every default filled in. */
export type SinkSpec = z.output<typeof SinkSpecSchema>;

export interface SinkDeps {
  /** Where the MDA sink logs an MDA that exited 0 before reading the whole message. */
  readonly logger?: Logger;
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
  }
}
