/**
 * `poplar migrate`: move maildrops between stores (Maildir, PostgreSQL) or
 * pull one from a live POP3 server, keeping UIDLs, sizes, order and seen
 * state (docs/migration.md). argv → endpoints → src/migrate/run.ts.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { ConfigError } from '../config/errors.js';
import { EX_DATAERR, EX_NOUSER, EX_TEMPFAIL } from './exit-codes.js';

interface MigrateFlags {
  from: string;
  to: string;
  user?: string;
  all?: boolean;
  dryRun?: boolean;
  config?: string;
  passwordEnv?: string;
  passwordFile?: string;
  tls?: 'none' | 'starttls' | 'implicit';
  ca?: string;
  fingerprint?: string;
  insecure?: boolean;
  auth?: string;
  maxMessageSize?: number;
  timeout?: number;
  progress?: boolean;
}

function size(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kKmMgG])?i?[bB]?\s*$/.exec(v);
  if (m === null) throw new InvalidArgumentError('expected a size such as 10485760, 512k or 100M');
  const mult = { k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[(m[2] ?? '').toLowerCase() as 'k' | 'm' | 'g'] ?? 1;
  const n = Math.round(Number(m[1]) * mult);
  if (n < 1 || n > 2 * 1024 ** 3) throw new InvalidArgumentError('expected a size from 1 octet to 2G');
  return n;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}

export function registerMigrateCommand(program: Command): void {
  program
    .command('migrate')
    .description('move maildrops between Maildir and PostgreSQL, or from a POP3 server, keeping UIDLs (see docs/migration.md)')
    .requiredOption('--from <source>', 'maildir:ROOT, postgres, postgres:URL, pop3://USER@HOST[:PORT] or pop3s://USER@HOST[:PORT]')
    .requiredOption('--to <target>', 'maildir:ROOT, postgres or postgres:URL')
    .option('--user <name>', 'only this user (with a POP3 source: the target user, default the login name)')
    .option('--all', 'every user of the source store')
    .option('--dry-run', 'print what would move (users, messages, octets) and change nothing')
    .option('--config <file>', 'TOML configuration file ([store.postgres] for postgres)')
    .option('--password-env <var>', 'POP3 source: the password is in this environment variable')
    .option('--password-file <file>', 'POP3 source: the password is the first line of this file')
    .addOption(new Option('--tls <mode>', 'POP3 source: TLS mode (default: STLS for pop3://, implicit for pop3s://)').choices(['none', 'starttls', 'implicit']))
    .option('--ca <file>', 'POP3 source: trust anchors (PEM) instead of the system CAs')
    .option('--fingerprint <sha256>', 'POP3 source: pin the server certificate')
    .option('--insecure', 'POP3 source: accept any certificate')
    .option('--auth <mech>', 'POP3 source: login method (USER, APOP, a SASL mechanism)')
    .option('--max-message-size <size>', 'leave messages larger than this behind (default 256M)', size)
    .option('--timeout <seconds>', 'POP3 source: server silence limit (default 60)', positiveInt)
    .option('--no-progress', 'plain progress lines, even on a terminal')
    .action(async (opts: MigrateFlags) => {
      process.exitCode = await migrateCommand(opts);
    });
}

async function migrateCommand(opts: MigrateFlags): Promise<number> {
  const [{ parseEndpoint, describeEndpoint }, { openStore }, { migrateUser }, progressMod, { exitCodeOf }] = await Promise.all([
    import('../migrate/endpoints.js'),
    import('../migrate/stores.js'),
    import('../migrate/run.js'),
    import('../migrate/progress.js'),
    import('../migrate/exit.js'),
  ]);
  const { dryRun } = await import('../migrate/dry-run.js');
  const from = parseEndpoint(opts.from, '--from');
  const to = parseEndpoint(opts.to, '--to');
  if (opts.user !== undefined && opts.all === true) throw new ConfigError('--user and --all exclude each other');
  if (from.kind === 'pop3') {
    if (opts.all === true) throw new ConfigError('--all needs a store as the source; a POP3 source is one maildrop');
  } else {
    if (opts.user === undefined && opts.all !== true) throw new ConfigError('name the maildrop with --user NAME, or move every one with --all');
    for (const k of ['passwordEnv', 'passwordFile', 'tls', 'ca', 'fingerprint', 'insecure', 'auth'] as const) {
      if (opts[k] !== undefined) throw new ConfigError(`--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} applies to a pop3:// source only`);
    }
  }
  if (JSON.stringify(from) === JSON.stringify(to)) throw new ConfigError('--from and --to are the same store');
  const maxMessageOctets = opts.maxMessageSize ?? 256 * 1024 * 1024;

  const { createLogger } = await import('../observability/log.js');
  const logger = createLogger({ level: 'warn' });
  const soft = new AbortController();
  const onSignal = (): void => soft.abort(new Error('interrupted'));
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  const opened: { close?(): Promise<void> }[] = [];
  try {
    const target = await openStore(to, { config: opts.config, logger });
    opened.push(target);
    const source = from.kind === 'pop3' ? undefined : await openStore(from, { config: opts.config, logger });
    if (source !== undefined) opened.push(source);

    let password: string | undefined;
    if (from.kind === 'pop3') {
      const { readPassword } = await import('../migrate/pop3-source.js');
      password = await readPassword(opts);
    }
    const users = from.kind === 'pop3' ? [opts.user ?? from.user] : opts.all === true ? await source!.store.users() : [opts.user!];
    // Opening a PostgreSQL maildrop makes it when it is missing: a source user is looked up first.
    if (from.kind === 'postgres' && opts.user !== undefined && !(await source!.store.users()).includes(opts.user)) {
      process.stderr.write(`poplar migrate: no maildrop for ${opts.user} in ${describeEndpoint(from)}\n`);
      return EX_NOUSER;
    }
    process.stderr.write(`poplar migrate: ${describeEndpoint(from)} -> ${describeEndpoint(to)}: ${users.length} user${users.length === 1 ? '' : 's'}${opts.dryRun === true ? ' (dry run: nothing changes)' : ''}\n`);

    const pop3Options = (): import('../migrate/pop3-source.js').Pop3SourceOptions => ({
      password: password!,
      tls: opts.tls,
      ca: opts.ca,
      fingerprint: opts.fingerprint,
      insecure: opts.insecure,
      auth: opts.auth,
      maxMessageOctets,
      timeoutSeconds: opts.timeout,
      signal: soft.signal,
    });
    const openSourceFor = async (user: string, skip: (n: number, why: string) => void) => {
      if (from.kind === 'pop3') {
        const { openPop3Source } = await import('../migrate/pop3-source.js');
        return openPop3Source(from, pop3Options(), skip);
      }
      return source!.store.openSource(user, soft.signal);
    };

    if (opts.dryRun === true) {
      const lines = await dryRun(users, { from, to, openSource: openSourceFor, maxMessageOctets, classify: exitCodeOf });
      for (const l of lines.lines) process.stdout.write(l + '\n');
      return lines.exitCode;
    }

    const bar = opts.progress !== false && process.stderr.isTTY === true;
    const progress = bar ? new progressMod.BarProgress(process.stderr) : new progressMod.LineProgress(process.stderr);
    const crash = process.env['POPLAR_MIGRATE_CRASH_AFTER'];
    let exitCode = 0;
    const totals = { moved: 0, present: 0, skipped: 0, bytes: 0, failed: 0 };
    for (const user of users) {
      if (soft.signal.aborted) break;
      const r = await migrateUser(
        user,
        { openSource: (skip) => openSourceFor(user, skip), openTarget: () => target.store.openTarget(user, soft.signal) },
        { maxMessageOctets, progress, signal: soft.signal, crashAfter: crash !== undefined && /^\d+$/.test(crash) ? Number(crash) : undefined },
        exitCodeOf,
      );
      for (const s of r.skips) process.stderr.write(`poplar migrate: ${user}: skipped ${s}\n`);
      totals.moved += r.moved;
      totals.present += r.present;
      totals.skipped += r.skipped;
      totals.bytes += r.bytes;
      if (r.error !== undefined) {
        totals.failed++;
        if (exitCode === 0) exitCode = r.exitCode ?? EX_TEMPFAIL;
      }
    }
    progress.close();
    const { formatBytes } = await import('../fetch/progress.js');
    process.stdout.write(
      `${users.length} user${users.length === 1 ? '' : 's'}: ${totals.moved} messages moved (${formatBytes(totals.bytes)}), ${totals.present} already there, ${totals.skipped} skipped, ${totals.failed} failed\n`,
    );
    if (soft.signal.aborted && exitCode === 0) exitCode = EX_TEMPFAIL;
    if (exitCode === 0 && totals.skipped > 0) exitCode = EX_DATAERR;
    return exitCode;
  } catch (e) {
    if (e instanceof ConfigError) throw e;
    const code = exitCodeOf(e);
    process.stderr.write(`poplar migrate: ${(e as Error).message}\n`);
    return code;
  } finally {
    for (const s of opened.reverse()) await s.close?.().catch(() => undefined);
    logger.flush();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
