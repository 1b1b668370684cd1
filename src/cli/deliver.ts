/**
 * `poplar deliver -d USER [-f SENDER] [-a ADDRESS] [--config FILE]`: one
 * message from stdin into the user's store, for Postfix's mailbox_command or
 * a pipe(8) transport (like dovecot-lda). Adds Return-Path (with -f) and
 * Delivered-To (-a, else USER). Exit codes from sysexits: 0 delivered (and
 * durable), 67 unknown user, 73 cannot create (a permanent failure, or a full
 * maildrop with over_quota = "permanent"), 75 try again later, 78 bad
 * configuration; one line on stderr says why.
 */
import type { Command } from 'commander';
import type { Logger } from '../observability/log.js';
import type { Authenticator } from '../auth/types.js';
import type { MailStore } from '../store/types.js';
import { EX_CONFIG, EX_OK, EX_USAGE } from './exit-codes.js';

interface DeliverFlags {
  destination: string;
  from?: string;
  address?: string;
  config?: string;
  verbose?: boolean;
}

export function registerDeliverCommand(program: Command): void {
  program
    .command('deliver')
    .description('deliver one message from stdin into a user\'s maildrop (for an MTA: mailbox_command or a pipe transport)')
    .requiredOption('-d, --destination <user>', 'the user (or an address, mapped as [lmtp] recipient_format says)')
    .option('-f, --from <sender>', 'envelope sender, for the Return-Path header')
    .option('-a, --address <recipient>', 'original recipient address, for the Delivered-To header (default: the user)')
    .option('--config <file>', 'TOML configuration file (the one poplar serve uses)')
    .option('-v, --verbose', 'log to stderr')
    .action(async (flags: DeliverFlags) => {
      process.exitCode = await deliverCommand(flags);
    });
}

async function readStdin(limit: number): Promise<Buffer | null> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of process.stdin as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > limit) return null;
    chunks.push(c);
  }
  return Buffer.concat(chunks, n);
}

async function deliverCommand(flags: DeliverFlags): Promise<number> {
  // Loaded here, not at startup: every other subcommand (fetch above all) starts without the configuration, store and logging modules.
  const [{ ConfigError, loadConfig }, { NotFoundError, PermanentFailure }, { silentLogger, createLogger }] = await Promise.all([
    import('../config/load.js'),
    import('../errors.js'),
    import('../observability/log.js'),
  ]);
  const { addressProblem, withTraceHeaders } = await import('../delivery/trace-headers.js');
  const { exitCodeFor } = await import('../delivery/smtp-replies.js');
  const fail = (code: number, why: string): number => {
    process.stderr.write(`poplar deliver: ${why.replace(/[\r\n]+/g, ' ')}\n`);
    return code;
  };
  for (const [flag, v] of [['-f', flags.from], ['-a', flags.address], ['-d', flags.destination]] as const) {
    const p = v === undefined ? undefined : addressProblem(v);
    if (p !== undefined) return fail(EX_USAGE, `${flag}: ${p}`);
  }
  let config;
  try {
    config = loadConfig(flags.config !== undefined ? { config: flags.config } : {});
  } catch (e) {
    return fail(EX_CONFIG, (e as Error).message);
  }
  const logger: Logger = flags.verbose === true ? createLogger({ level: 'info', format: 'json', file: '/dev/stderr' }) : silentLogger();
  const overQuota = config.lmtp.over_quota;
  let store: MailStore | undefined;
  let users: Authenticator | undefined;
  try {
    const { openDeliveryStore, openUserDatabase } = await import('../delivery/open.js');
    const { quotaFor, resolveRecipient } = await import('../delivery/recipients.js');
    const message = await readStdin(config.lmtp.max_message_size);
    if (message === null) throw new PermanentFailure(`message larger than lmtp.max_message_size (${config.lmtp.max_message_size} octets)`);
    users = await openUserDatabase(config, logger);
    const user = await resolveRecipient(users, flags.destination, { format: config.lmtp.recipient_format, delimiter: config.lmtp.recipient_delimiter });
    if (user === undefined) throw new NotFoundError(`no such user: ${flags.destination}`);
    store = await openDeliveryStore(config, logger);
    // Without -f the message keeps whatever Return-Path it has.
    const withHeaders = withTraceHeaders(message, flags.from, flags.address ?? flags.destination);
    await store.deliver(user, withHeaders, undefined, { quota: quotaFor(user, config.quota) });
    return EX_OK;
  } catch (e) {
    if (e instanceof ConfigError) return fail(EX_CONFIG, e.message);
    return fail(exitCodeFor(e, overQuota), (e as Error).message);
  } finally {
    await store?.close?.().catch(() => undefined);
    await users?.close?.().catch(() => undefined);
  }
}

