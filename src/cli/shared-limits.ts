/**
 * Where `poplar serve` keeps login failure counters, the blocks they imply
 * and LOGIN-DELAY times:
 *
 * - a PostgreSQL database is configured (`[store.postgres]` when the store is
 *   PostgreSQL, else `[auth.postgres]` when the users are): in that database,
 *   shared by every node and every worker; each process also LISTENs for
 *   failures counted anywhere, so a login for a clean address and user is
 *   checked without a statement;
 * - otherwise, a `--workers` worker: in the primary process, shared by all
 *   workers of this machine;
 * - otherwise: in this process's memory.
 *
 * A shared place that cannot answer is replaced by this process's memory
 * until it answers again (src/auth/throttle-fallback.ts), with a warning in
 * the log at most once a minute.
 */
import pg from 'pg';
import type { Pool } from 'pg';
import { createPostgresPool, postgresClientConfig, type PostgresConfigInput } from '../auth/postgres/config.js';
import { MemoryThrottleStore, type ThrottleStore } from '../auth/throttle.js';
import { ClusterLoginDelayStore, ClusterThrottleStore, PrimaryClient } from '../auth/throttle-cluster.js';
import { FallbackGate, FallbackLoginDelayStore, FallbackThrottleStore } from '../auth/throttle-fallback.js';
import { MemoryLoginDelayStore, type LoginDelayStore } from '../auth/throttle-login-delay.js';
import { PostgresLoginDelayStore, PostgresThrottleStore, migrateLimits } from '../auth/throttle-postgres.js';
import { ConfigError } from '../config/errors.js';
import type { ResolvedConfig } from '../config/load.js';
import type { Logger } from '../observability/log.js';

/** Connections per process for the counters, at most (fewer when the section's pool_size is smaller). */
export const LIMITS_POOL_SIZE = 4;

export interface SharedLimits {
  /** Where the counters live. */
  readonly where: 'postgres' | 'primary' | 'memory';
  readonly throttleStore: ThrottleStore;
  readonly loginDelayStore: LoginDelayStore;
  close(): Promise<void>;
}

/** The PostgreSQL section the counters use: the store's when the store is PostgreSQL, else the users'. */
export function limitsDatabase(config: ResolvedConfig): PostgresConfigInput | undefined {
  const { store } = config;
  if (store.type === 'postgres' && store.postgres !== undefined) {
    // The connection settings only: the lease is the store's business.
    const { lease_timeout: _lease, ...connection } = store.postgres;
    return connection;
  }
  if (config.auth.type === 'postgres' && config.auth.postgres !== undefined) return config.auth.postgres;
  return undefined;
}

/**
 * The stores to give Pop3Server (`throttleStore`, `loginDelayStore`).
 * With a database, its tables are migrated first (unless `migrate = false`);
 * a database that cannot be reached here is a configuration error.
 */
export async function sharedLimits(config: ResolvedConfig, logger: Logger, clusterWorker: boolean): Promise<SharedLimits> {
  const db = limitsDatabase(config);
  const warn = (where: string) => (message: string, err: unknown) => logger.warn({ limits: where, err }, message);
  const info = (where: string) => (message: string) => logger.info({ limits: where }, message);
  if (db !== undefined) {
    const log = (m: string): void => logger.warn({ limits: 'postgres' }, m);
    // A pool of its own, small: each call is one short statement.
    const pool: Pool = createPostgresPool({ ...db, pool_size: Math.min(db.pool_size ?? LIMITS_POOL_SIZE, LIMITS_POOL_SIZE) }, log);
    try {
      if (db.migrate ?? true) await migrateLimits(pool, (m) => logger.info({ limits: 'postgres' }, m));
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw new ConfigError(`cannot use the PostgreSQL database for login counters: ${(e as Error).message}`);
    }
    const gate = new FallbackGate({ name: 'postgres', warn: warn('postgres'), info: info('postgres') });
    // One more connection per process, LISTENing: a login for a clean address and user then costs no statement.
    const clientConfig = postgresClientConfig(db);
    const counters = new PostgresThrottleStore(pool, { logger: log, listen: () => new pg.Client(clientConfig) });
    return {
      where: 'postgres',
      throttleStore: new FallbackThrottleStore(counters, gate),
      loginDelayStore: new FallbackLoginDelayStore(new PostgresLoginDelayStore(pool, { logger: log }), gate),
      close: async () => {
        await counters.close();
        await pool.end();
      },
    };
  }
  if (clusterWorker) {
    const client = new PrimaryClient();
    const gate = new FallbackGate({ name: 'primary process', warn: warn('primary'), info: info('primary'), retryAfterMs: 5_000 });
    return {
      where: 'primary',
      throttleStore: new FallbackThrottleStore(new ClusterThrottleStore(client), gate),
      loginDelayStore: new FallbackLoginDelayStore(new ClusterLoginDelayStore(client), gate),
      close: async () => undefined,
    };
  }
  return { where: 'memory', throttleStore: new MemoryThrottleStore(), loginDelayStore: new MemoryLoginDelayStore(), close: async () => undefined };
}
