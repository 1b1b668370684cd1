/**
 * The stores a migration reads and writes, built from their endpoints:
 * Maildir from its root; PostgreSQL from `postgres:URL` or the
 * [store.postgres] table of the configuration file.
 */
import { readFile } from 'node:fs/promises';
import { parse as parseToml } from 'smol-toml';
import { ConfigError } from '../config/errors.js';
import { TemporaryFailure } from '../errors.js';
import type { Logger } from '../observability/log.js';
import { MaildirMigration } from '../store/maildir/migration.js';
import type { MigratableStore } from '../store/migration.js';
import { PostgresStore, PostgresStoreConfigSchema } from '../store/postgres/index.js';
import type { Endpoint } from './endpoints.js';

export interface OpenedStore {
  readonly store: MigratableStore;
  close(): Promise<void>;
}

export async function openStore(ep: Endpoint, ctx: { config?: string | undefined; logger: Logger }): Promise<OpenedStore> {
  switch (ep.kind) {
    case 'maildir':
      return { store: new MaildirMigration({ root: ep.root, logger: ctx.logger }), close: async () => undefined };
    case 'postgres':
      return openPostgres(ep.url, ctx);
    case 'pop3':
      throw new ConfigError('a POP3 server is no store');
  }
}

/**
 * The [store.postgres] table of the configuration file (read here, checked
 * with the store's own schema), with `url` from `postgres:URL` taking the
 * place of the file's.
 */
async function openPostgres(url: string | undefined, ctx: { config?: string | undefined; logger: Logger }): Promise<OpenedStore> {
  let table: Record<string, unknown> = {};
  if (ctx.config !== undefined) {
    let text: string;
    try {
      text = await readFile(ctx.config, 'utf8');
    } catch (e) {
      throw new ConfigError(`--config: cannot read ${ctx.config}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    let raw: Record<string, unknown>;
    try {
      raw = parseToml(text) as Record<string, unknown>;
    } catch (e) {
      throw new ConfigError(`${ctx.config}: ${(e as Error).message.split('\n')[0]}`);
    }
    const store = raw['store'];
    const pg = typeof store === 'object' && store !== null ? (store as Record<string, unknown>)['postgres'] : undefined;
    if (typeof pg === 'object' && pg !== null) table = { ...(pg as Record<string, unknown>) };
    else if (url === undefined) throw new ConfigError(`${ctx.config} has no [store.postgres] table`);
  } else if (url === undefined) {
    throw new ConfigError('postgres needs --config FILE with a [store.postgres] table, or postgres:URL');
  }
  if (url !== undefined) table['url'] = url;
  const parsed = PostgresStoreConfigSchema.safeParse(table);
  if (!parsed.success) throw new ConfigError(`[store.postgres]: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(table)'}: ${i.message}`).join('; ')}`);
  let store: PostgresStore;
  try {
    store = await PostgresStore.open(parsed.data, { logger: ctx.logger, sweepIntervalMs: 0 });
  } catch (e) {
    throw new TemporaryFailure(`the PostgreSQL store cannot be reached: ${(e as Error).message}`, { cause: e });
  }
  return { store, close: () => store.close() };
}
