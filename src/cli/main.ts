#!/usr/bin/env node
import { setFlagsFromString } from 'node:v8';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { ConfigError } from '../config/errors.js';
import { EX_CONFIG, EX_SOFTWARE, EX_USAGE } from './exit-codes.js';

/**
 * The subcommands defined in their own modules, by the names they register.
 * Only the module of the subcommand being run is loaded (with `--help`, an
 * unknown name or none, all of them): each brings its own dependencies, and
 * `poplar fetch` should not pay for the configuration schema, PostgreSQL or
 * the admin listener at every start.
 */
const COMMAND_MODULES: readonly (readonly [names: readonly string[], load: () => Promise<(program: Command) => void>])[] = [
  [['user'], async () => (await import('./user.js')).registerUserCommands],
  [['fetch'], async () => (await import('./fetch.js')).registerFetchCommand],
  [['migrate'], async () => (await import('./migrate.js')).registerMigrateCommand],
  [['deliver'], async () => (await import('./deliver.js')).registerDeliverCommand],
  [['check'], async () => (await import('./check.js')).registerCheckCommand],
  [['who', 'kick'], async () => (await import('../admin/cli.js')).registerAdminCommands],
];

const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive whole number');
  return n;
}

/** The program; `argv` (process.argv's shape) says which subcommand modules to load: only the one it runs, if it names one. */
export async function buildProgram(argv: readonly string[] = process.argv): Promise<Command> {
  const program = new Command('poplar')
    .description('Poplar: a POP3 mail system (server, storage, authentication, fetcher)')
    .showSuggestionAfterError(true)
    .exitOverride();

  program
    .command('serve')
    .description('run the POP3 server (with no options: the embedded default in ./poplar-data)')
    .option('--config <file>', 'TOML configuration file')
    .option('--data-dir <dir>', 'data directory (default ./poplar-data)')
    .option('--listen <host:port>', 'plaintext listener with STLS (repeatable)', collect)
    .option('--listen-tls <host:port>', 'implicit TLS listener (repeatable)', collect)
    .option('--maildir-root <dir>', 'maildrop of user U is DIR/U')
    .option('--users <file>', 'passwd-file with the users')
    .option('--tls-cert <pem>', 'certificate chain (PEM)')
    .option('--tls-key <pem>', 'private key (PEM)')
    .option('--workers <n>', 'worker processes', positiveInt)
    .option('--user <name>', 'account to switch to once the listeners are bound (server.user)')
    .option('--group <name>', "group to switch to (server.group; default: the user's primary group)")
    .option('--allow-root', 'run as root when no --user is given (server.allow_root)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']))
    .action(async (opts: Record<string, unknown> & { workers?: number }) => {
      // Loaded here, not at the top: `poplar fetch` and `poplar user` start without the server's modules.
      const { isClusterWorker, reportReady, runPrimary } = await import('./cluster.js');
      if ((opts.workers ?? 1) > 1 && !isClusterWorker()) return runPrimary(opts, opts.workers!);
      const { startServer } = await import('./serve.js');
      const running = await startServer(opts);
      reportReady();
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        running.logger.info({ signal }, 'shutting down');
        void running.stop().then(() => {
          running.logger.flush();
          process.exit(0);
        });
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      process.on('SIGHUP', () => void running.reload());
    });

  const wanted = argv[2];
  const only = COMMAND_MODULES.filter(([names]) => wanted !== undefined && names.includes(wanted));
  // `serve` is defined above and needs none of them.
  for (const entry of only.length > 0 || wanted === 'serve' ? only : COMMAND_MODULES) (await entry[1]())(program);
  return program;
}

/**
 * `poplar fetch` is mostly a short run, and V8's optimizing compiler, working
 * on background threads, cost more CPU there than it saved: with functions
 * optimized only once they are 8 times hotter than V8's default asks for,
 * fetching 2000 messages took about 15% less CPU (bench/fetch-cpu.ts). Code
 * that stays hot in a long run is still optimized. Set here rather than on
 * Node's command line, where a flag a Node version does not know stops it
 * from starting; and only on the Node version it was measured on.
 */
function tuneForFetch(argv: readonly string[]): void {
  if (argv[2] === 'fetch' && process.versions.node.startsWith('20.')) setFlagsFromString('--interrupt-budget=540672');
}

async function main(): Promise<void> {
  tuneForFetch(process.argv);
  const program = await buildProgram();
  try {
    await program.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.exitCode === 0 || e.code === 'commander.helpDisplayed' || e.code === 'commander.version') process.exit(0);
      // commander already printed its one-line message
      process.exit(e.code === 'commander.unknownCommand' || e.code === 'commander.help' ? EX_USAGE : EX_CONFIG);
    }
    if (e instanceof ConfigError) {
      process.stderr.write(`poplar: ${e.message}\n`);
      process.exit(EX_CONFIG);
    }
    process.stderr.write(`poplar: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(EX_SOFTWARE);
  }
}

await main();
