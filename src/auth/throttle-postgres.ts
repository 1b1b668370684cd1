/**
 * Login failure counters, the block list they imply, and LOGIN-DELAY times,
 * shared by every Poplar node on one PostgreSQL database.
 *
 * Tables (created by the migrations below, recorded in their own history
 * table poplar_limits_migrations so their versions never collide with the
 * users' or the store's):
 *
 * - poplar_auth_failures(key, failures, last_failure): one row per counter
 *   key of src/auth/throttle.ts (`ip:192.0.2.1`, `user:alice`).
 * - poplar_login_times(username, last_login): the last successful login.
 *
 * Every call is one statement, one round trip (an increment is one
 * `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` for the whole batch), or
 * none: with `listen`, a node hears of every failure as it is counted and
 * answers a check for keys without recent failures itself
 * (throttle-postgres-watch.ts).
 * Time is the database's clock (`now()`) everywhere, never a node's: nodes
 * whose clocks differ still agree on windows and delays. The `now` passed by
 * the callers is therefore not used here.
 *
 * Keys are bounded: throttle.ts already shortens long values; a key that is
 * still longer than 200 characters, or holds a character PostgreSQL text
 * cannot store (NUL), is replaced by its SHA-256 here, so no client input
 * can make a statement fail. Rows whose window has passed are deleted now and
 * then (at most once per `pruneEveryMs` per node, in batches, outside any
 * login's path), not on every call.
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import type { Pool } from 'pg';
import { migrate, type Migration } from './postgres/migrations.js';
import type { ThrottleStore } from './throttle.js';
import { FAILURES_CHANNEL, FailureWatch } from './throttle-postgres-watch.js';
import type { LoginDelayStore } from './throttle-login-delay.js';

/** The history table of these migrations. */
export const LIMITS_HISTORY_TABLE = 'poplar_limits_migrations';

export const LIMITS_MIGRATIONS: readonly Migration[] = Object.freeze([
  {
    version: 1,
    name: '001_login_limits',
    sql: `
CREATE TABLE poplar_auth_failures (
  key          text PRIMARY KEY CHECK (octet_length(key) <= 1024),
  failures     integer NOT NULL CHECK (failures > 0),
  last_failure timestamptz NOT NULL
);
CREATE INDEX poplar_auth_failures_last ON poplar_auth_failures (last_failure);

CREATE TABLE poplar_login_times (
  username   text PRIMARY KEY CHECK (octet_length(username) <= 1024),
  last_login timestamptz NOT NULL
);
CREATE INDEX poplar_login_times_last ON poplar_login_times (last_login);
`,
  },
  {
    version: 2,
    name: '002_failures_notify',
    // Every counted failure, whoever writes it, is told to the listening nodes (throttle-postgres-watch.ts):
    // [schema, "+", key] on the channel poplar_auth_failures, delivered at COMMIT.
    sql: `
CREATE FUNCTION poplar_auth_failure_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('${FAILURES_CHANNEL}', json_build_array(TG_TABLE_SCHEMA, '+', NEW.key)::text);
  RETURN NULL;
END $$;
CREATE TRIGGER poplar_auth_failures_notify AFTER INSERT OR UPDATE ON poplar_auth_failures
  FOR EACH ROW EXECUTE FUNCTION poplar_auth_failure_counted();
`,
  },
]);

/** Applies the pending limits migrations (under the shared migration lock). */
export function migrateLimits(pool: Pool, logger?: (message: string) => void): Promise<number[]> {
  return migrate(pool, { migrations: LIMITS_MIGRATIONS, historyTable: LIMITS_HISTORY_TABLE, logger });
}

const MAX_KEY = 200;
/** Counts stop growing here (the delay reached its cap long before). */
const MAX_COUNT = 1_000_000_000;
/** Rows deleted per pruning statement. */
const PRUNE_BATCH = 10_000;

/** The key as stored: itself, or its hash when it is long or holds NUL. */
export function storedKey(key: string): string {
  return key.length <= MAX_KEY && !key.includes('\0') ? key : `#${createHash('sha256').update(key, 'utf8').digest('base64url')}`;
}

export interface PostgresLimitsOptions {
  /** Expired rows are deleted at most this often per node; default 60 s. */
  readonly pruneEveryMs?: number | undefined;
  /** Told about a failed pruning (the calls themselves throw). */
  readonly logger?: ((message: string) => void) | undefined;
  /**
   * The counters only: a new, unconnected client on the same database for
   * hearing of failures as they happen (throttle-postgres-watch.ts), so a
   * check for clean keys needs no statement. Unset: every check asks.
   */
  readonly listen?: (() => pg.Client) | undefined;
}

/** Runs a pruning statement now and then, in the background. */
class Pruner {
  readonly #pool: Pool;
  readonly #sql: string;
  readonly #everyMs: number;
  readonly #logger: ((message: string) => void) | undefined;
  #last = Date.now();
  #running = false;
  /** The longest window seen: nothing younger than it is deleted. */
  #windowMs = 0;

  constructor(pool: Pool, sql: string, options: PostgresLimitsOptions) {
    this.#pool = pool;
    this.#sql = sql;
    this.#everyMs = options.pruneEveryMs ?? 60_000;
    this.#logger = options.logger;
  }

  note(windowMs: number): void {
    if (windowMs > this.#windowMs) this.#windowMs = windowMs;
    const t = Date.now();
    if (this.#running || t - this.#last < this.#everyMs) return;
    this.#last = t;
    this.#running = true;
    void this.prune()
      .catch((e: unknown) => this.#logger?.(`postgres: pruning login counters failed: ${(e as Error).message}`))
      .finally(() => (this.#running = false));
  }

  /** Deletes expired rows, a batch at a time; returns how many. */
  async prune(): Promise<number> {
    let total = 0;
    for (;;) {
      const r = await this.#pool.query(this.#sql, [this.#windowMs / 1000, PRUNE_BATCH]);
      total += r.rowCount ?? 0;
      if ((r.rowCount ?? 0) < PRUNE_BATCH) return total;
    }
  }
}

const INCREMENT = `
INSERT INTO poplar_auth_failures AS f (key, failures, last_failure)
SELECT k, 1, now() FROM unnest($1::text[]) AS k
ON CONFLICT (key) DO UPDATE SET
  failures = CASE WHEN f.last_failure > now() - make_interval(secs => $2::float8) THEN least(f.failures + 1, ${MAX_COUNT}) ELSE 1 END,
  last_failure = now()
RETURNING key, failures`;

const COUNTS = `
SELECT key, failures FROM poplar_auth_failures
 WHERE key = ANY($1::text[]) AND last_failure > now() - make_interval(secs => $2::float8)`;

/** Also tells the listening nodes that these counters are cleared ([schema, "-", key], at COMMIT). */
const RESET = `WITH gone AS (DELETE FROM poplar_auth_failures WHERE key = ANY($1::text[]) RETURNING key)
SELECT pg_notify('${FAILURES_CHANNEL}', json_build_array(current_schema(), '-', key)::text) FROM gone`;

const PRUNE_FAILURES = `
DELETE FROM poplar_auth_failures WHERE key IN (
  SELECT key FROM poplar_auth_failures WHERE last_failure <= now() - make_interval(secs => $1::float8) LIMIT $2)`;

/** Failure counters in PostgreSQL, shared by every node on the database. */
export class PostgresThrottleStore implements ThrottleStore {
  readonly #pool: Pool;
  readonly #pruner: Pruner;
  readonly #watch: FailureWatch | undefined;

  constructor(pool: Pool, options: PostgresLimitsOptions = {}) {
    this.#pool = pool;
    this.#pruner = new Pruner(pool, PRUNE_FAILURES, options);
    if (options.listen !== undefined) {
      this.#watch = new FailureWatch({ connect: options.listen, logger: options.logger });
      void this.#watch.start();
    }
  }

  /** The view of recent failures that spares clean logins a statement (with `listen`). */
  get watch(): FailureWatch | undefined {
    return this.#watch;
  }

  async increment(keys: readonly string[], _now: number, windowMs: number): Promise<number[]> {
    const stored = keys.map(storedKey);
    // Sorted and unique: concurrent batches lock rows in the same order (no deadlock), and
    // ON CONFLICT may touch a row only once per statement.
    const unique = [...new Set(stored)].sort();
    this.#watch?.noteFailures(unique);
    const { rows } = await this.#pool.query<{ key: string; failures: number }>(INCREMENT, [unique, windowMs / 1000]);
    this.#pruner.note(windowMs);
    const by = new Map(rows.map((r) => [r.key, r.failures]));
    return stored.map((k) => by.get(k) ?? 1);
  }

  async counts(keys: readonly string[], _now: number, windowMs: number): Promise<number[]> {
    const stored = keys.map(storedKey);
    if (this.#watch?.clean(stored, windowMs) === true) return stored.map(() => 0);
    const { rows } = await this.#pool.query<{ key: string; failures: number }>(COUNTS, [[...new Set(stored)], windowMs / 1000]);
    const by = new Map(rows.map((r) => [r.key, r.failures]));
    return stored.map((k) => by.get(k) ?? 0);
  }

  async reset(keys: readonly string[]): Promise<void> {
    await this.#pool.query(RESET, [[...new Set(keys.map(storedKey))]]);
  }

  /** Deletes the rows whose window (the longest seen) has passed; returns how many. */
  prune(): Promise<number> {
    return this.#pruner.prune();
  }

  /** Stops listening (the pool is the caller's). */
  async close(): Promise<void> {
    await this.#watch?.close();
  }
}

const WAIT = `
SELECT (CASE WHEN last_login > now() THEN 0 -- the clock went back: that time says nothing
             ELSE greatest(0, ceil($2::float8 - extract(epoch FROM now() - last_login) * 1000)) END)::float8 AS wait
  FROM poplar_login_times WHERE username = $1`;

const RECORD = `
INSERT INTO poplar_login_times (username, last_login) VALUES ($1, now())
ON CONFLICT (username) DO UPDATE SET last_login = excluded.last_login`;

const PRUNE_LOGINS = `
DELETE FROM poplar_login_times WHERE username IN (
  SELECT username FROM poplar_login_times WHERE last_login <= now() - make_interval(secs => $1::float8) LIMIT $2)`;

/** LOGIN-DELAY times in PostgreSQL, shared by every node on the database. */
export class PostgresLoginDelayStore implements LoginDelayStore {
  readonly #pool: Pool;
  readonly #pruner: Pruner;

  constructor(pool: Pool, options: PostgresLimitsOptions = {}) {
    this.#pool = pool;
    this.#pruner = new Pruner(pool, PRUNE_LOGINS, options);
  }

  async waitMs(username: string, _now: number, delayMs: number): Promise<number> {
    const { rows } = await this.#pool.query<{ wait: number }>(WAIT, [storedKey(username), delayMs]);
    return rows[0]?.wait ?? 0;
  }

  async recordLogin(username: string, _now: number, delayMs: number): Promise<void> {
    await this.#pool.query(RECORD, [storedKey(username)]);
    this.#pruner.note(delayMs);
  }

  prune(): Promise<number> {
    return this.#pruner.prune();
  }
}
