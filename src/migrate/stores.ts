/**
 * The stores a migration reads and writes, built from their endpoints:
 * Maildir from its root; PostgreSQL from `postgres:URL` or the
 * [store.postgres] table of the configuration file.
 */
import { ConfigError } from '../config/errors.js';
import type { Logger } from '../observability/log.js';
import { MaildirMigration } from '../store/maildir/migration.js';
import type { MigratableStore } from '../store/migration.js';
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

async function openPostgres(url: string | undefined, ctx: { config?: string | undefined; logger: Logger }): Promise<OpenedStore> {
  void url;
  void ctx;
  throw new ConfigError('the PostgreSQL store is not available yet');
}
