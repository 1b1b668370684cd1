/**
 * The store and the user database `poplar deliver` needs, from the same
 * configuration file as `poplar serve` (Maildir or PostgreSQL store;
 * passwd-file or PostgreSQL users). Nothing else of the server is loaded,
 * so a delivery process starts quickly.
 */
import { PasswdFileAuthenticator } from '../auth/passwd-file/authenticator.js';
import { PostgresAuthenticator } from '../auth/postgres/index.js';
import type { Authenticator } from '../auth/types.js';
import { ConfigError } from '../config/errors.js';
import type { ResolvedConfig } from '../config/load.js';
import { TemporaryFailure } from '../errors.js';
import type { Logger } from '../observability/log.js';
import { MaildirStore } from '../store/maildir/maildir-store.js';
import { PostgresStore } from '../store/postgres/postgres-store.js';
import type { MailStore } from '../store/types.js';

export async function openDeliveryStore(config: ResolvedConfig, logger: Logger): Promise<MailStore> {
  if (config.store.type === 'postgres') {
    if (config.store.postgres === undefined) throw new ConfigError('invalid configuration: store.type = "postgres" needs a [store.postgres] section');
    try {
      return await PostgresStore.open(config.store.postgres, { logger, sweepIntervalMs: 0 });
    } catch (e) {
      throw new TemporaryFailure(`the PostgreSQL mail store cannot be reached: ${(e as Error).message}`, { cause: e });
    }
  }
  return new MaildirStore({
    root: config.maildirRoot,
    logger,
    fsync: config.store.fsync,
    uidlistStaleSeconds: config.store.uidlist_lock_stale,
    allowSymlinkedMaildrops: config.store.allow_symlinked_maildrops,
  });
}

export async function openUserDatabase(config: ResolvedConfig, logger: Logger): Promise<Authenticator> {
  if (config.auth.type === 'postgres') {
    if (config.auth.postgres === undefined) throw new ConfigError('invalid configuration: auth.type = "postgres" needs an [auth.postgres] section');
    try {
      return await PostgresAuthenticator.open(config.auth.postgres, { logger: (m) => logger.warn({ backend: 'postgres' }, m) });
    } catch (e) {
      throw new TemporaryFailure(`the PostgreSQL user database cannot be reached: ${(e as Error).message}`, { cause: e });
    }
  }
  return new PasswdFileAuthenticator(config.usersFile, { logger: (m) => logger.warn({ users: config.usersFile }, m) });
}
