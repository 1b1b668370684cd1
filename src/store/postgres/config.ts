/**
 * The `[store.postgres]` section: the same connection settings as
 * `[auth.postgres]` (the two may name one database) plus the maildrop lease.
 */
import type pg from 'pg';
import type { Pool } from 'pg';
import { storeSocket } from './copy-socket.js';
import { z } from 'zod';
import { PostgresConfigSchema, createPostgresPool } from '../../auth/postgres/config.js';

export const PostgresStoreConfigSchema = PostgresConfigSchema.extend({
  /**
   * Seconds a maildrop lease lives without renewal (renewed every third of
   * it while the session lives): how long a user waits after the node that
   * served them died before another node serves them.
   */
  lease_timeout: z.number().min(1).max(3600).default(30),
}).strict();

export type PostgresStoreConfig = z.output<typeof PostgresStoreConfigSchema>;
export type PostgresStoreConfigInput = z.input<typeof PostgresStoreConfigSchema>;

/**
 * The pool for the store (the users backend's pool settings, without the
 * lease). Its connections read message bodies straight from their read
 * buffer (copy-socket.ts).
 */
export function createStorePool(config: PostgresStoreConfigInput, logger?: (message: string) => void): Pool {
  const { lease_timeout: _lease, ...connection } = PostgresStoreConfigSchema.parse(config);
  return createPostgresPool(connection, logger, { stream: storeSocket as unknown as NonNullable<pg.PoolConfig['stream']> });
}
