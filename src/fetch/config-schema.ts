/**
 * The fetch configuration's schemas (zod) and the types they give, apart
 * from ./config.ts (reading and resolving) so that ./config-flags.ts can
 * name these types without an import circle.
 */
import { z } from 'zod';
import { OAuth2Schema } from './oauth2-schema.js';
import { SinkSpecSchema } from './sinks/schema.js';

/** `10485760`, `"10M"`, `"512k"`, `"1G"` (binary multiples). */
const bytes = z.union([
  z.number().int().nonnegative(),
  z
    .string()
    .regex(/^\s*\d+(\.\d+)?\s*([kKmMgG]i?[bB]?|[bB])?\s*$/, 'expected a size such as 1048576, "512k" or "10M"')
    .transform((s) => parseSize(s)),
]);

export function parseSize(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgG])?/.exec(s);
  if (m === null) throw new RangeError(`bad size ${s}`);
  const mult = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  return Math.round(Number(m[1]) * mult);
}

const nonEmpty = z.string().min(1);

/** A sink spec (see src/fetch/sinks/index.ts): checked against SinkSpecSchema, passed as written to createSink(). */
const SinkSpec = z.record(z.string(), z.unknown()).superRefine((v, ctx) => {
  const r = SinkSpecSchema.safeParse(v);
  if (!r.success) for (const i of r.error.issues) ctx.addIssue({ code: 'custom', path: i.path, message: i.message });
});

export const RuleSchema = z
  .object({
    /** Header field name (case-insensitive); with `match`, a regular expression on its unfolded value. */
    header: nonEmpty.optional(),
    match: nonEmpty.optional(),
    /** Match case-sensitively (default: ignore case). */
    case_sensitive: z.boolean().default(false),
    /** Size conditions in octets (the size the server announces). */
    larger_than: bytes.optional(),
    smaller_than: bytes.optional(),
    /** What to do: deliver to a Maildir folder of the account's sink, to another sink, or throw away. */
    folder: nonEmpty.optional(),
    sink: z.union([nonEmpty, SinkSpec]).optional(),
    discard: z.literal(true).optional(),
  })
  .strict()
  .superRefine((r, ctx) => {
    if ((r.header === undefined) !== (r.match === undefined)) ctx.addIssue({ code: 'custom', message: 'header and match go together' });
    if (r.header === undefined && r.larger_than === undefined && r.smaller_than === undefined) ctx.addIssue({ code: 'custom', message: 'a rule needs header+match, larger_than or smaller_than' });
    const actions = [r.folder, r.sink, r.discard].filter((x) => x !== undefined).length;
    if (actions !== 1) ctx.addIssue({ code: 'custom', message: 'a rule needs exactly one of folder, sink, discard' });
    if (r.match !== undefined) {
      try {
        new RegExp(r.match);
      } catch (e) {
        ctx.addIssue({ code: 'custom', message: `match: ${(e as Error).message}` });
      }
    }
    if (r.folder !== undefined && !/^[^/\0]+$/.test(r.folder)) ctx.addIssue({ code: 'custom', message: 'folder must be a Maildir++ folder name such as ".Lists.node"' });
  });

export const AccountSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9._@+-]{1,64}$/, 'letters, digits and . _ @ + - only (it names the ledger file)'),
    host: nonEmpty,
    port: z.number().int().min(1).max(65535).optional(),
    tls: z.enum(['none', 'starttls', 'implicit']).default('implicit'),
    /** Trust anchors (PEM file) instead of the system CAs. */
    ca: nonEmpty.optional(),
    /** Pin the server certificate by its SHA-256 fingerprint. */
    fingerprint: nonEmpty.optional(),
    /** Accept any certificate (trusted paths only). */
    insecure: z.boolean().default(false),
    servername: nonEmpty.optional(),
    /** Allow cleartext passwords without TLS to a host that is not loopback. */
    allow_plaintext_password: z.boolean().default(false),
    user: nonEmpty,
    /** The password: inline, from an environment variable, or the first line a command prints. */
    password: nonEmpty.optional(),
    password_env: nonEmpty.optional(),
    password_command: nonEmpty.optional(),
    /** Login method: USER, APOP or a SASL mechanism; default the strongest offered. */
    auth: nonEmpty.optional(),
    oauth2: OAuth2Schema.optional(),
    /** Leave messages on the server (the ledger remembers them) instead of deleting them once delivered. */
    keep: z.boolean().default(true),
    /** With keep: delete messages delivered at least this many days ago. */
    delete_after_days: z.number().nonnegative().optional(),
    /** `new`: only messages the ledger does not know; `all`: every message, every time. */
    fetch: z.enum(['new', 'all']).default('new'),
    skip_larger_than: bytes.optional(),
    delete_larger_than: bytes.optional(),
    /** Where mail goes: a sink spec, or the name of a `[sinks.NAME]` table. */
    sink: z.union([nonEmpty, SinkSpec]),
    rule: z.array(RuleSchema).default([]),
    /** How rules see headers: `top` (TOP n 0 before RETR) or `retr` (read from the message itself). */
    header_preview: z.enum(['top', 'retr']).default('top'),
    /** Ledger file; default `<state_dir>/<name>.ledger`. */
    state: nonEmpty.optional(),
    /** Seconds the server may stay silent. */
    timeout: z.number().positive().default(60),
    /** Seconds one reply (a message, a TOP, the UIDL or LIST listing) may take in all, however steadily it trickles. */
    message_timeout: z.number().positive().default(3600),
    /** Bounds of the UIDL and LIST listings: lines, and octets (a server that never ends one is stopped there). */
    max_list_lines: z.number().int().min(1).default(1_000_000),
    max_list_octets: bytes.refine((n) => n >= 1, 'must be at least 1').default(64 * 1024 * 1024),
    /** How far a message may run past the size LIST announced: the larger of this and 10 % of that size. */
    size_margin: bytes.default(1024 * 1024),
    /** Group commit: flush the sink and record the UIDLs every `batch` messages or `batch_ms` milliseconds. 1 = per message. */
    batch: z.number().int().min(1).max(10_000).default(64),
    batch_ms: z.number().int().min(0).default(50),
    /** Maildir: small messages delivered at the same time (1 = one after the other). Other sinks take one at a time, in order. */
    parallel: z.number().int().min(1).max(64).default(8),
  })
  .strict()
  .superRefine((a, ctx) => {
    const pw = ['password', 'password_env', 'password_command'].filter((k) => (a as Record<string, unknown>)[k] !== undefined).length;
    if (a.oauth2 === undefined && pw !== 1) ctx.addIssue({ code: 'custom', message: 'set exactly one of password, password_env, password_command (or oauth2)' });
    if (a.oauth2 !== undefined && pw !== 0) ctx.addIssue({ code: 'custom', message: 'oauth2 and a password exclude each other' });
    const trust = [a.ca !== undefined, a.fingerprint !== undefined, a.insecure].filter(Boolean).length;
    if (trust > 1) ctx.addIssue({ code: 'custom', message: 'ca, fingerprint and insecure exclude each other' });
    if (a.delete_after_days !== undefined && !a.keep) ctx.addIssue({ code: 'custom', message: 'delete_after_days needs keep = true (without keep, mail is deleted once delivered)' });
  });

export const FetchConfigSchema = z
  .object({
    fetch: z
      .object({
        /** Directory for ledgers; default $XDG_STATE_HOME/poplar or ~/.local/state/poplar. */
        state_dir: nonEmpty.optional(),
        /** Accounts fetched at the same time. */
        max_concurrent: z.number().int().min(1).max(256).default(4),
        /** Daemon: seconds between fetches of an account, and the random spread around it (fraction). */
        interval: z.number().positive().default(300),
        jitter: z.number().min(0).max(1).default(0.1),
        /** Daemon: first retry after an error (seconds), doubling up to backoff_max. */
        backoff_initial: z.number().positive().default(30),
        backoff_max: z.number().positive().default(3600),
      })
      .strict()
      .prefault({}),
    sinks: z.record(z.string(), SinkSpec).default({}),
    account: z.array(AccountSchema).min(1, 'no [[account]] configured'),
  })
  .strict()
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    for (const [i, a] of c.account.entries()) {
      if (names.has(a.name)) ctx.addIssue({ code: 'custom', path: ['account', i, 'name'], message: `duplicate account name ${a.name}` });
      names.add(a.name);
      const refs = [a.sink, ...a.rule.map((r) => r.sink)].filter((s): s is string => typeof s === 'string');
      for (const r of refs) if (!(r in c.sinks)) ctx.addIssue({ code: 'custom', path: ['account', i], message: `unknown sink ${JSON.stringify(r)} (define [sinks.${r}])` });
    }
  });

export type FetchConfig = z.infer<typeof FetchConfigSchema>;
export type AccountConfig = z.infer<typeof AccountSchema>;
export type RuleConfig = z.infer<typeof RuleSchema>;
export type SinkSpecValue = Record<string, unknown>;

/** An account with everything resolved: absolute paths, named sinks looked up, ledger file chosen. */
export interface ResolvedAccount extends Omit<AccountConfig, 'sink' | 'rule' | 'state' | 'port'> {
  readonly port: number;
  readonly sink: SinkSpecValue;
  readonly rule: readonly (Omit<RuleConfig, 'sink'> & { sink?: SinkSpecValue; sinkKey?: string })[];
  readonly state: string;
}

export interface ResolvedFetchConfig {
  readonly fetch: FetchConfig['fetch'] & { state_dir: string };
  readonly accounts: readonly ResolvedAccount[];
}
