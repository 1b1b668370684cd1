/** `poplar fetch import-state ACCOUNT --from KIND:FILE`: take over another fetcher's record of fetched messages. The work is in src/fetch/import-state.ts. */
import type { Command } from 'commander';
import { ConfigError } from '../config/errors.js';
import { EX_DATAERR, EX_OK, EX_TEMPFAIL } from './exit-codes.js';

interface ImportFlags {
  config?: string | undefined;
  from?: string;
  force?: boolean;
  dryRun?: boolean;
}

export function registerImportStateCommand(fetch: Command): void {
  fetch
    .command('import-state')
    .description("mark the messages fetchmail, mpop or getmail already fetched as fetched in the account's ledger (see docs/fetch.md)")
    .argument('<account>', "the account's name in the config")
    .option('--config <file>', 'TOML file with [[account]] tables')
    .requiredOption('--from <kind:file>', "the other tool's file: fetchmail:~/.fetchids, mpop:FILE (uidls_file), getmail:~/.getmail/oldmail-HOST-PORT-USER")
    .option('--force', 'import even when the file is of another host or user')
    .option('--dry-run', 'say how many UIDLs would be imported; change nothing')
    .action(async (account: string, opts: ImportFlags, cmd: Command) => {
      process.exitCode = await importStateCommand(account, { ...opts, config: opts.config ?? (cmd.parent?.opts() as { config?: string } | undefined)?.config });
    });
}

async function importStateCommand(account: string, opts: ImportFlags): Promise<number> {
  const [{ loadFetchConfig }, { importState, parseSource, ImportStateError }, { LedgerBusyError }] = await Promise.all([
    import('../fetch/config.js'),
    import('../fetch/import-state.js'),
    import('../fetch/ledger.js'),
  ]);
  if (opts.config === undefined) throw new ConfigError('import-state needs --config FILE (the account is one of its [[account]] tables)');
  const cfg = loadFetchConfig(opts.config);
  const acct = cfg.accounts.find((a) => a.name === account);
  if (acct === undefined) throw new ConfigError(`no account named ${account} in ${opts.config}`);
  try {
    const src = parseSource(opts.from!);
    const r = await importState(acct, src, { force: opts.force === true, dryRun: opts.dryRun === true });
    const fresh = r.inFile - r.known;
    if (opts.dryRun === true) {
      process.stdout.write(`${account}: would import ${fresh} UIDLs of ${r.from} from ${src.kind} (${r.inFile} in ${src.file}, ${r.known} already in the ledger)\n`);
    } else {
      process.stdout.write(`${account}: imported ${r.added} UIDLs of ${r.from} from ${src.kind} (${r.inFile} in ${src.file}, ${r.known} already in the ledger)\n`);
    }
    return EX_OK;
  } catch (e) {
    if (e instanceof ImportStateError) {
      process.stderr.write(`poplar fetch import-state: ${e.message}\n`);
      return EX_DATAERR;
    }
    if (e instanceof LedgerBusyError) {
      process.stderr.write(`poplar fetch import-state: ${e.message} (a fetch of ${account} is running; try again when it is done)\n`);
      return EX_TEMPFAIL;
    }
    throw e;
  }
}
