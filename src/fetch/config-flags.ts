/**
 * `poplar fetch` with one account on the command line: the account table the
 * flags describe, and, for the usual form (a Maildir, a password from the
 * environment or a command, plain values), the resolved configuration built
 * without the zod schemas of ./config.ts. Loading zod costs about a tenth of
 * a second of CPU, which is a large part of a short fetch. Anything else goes
 * through the schema (`accountFromFlags` in ./config.ts), which also words
 * the errors; test/fetch/config-flags.test.ts checks that both give the same
 * configuration.
 */
import os from 'node:os';
import path from 'node:path';
import { ConfigError } from '../config/errors.js';
import type { ResolvedAccount, ResolvedFetchConfig, SinkSpecValue } from './config-schema.js';

export function defaultStateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env['XDG_STATE_HOME'];
  return path.join(xdg !== undefined && xdg !== '' ? xdg : path.join(os.homedir(), '.local', 'state'), 'poplar');
}

export function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? path.join(os.homedir(), p.slice(1)) : p;
}

/** Keys in a sink spec that are paths (resolved against the config file's directory). */
const PATH_KEYS = new Set(['path', 'dir', 'directory', 'file', 'maildir', 'mbox', 'ca']);

export function resolveSpec(spec: SinkSpecValue, base: string): SinkSpecValue {
  const out: SinkSpecValue = { ...spec };
  for (const [k, v] of Object.entries(out)) if (PATH_KEYS.has(k) && typeof v === 'string') out[k] = path.resolve(base, expandHome(v));
  return out;
}

/** The one-account-on-the-command-line form. */
export interface AccountFlags {
  host?: string;
  port?: number;
  tls?: string;
  ca?: string;
  fingerprint?: string;
  insecure?: boolean;
  user?: string;
  passwordEnv?: string;
  passwordCommand?: string;
  tokenCommand?: string;
  auth?: string;
  keep?: boolean;
  delete?: boolean;
  all?: boolean;
  maildir?: string;
  mbox?: string;
  mda?: string;
  lmtp?: string;
  lmtpRecipient?: string;
  state?: string;
  skipLargerThan?: string;
  deleteLargerThan?: string;
  deleteAfterDays?: number;
  name?: string;
  batch?: number;
  parallel?: number;
  timeout?: number;
}

/**
 * The `[[account]]` table the command line describes (as a config file would
 * write it), after the checks only the command line needs.
 */
export function accountTableFromFlags(f: AccountFlags): Record<string, unknown> {
  const missing = (['host', 'user'] as const).filter((k) => f[k] === undefined).map((k) => `--${k}`);
  if (missing.length) throw new ConfigError(`without --config, ${missing.join(' and ')} ${missing.length > 1 ? 'are' : 'is'} required`);
  const sinks = [f.maildir, f.mbox, f.mda, f.lmtp].filter((x) => x !== undefined).length;
  if (sinks !== 1) throw new ConfigError('name exactly one of --maildir, --mbox, --mda, --lmtp');
  if (f.keep === true && f.delete === true) throw new ConfigError('--keep and --delete exclude each other');
  if (f.keep !== true && f.delete !== true) throw new ConfigError('say --keep or --delete');
  const creds = [f.passwordEnv, f.passwordCommand, f.tokenCommand].filter((x) => x !== undefined).length;
  if (creds !== 1) throw new ConfigError('name exactly one of --password-env, --password-command, --token-command');
  let sink: SinkSpecValue;
  if (f.maildir !== undefined) sink = { type: 'maildir', path: f.maildir };
  else if (f.mbox !== undefined) sink = { type: 'mbox', path: f.mbox };
  else if (f.mda !== undefined) sink = { type: 'mda', command: f.mda };
  else {
    const m = /^(.+):(\d+)$/.exec(f.lmtp!);
    if (m === null) throw new ConfigError('--lmtp takes HOST:PORT');
    sink = { type: 'lmtp', host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]), recipient: f.lmtpRecipient ?? os.userInfo().username };
  }
  const account: Record<string, unknown> = {
    name: f.name ?? `${f.user}@${f.host}`.replace(/[^A-Za-z0-9._@+-]/g, '_').slice(0, 64),
    host: f.host,
    tls: f.tls ?? 'implicit',
    user: f.user,
    keep: f.keep === true,
    fetch: f.all === true ? 'all' : 'new',
    sink,
  };
  const set = (k: string, v: unknown): void => {
    if (v !== undefined) account[k] = v;
  };
  set('port', f.port);
  set('ca', f.ca);
  set('fingerprint', f.fingerprint);
  if (f.insecure === true) account['insecure'] = true;
  set('password_env', f.passwordEnv);
  set('password_command', f.passwordCommand);
  if (f.tokenCommand !== undefined) account['oauth2'] = { token_command: f.tokenCommand };
  set('auth', f.auth);
  set('state', f.state);
  set('skip_larger_than', f.skipLargerThan);
  set('delete_larger_than', f.deleteLargerThan);
  set('delete_after_days', f.deleteAfterDays);
  set('batch', f.batch);
  set('parallel', f.parallel);
  set('timeout', f.timeout);
  return account;
}

/** The schema's defaults (AccountSchema, FetchConfigSchema in ./config.ts) for what the command line cannot set. */
const ACCOUNT_DEFAULTS = {
  insecure: false,
  allow_plaintext_password: false,
  header_preview: 'top',
  timeout: 60,
  message_timeout: 3600,
  max_list_lines: 1_000_000,
  max_list_octets: 64 * 1024 * 1024,
  size_margin: 1024 * 1024,
  batch: 64,
  batch_ms: 50,
  parallel: 8,
} as const;
const FETCH_DEFAULTS = { max_concurrent: 4, interval: 300, jitter: 0.1, backoff_initial: 30, backoff_max: 3600 } as const;

const str = (v: unknown): boolean => typeof v === 'string' && v !== '';
const int = (v: unknown, min: number, max: number): boolean => Number.isInteger(v) && (v as number) >= min && (v as number) <= max;
/** What the schema would accept for each key the plain form may have. */
const PLAIN: Record<string, (v: unknown) => boolean> = {
  name: (v) => typeof v === 'string' && /^[A-Za-z0-9._@+-]{1,64}$/.test(v),
  host: str,
  user: str,
  tls: (v) => v === 'none' || v === 'starttls' || v === 'implicit',
  port: (v) => int(v, 1, 65535),
  insecure: (v) => v === true,
  password_env: str,
  password_command: str,
  keep: (v) => typeof v === 'boolean',
  fetch: (v) => v === 'new' || v === 'all',
  state: str,
  batch: (v) => int(v, 1, 10_000),
  parallel: (v) => int(v, 1, 64),
  timeout: (v) => typeof v === 'number' && Number.isFinite(v) && v > 0,
  sink: (v) => {
    if (typeof v !== 'object' || v === null) return false;
    const { type, path: p, ...rest } = v as Record<string, unknown>;
    return type === 'maildir' && str(p) && Object.keys(rest).length === 0;
  },
};

/**
 * The resolved configuration of the command line's account, or undefined
 * when it is not of the plain form (then `accountFromFlags` of ./config.ts
 * checks it). Throws ConfigError for what the command line itself gets wrong.
 */
export function plainConfigFromFlags(f: AccountFlags, cwd = process.cwd(), env: NodeJS.ProcessEnv = process.env): ResolvedFetchConfig | undefined {
  const a = accountTableFromFlags(f);
  for (const [k, v] of Object.entries(a)) if (PLAIN[k]?.(v) !== true) return undefined;
  if ((a['password_env'] === undefined) === (a['password_command'] === undefined)) return undefined;
  const { sink, state, port, ...rest } = a;
  const stateDir = path.resolve(cwd, expandHome(defaultStateDir(env)));
  const account = {
    ...ACCOUNT_DEFAULTS,
    ...rest,
    port: (port as number | undefined) ?? (a['tls'] === 'implicit' ? 995 : 110),
    sink: resolveSpec(sink as SinkSpecValue, cwd),
    rule: [],
    state: state !== undefined ? path.resolve(cwd, expandHome(state as string)) : path.join(stateDir, `${a['name'] as string}.ledger`),
  } as unknown as ResolvedAccount;
  return { fetch: { ...FETCH_DEFAULTS, state_dir: stateDir }, accounts: [account] };
}
