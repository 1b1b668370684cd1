/** `poplar fetch`: argv → fetch config → scheduler. The work is in src/fetch/. */
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError } from '../config/errors.js';
import { registerAuthorizeCommand } from './fetch-authorize.js';
import { registerImportStateCommand } from './fetch-import-state.js';
import type { AccountFlags, ResolvedAccount, ResolvedFetchConfig, SinkSpecValue } from '../fetch/config.js';
import type { SessionDeps } from '../fetch/session.js';
import type { SinkSpecInput } from '../fetch/sinks/index.js';
import type { Sink } from '../fetch/sinks/types.js';

interface FetchFlags extends AccountFlags {
  config?: string;
  once?: boolean;
  daemon?: boolean;
  json?: boolean;
  quiet?: boolean;
  progress?: boolean;
  account?: string[];
  logLevel?: string;
}

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}

function port(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new InvalidArgumentError('expected a port number 1-65535');
  return n;
}

function nonNegative(v: string): number {
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number >= 0');
  return n;
}

/**
 * The fetch clock. POPLAR_FETCH_NOW (ms since the epoch, or an ISO 8601
 * date) fixes it: a test aid for delete_after_days, never needed otherwise.
 */
export function fetchClock(env: NodeJS.ProcessEnv = process.env): () => number {
  const v = env['POPLAR_FETCH_NOW'];
  if (v === undefined || v === '') return Date.now;
  const t = /^\d+$/.test(v) ? Number(v) : Date.parse(v);
  if (!Number.isFinite(t)) throw new ConfigError(`POPLAR_FETCH_NOW: not a time: ${v}`);
  return () => t;
}

/** Maildir group commit by default when the account batches (the ledger never runs ahead of the flush). */
function sinkSpecFor(spec: SinkSpecValue, acct: ResolvedAccount): SinkSpecValue {
  if (spec['type'] === 'maildir' && spec['fsync'] === undefined && acct.batch > 1) return { ...spec, fsync: 'group' };
  return spec;
}

export function registerFetchCommand(program: Command): void {
  const fetch = program
    .command('fetch')
    .description('fetch mail from POP3 accounts into Maildir, mbox, an MDA, LMTP or an IMAP folder (see docs/fetch.md)')
    .option('--config <file>', 'TOML file with [[account]] tables')
    .option('--account <name>', 'only this account of the config (repeatable)', collect)
    .option('--once', 'fetch every account once and exit (default)')
    .option('--daemon', 'fetch on an interval until SIGTERM')
    .option('--json', 'print a JSON summary on stdout')
    .option('-q, --quiet', 'no progress bar and no summary line')
    .option('--no-progress', 'no progress bar, even on a terminal')
    .addOption(new Option('--log-level <level>', 'daemon log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'silent']))
    // one account on the command line
    .option('--name <name>', 'account name (names the ledger; default USER@HOST)')
    .option('--host <host>', 'POP3 server')
    .option('--port <port>', 'port (default 995 with --tls implicit, else 110)', port)
    .addOption(new Option('--tls <mode>', 'TLS mode').choices(['none', 'starttls', 'implicit']))
    .option('--ca <file>', 'trust anchors (PEM) instead of the system CAs')
    .option('--fingerprint <sha256>', 'pin the server certificate')
    .option('--insecure', 'accept any certificate')
    .option('--user <name>', 'login name')
    .option('--password-env <var>', 'password from this environment variable')
    .option('--password-command <cmd>', 'password: first line printed by this command')
    .option('--token-command <cmd>', 'OAuth 2.0 access token: first line printed by this command')
    .option('--auth <mech>', 'login method (USER, APOP, a SASL mechanism, XOAUTH2, OAUTHBEARER)')
    .option('--keep', 'leave messages on the server (a UIDL ledger remembers them)')
    .option('--delete', 'delete messages from the server once delivered')
    .option('--all', 'fetch every message, not only new ones')
    .option('--delete-after-days <n>', 'with --keep: delete messages delivered at least N days ago', nonNegative)
    .option('--skip-larger-than <size>', 'leave messages larger than this alone (e.g. 10M)')
    .option('--delete-larger-than <size>', 'delete messages larger than this without fetching them')
    .option('--maildir <dir>', 'deliver into this Maildir')
    .option('--mbox <file>', 'append to this mbox (mboxrd)')
    .option('--mda <cmd>', 'pipe each message into this command')
    .option('--lmtp <host:port>', 'deliver over LMTP')
    .option('--lmtp-recipient <address>', 'LMTP recipient (default: the local user name)')
    .option('--state <file>', 'the ledger file')
    .option('--batch <n>', 'group commit size (1 = fsync per message)', positiveInt)
    .option('--parallel <n>', 'Maildir: small messages written at the same time', positiveInt)
    .option('--timeout <seconds>', 'server silence limit', positiveInt)
    .action(async (opts: FetchFlags) => {
      process.exitCode = await fetchCommand(opts);
    });
  registerAuthorizeCommand(fetch);
  registerImportStateCommand(fetch);
}

async function fetchCommand(opts: FetchFlags): Promise<number> {
  // Loaded here, not at startup: other subcommands (serve) need none of it.
  // ../fetch/config.js (and zod with it) loads only for a config file or an unusual command line.
  const [{ plainConfigFromFlags }, { ProgressBar, summaryLine }, { runDaemon, runOnce }, { createSink }] = await Promise.all([
    import('../fetch/config-flags.js'),
    import('../fetch/progress.js'),
    import('../fetch/scheduler.js'),
    import('../fetch/sinks/index.js'),
  ]);
  if (opts.once === true && opts.daemon === true) throw new ConfigError('--once and --daemon exclude each other');
  let cfg: ResolvedFetchConfig;
  if (opts.config !== undefined) {
    const flagged = (['host', 'user', 'maildir', 'mbox', 'mda', 'lmtp'] as const).filter((k) => opts[k] !== undefined);
    if (flagged.length > 0) throw new ConfigError(`--${flagged[0]!} describes an account on the command line; with --config, accounts come from the file`);
    const { loadFetchConfig } = await import('../fetch/config.js');
    cfg = loadFetchConfig(opts.config);
    if (opts.account !== undefined) {
      const unknown = opts.account.filter((n) => !cfg.accounts.some((a) => a.name === n));
      if (unknown.length > 0) throw new ConfigError(`no account named ${unknown.join(', ')}`);
      cfg = { ...cfg, accounts: cfg.accounts.filter((a) => opts.account!.includes(a.name)) };
    }
  } else {
    cfg = plainConfigFromFlags(opts) ?? (await import('../fetch/config.js')).accountFromFlags(opts);
  }

  const soft = new AbortController();
  const hard = new AbortController();
  const onSignal = (): void => {
    if (soft.signal.aborted) hard.abort(new Error('stopped'));
    else soft.abort(new Error('stop requested'));
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  const deps: SessionDeps = {
    createSink: (spec, acct): Promise<Sink> => createSink(sinkSpecFor(spec, acct) as SinkSpecInput, { env: process.env, stateFile: path.resolve(acct.state), account: acct.name }),
    now: fetchClock(),
    stop: soft.signal,
    signal: hard.signal,
    env: process.env,
    tokenSources: new Map(),
    log: (level, msg) => process.stderr.write(`poplar fetch: ${level === 'warn' ? 'warning: ' : ''}${msg}\n`),
  };
  cfg = { ...cfg, accounts: cfg.accounts.map((a) => ({ ...a, state: path.resolve(a.state) })) };

  try {
    if (opts.daemon === true) {
      const { createLogger } = await import('../observability/log.js'); // the daemon logs; --once prints a summary
      const logger = createLogger({ level: (opts.logLevel ?? 'info') as 'info' });
      logger.info({ accounts: cfg.accounts.map((a) => a.name) }, 'fetch daemon started');
      await runDaemon(cfg, deps, {
        onReport: (r, next) => {
          const { account, ok, error, ...counts } = r;
          const nextInS = Math.round(next / 1000);
          if (ok) logger.info({ account, ...counts, nextInS }, 'fetched');
          else logger.warn({ account, error, exitCode: r.exitCode, nextInS }, 'fetch failed');
        },
      });
      logger.info('fetch daemon stopped');
      logger.flush();
      return 0;
    }

    const bar = opts.json !== true && opts.quiet !== true && opts.progress !== false && process.stderr.isTTY === true ? new ProgressBar(process.stderr) : undefined;
    const summary = await runOnce(cfg, bar ? { ...deps, progress: bar } : deps);
    bar?.clear();
    for (const r of summary.accounts) if (!r.ok) process.stderr.write(`poplar fetch: ${r.account}: ${r.error ?? 'failed'}\n`);
    if (opts.json === true) process.stdout.write(JSON.stringify(summary) + '\n');
    else if (opts.quiet !== true) process.stdout.write(summaryLine(summary) + '\n');
    return summary.exitCode;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

