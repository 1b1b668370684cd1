/** `poplar fetch authorize ACCOUNT`: OAuth 2.0 sign-in for an account of a fetch config. The work is in src/fetch/authorize.ts. */
import { type Command, InvalidArgumentError } from 'commander';
import { ConfigError } from '../config/errors.js';
import { EX_CONFIG, EX_OK, EX_TEMPFAIL } from './exit-codes.js';

interface AuthorizeFlags {
  config?: string | undefined;
  device?: boolean;
  browser?: boolean;
  open?: boolean | undefined;
  wait?: number | undefined;
  sink?: boolean;
}

function seconds(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 86_400) throw new InvalidArgumentError('expected a number of seconds, 1-86400');
  return n;
}

export function registerAuthorizeCommand(fetch: Command): void {
  fetch
    .command('authorize')
    .description('sign in with OAuth 2.0 and keep the refresh token in the account\'s token cache, or with --sink in its IMAP sink\'s (see docs/fetch.md)')
    .argument('<account>', 'the account\'s name in the config')
    .option('--sink', 'sign in for the IMAP sink the account delivers into (a Gmail or Microsoft 365 mailbox), not for the POP3 account')
    .option('--config <file>', 'TOML file with [[account]] tables')
    .option('--device', 'device flow: print a URL and a code to enter on any device')
    .option('--browser', 'browser flow: sign in in a browser on this machine (loopback redirect, PKCE)')
    .option('--no-open', 'print the URL only; do not start a browser')
    .option('--wait <seconds>', 'give up after this long without a sign-in (default 600)', seconds)
    .action(async (account: string, opts: AuthorizeFlags, cmd: Command) => {
      process.exitCode = await authorizeCommand(account, { ...opts, config: opts.config ?? (cmd.parent?.opts() as { config?: string } | undefined)?.config });
    });
}

async function authorizeCommand(account: string, opts: AuthorizeFlags): Promise<number> {
  const [{ loadFetchConfig }, { authorizeAccount, authorizeImapSinks }, { CredentialError }] = await Promise.all([
    import('../fetch/config.js'),
    import('../fetch/authorize.js'),
    import('../fetch/credential-error.js'),
  ]);
  if (opts.config === undefined) throw new ConfigError('authorize needs --config FILE (the account is one of its [[account]] tables)');
  if (opts.device === true && opts.browser === true) throw new ConfigError('--device and --browser exclude each other');
  const cfg = loadFetchConfig(opts.config);
  const acct = cfg.accounts.find((a) => a.name === account);
  if (acct === undefined) throw new ConfigError(`no account named ${account} in ${opts.config}`);
  const stop = new AbortController();
  const onSignal = (): void => stop.abort(new Error('interrupted'));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const how = {
      flow: opts.device === true ? ('device' as const) : opts.browser === true ? ('browser' as const) : undefined,
      open: opts.open,
      waitSeconds: opts.wait,
      say: (line: string) => process.stderr.write(`${line}\n`),
      signal: stop.signal,
    };
    const files = opts.sink === true ? (await authorizeImapSinks(cfg, account, how)).flatMap((r) => r.cacheFiles) : (await authorizeAccount(acct, how)).cacheFiles;
    process.stdout.write(`${account}${opts.sink === true ? ' (IMAP sink)' : ''}: signed in; the refresh token is kept in ${files.join(', ')}\n`);
    return EX_OK;
  } catch (e) {
    if (!(e instanceof CredentialError)) throw e;
    process.stderr.write(`poplar fetch authorize: ${account}: ${e.message}\n`);
    return e.temporary ? EX_TEMPFAIL : EX_CONFIG;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
