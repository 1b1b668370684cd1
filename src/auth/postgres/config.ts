import pg from 'pg';
import type { Pool } from 'pg';
import { z } from 'zod';

const identifier = z.string().regex(/^[A-Za-z_][A-Za-z0-9_]{0,62}$/, 'expected a plain SQL identifier');

/** The `[auth.postgres]` section. Durations are seconds. */
export const PostgresConfigSchema = z
  .object({
    /** libpq-style URL, e.g. postgres://poplar@db.example/mail; unset: the PG* environment variables. */
    url: z.string().min(1).optional(),
    /** Schema holding the poplar_* tables (sets search_path); default: the server's search_path. */
    schema: identifier.optional(),
    /** Connections kept per process. */
    pool_size: z.number().int().min(1).max(1000).default(10),
    /** Seconds to wait for a connection before answering SYS/TEMP. */
    connect_timeout: z.number().positive().max(300).default(5),
    /** Seconds a query may take before answering SYS/TEMP. */
    query_timeout: z.number().positive().max(300).default(5),
    /** Apply pending schema migrations at startup. */
    migrate: z.boolean().default(true),
  })
  .strict();

export type PostgresConfig = z.output<typeof PostgresConfigSchema>;
export type PostgresConfigInput = z.input<typeof PostgresConfigSchema>;

/**
 * Startup settings of every connection: named statements keep the plan made
 * at their first execution (plan_cache_mode). With PostgreSQL's default
 * (`auto`) a statement whose parameters are arrays, such as the batched lease
 * release and renewal, was planned again at every execution, because its
 * plan for one value always looks cheaper than the general one; that
 * planning was most of the database's CPU per POP3 session. Every statement
 * Poplar sends looks rows up by key (the mailbox id first), so the general
 * plan is the plan it needs whatever the values. An operator's PGOPTIONS
 * come after this and may change it.
 */
export const CONNECTION_SETTINGS = '-c plan_cache_mode=force_generic_plan';

/** What one connection of a section is made with (URL, schema, settings, timeouts, application_name). */
export function postgresClientConfig(config: PostgresConfigInput): pg.ClientConfig {
  const c = PostgresConfigSchema.parse(config);
  return {
    ...(c.url !== undefined ? { connectionString: c.url } : {}),
    // PGOPTIONS (the libpq variable, which node-postgres reads only when no options are given) after
    // Poplar's settings, so that an operator's own choice still wins; the configured schema last.
    options: [CONNECTION_SETTINGS, process.env['PGOPTIONS'], c.schema !== undefined ? `-c search_path=${c.schema}` : undefined].filter((o) => o !== undefined && o !== '').join(' '),
    connectionTimeoutMillis: Math.round(c.connect_timeout * 1000),
    query_timeout: Math.round(c.query_timeout * 1000),
    application_name: 'poplar',
  };
}

/**
 * A pg.Pool for the user database. Idle-connection errors (server restart,
 * network cut) are reported to `logger` instead of crashing the process; the
 * pool reconnects on the next query.
 */
export function createPostgresPool(config: PostgresConfigInput, logger?: (message: string) => void, extra: Partial<pg.PoolConfig> = {}): Pool {
  const c = PostgresConfigSchema.parse(config);
  const pool = new pg.Pool({ ...postgresClientConfig(c), max: c.pool_size, idleTimeoutMillis: 30_000, ...extra });
  pool.on('error', (e) => logger?.(`postgres: idle connection failed: ${e.message}`));
  return pool;
}
