/**
 * PostgreSQL for the store tests: a schema with a random name per test file
 * (dropped at the end), pools pointed at it, and stores over those pools.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Pool } from 'pg';
import { afterAll } from 'vitest';
import { silentLogger, type Logger } from '../../src/observability/log.js';
import { migrateStore } from '../../src/store/postgres/migrations.js';
import { PostgresStore, type PostgresStoreOptions } from '../../src/store/postgres/postgres-store.js';
import { POSTGRES_CONNECTION } from '../helpers/peers.js';

export const PG_URL = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;

export interface PgSchema {
  readonly name: string;
  /** A new pool on the schema (a "node" of its own). */
  pool(max?: number): Pool;
  /** A store on a new pool that it owns. */
  store(options?: Partial<PostgresStoreOptions> & { max?: number }): PostgresStore;
  /** A pool for the test's own queries. */
  readonly admin: Pool;
}

/** A fresh, migrated schema for this test file; everything is dropped after the file's tests. */
export async function pgSchema(): Promise<PgSchema> {
  const name = `poplar_store_${randomBytes(6).toString('hex')}`;
  const root = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1 });
  await root.query(`CREATE SCHEMA ${name}`);
  const pools: Pool[] = [];
  const stores: PostgresStore[] = [];
  const pool = (max = 4): Pool => {
    const p = new pg.Pool({ ...POSTGRES_CONNECTION, max, options: `-c search_path=${name}`, connectionTimeoutMillis: 10_000 });
    p.on('error', () => undefined);
    pools.push(p);
    return p;
  };
  const admin = pool(4);
  await migrateStore(admin);
  afterAll(async () => {
    await Promise.allSettled(stores.map((s) => s.close()));
    await Promise.allSettled(pools.map((p) => p.end()));
    await root.query(`DROP SCHEMA IF EXISTS ${name} CASCADE`);
    await root.end();
  });
  return {
    name,
    admin,
    pool,
    store: (options = {}) => {
      const logger: Logger = options.logger ?? silentLogger();
      const s = new PostgresStore(pool(options.max ?? 4), { sweepIntervalMs: 0, leasePool: pool(1), ...options, logger, ownsPool: true });
      stores.push(s);
      return s;
    },
  };
}
