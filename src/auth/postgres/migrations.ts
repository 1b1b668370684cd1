/**
 * Schema migrations for the PostgreSQL user database, and the migrate()
 * that applies them (the mail store applies its own list with it, under its
 * own history table).
 *
 * The SQL lives here as string constants (tsc does not copy .sql files into
 * dist/). Migrations are append-only: never edit a shipped one, add the next
 * version instead. All objects are created unqualified, i.e. in the first
 * schema of the connection's search_path.
 */
import type { Pool, PoolClient } from 'pg';
import { inTransaction } from './tx.js';

export interface Migration {
  readonly version: number;
  readonly name: string;
  readonly sql: string;
}

export const MIGRATIONS: readonly Migration[] = Object.freeze([
  {
    version: 1,
    name: '001_users',
    sql: `
CREATE TABLE IF NOT EXISTS poplar_schema_migrations (
  version    int PRIMARY KEY,
  applied_at timestamptz
);

CREATE TABLE poplar_users (
  username   text PRIMARY KEY,
  password   text NOT NULL,
  home       text,
  maildir    text,
  enabled    boolean NOT NULL DEFAULT true,
  created_at timestamptz DEFAULT now()
);
`,
  },
  {
    version: 2,
    name: '002_user_quota',
    sql: `
ALTER TABLE poplar_users
  ADD COLUMN quota_bytes    bigint CHECK (quota_bytes >= 0),
  ADD COLUMN quota_messages bigint CHECK (quota_messages >= 0);
`,
  },
]);

/** The schema version this code expects. */
export const SCHEMA_VERSION = MIGRATIONS.reduce((v, m) => Math.max(v, m.version), 0);

/** The users backend's history table; other components (the mail store) name their own. */
export const DEFAULT_HISTORY_TABLE = 'poplar_schema_migrations';

const IDENTIFIER = /^[a-z_][a-z0-9_]{0,62}$/;

/** A history table name, checked: it is put into SQL text. */
function historyTable(name: string | undefined): string {
  const t = name ?? DEFAULT_HISTORY_TABLE;
  if (!IDENTIFIER.test(t)) throw new Error(`invalid migration history table name: ${JSON.stringify(t)}`);
  return t;
}

/**
 * Two-key advisory lock: one constant for "poplar migrations", one for the
 * schema, so nodes sharing a schema serialize and other schemas do not wait.
 */
const LOCK = `SELECT pg_advisory_xact_lock(hashtext('poplar:migrations'), hashtext(coalesce(current_schema(), '')))`;

export interface MigrateOptions {
  readonly logger?: ((message: string) => void) | undefined;
  /** Defaults to MIGRATIONS; replaceable for tests. */
  readonly migrations?: readonly Migration[] | undefined;
  /**
   * Where applied versions are recorded (default poplar_schema_migrations).
   * Each component sharing a schema keeps its own, so their version numbers
   * never collide.
   */
  readonly historyTable?: string | undefined;
}

/**
 * Applies pending migrations in one transaction under a transaction-scoped
 * advisory lock, so several nodes starting at once apply each migration
 * exactly once; the others wait and then find nothing to do. Returns the
 * versions applied by this call. Fails (and rolls back everything) if any
 * migration fails.
 */
export async function migrate(pool: Pool, options: MigrateOptions = {}): Promise<number[]> {
  const migrations = [...(options.migrations ?? MIGRATIONS)].sort((a, b) => a.version - b.version);
  const table = historyTable(options.historyTable);
  return inTransaction(pool, (client) => applyPending(client, table, migrations, options.logger));
}

async function applyPending(client: PoolClient, table: string, migrations: readonly Migration[], logger: MigrateOptions['logger']): Promise<number[]> {
  await client.query(LOCK);
  await client.query(`CREATE TABLE IF NOT EXISTS ${table} (version int PRIMARY KEY, applied_at timestamptz)`);
  const { rows } = await client.query<{ version: number }>(`SELECT version FROM ${table}`);
  const done = new Set(rows.map((r) => r.version));
  const known = new Set(migrations.map((m) => m.version));
  const unknown = [...done].filter((v) => !known.has(v));
  if (unknown.length > 0) {
    logger?.(`postgres: schema has migrations this version does not know (${unknown.join(', ')}); a newer Poplar has run against it`);
  }
  const applied: number[] = [];
  for (const m of migrations) {
    if (done.has(m.version)) continue;
    await client.query(m.sql);
    await client.query(`INSERT INTO ${table} (version, applied_at) VALUES ($1, now())`, [m.version]);
    logger?.(`postgres: applied migration ${m.name}`);
    applied.push(m.version);
  }
  return applied;
}

/** Highest applied version, or 0 when the schema has never been migrated. */
export async function schemaVersion(pool: Pool, table?: string): Promise<number> {
  const t = historyTable(table);
  const exists = await pool.query<{ t: string | null }>(`SELECT to_regclass($1)::text AS t`, [t]);
  if (exists.rows[0]?.t == null) return 0;
  const { rows } = await pool.query<{ v: number }>(`SELECT coalesce(max(version), 0) AS v FROM ${t}`);
  return rows[0]?.v ?? 0;
}
