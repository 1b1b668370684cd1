import type { Pool } from 'pg';
import { TemporaryFailure } from '../../errors.js';
import { PasswordChecker, passwordRequest, usableName } from '../password-check.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal, UserQuota } from '../types.js';
import { createPostgresPool } from './config.js';
import type { PostgresConfigInput } from './config.js';
import { migrate } from './migrations.js';

export interface PostgresAuthenticatorOptions {
  readonly logger?: ((message: string) => void) | undefined;
  /** close() ends the pool (set when the authenticator created it). Default false. */
  readonly ownsPool?: boolean | undefined;
  /** Replaceable for tests; default the real ones from ../schemes.js. */
  readonly verify?: ((password: string, stored: string) => Promise<boolean>) | undefined;
  readonly dummy?: ((password: string) => Promise<void>) | undefined;
}

interface UserRow {
  username: string;
  password: string;
  home: string | null;
  maildir: string | null;
  enabled: boolean;
  quota_bytes: string | null;
  quota_messages: string | null;
}

const LOOKUP = 'SELECT username, password, home, maildir, enabled, quota_bytes, quota_messages FROM poplar_users WHERE username = $1';

/**
 * Password authentication against the `poplar_users` table (see migrations.ts).
 *
 * - User names are case-sensitive (like passwd-file).
 * - Unknown user, disabled user and unusable stored secret yield null after
 *   one dummyVerify(), so they cost as much as a wrong password.
 * - Any database failure (refused connection, timeout, missing table) →
 *   TemporaryFailure; the cause is logged, the password never.
 */
export class PostgresAuthenticator implements Authenticator {
  readonly pool: Pool;
  readonly #logger: ((message: string) => void) | undefined;
  readonly #ownsPool: boolean;
  readonly #checker: PasswordChecker;

  constructor(pool: Pool, options: PostgresAuthenticatorOptions = {}) {
    this.pool = pool;
    this.#logger = options.logger;
    this.#ownsPool = options.ownsPool ?? false;
    this.#checker = new PasswordChecker({ label: 'postgres', logger: options.logger, verify: options.verify, dummy: options.dummy });
  }

  /**
   * Creates the pool from an `[auth.postgres]` section, applies pending
   * migrations when `migrate` is true (the default), and returns an
   * authenticator that owns the pool. A database that cannot be reached here
   * rejects with the pg error; the caller decides whether that is fatal.
   */
  static async open(config: PostgresConfigInput, options: Omit<PostgresAuthenticatorOptions, 'ownsPool'> = {}): Promise<PostgresAuthenticator> {
    const pool = createPostgresPool(config, options.logger);
    try {
      if (config.migrate ?? true) await migrate(pool, { logger: options.logger });
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw e;
    }
    return new PostgresAuthenticator(pool, { ...options, ownsPool: true });
  }

  async authenticate(c: Credentials, _conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null> {
    signal?.throwIfAborted();
    const req = passwordRequest(c);
    if (req === null) return null;
    const found = await this.#lookup(req.username);
    const row = found?.enabled ? found : undefined;
    if (!(await this.#checker.check(req.password, row && { username: row.username, secret: row.password })) || !row) return null;
    return principalOf(row);
  }

  async lookupPrincipal(username: string, signal?: AbortSignal): Promise<Principal | undefined> {
    signal?.throwIfAborted();
    if (!usableName(username)) return undefined;
    const row = await this.#lookup(username);
    return row?.enabled ? principalOf(row) : undefined;
  }

  /** The stored secret of an enabled user, for challenge-response mechanisms. */
  async lookupSecret(username: string, signal?: AbortSignal): Promise<string | undefined> {
    signal?.throwIfAborted();
    if (!usableName(username)) return undefined;
    const row = await this.#lookup(username);
    return row?.enabled ? row.password : undefined;
  }

  async close(): Promise<void> {
    if (this.#ownsPool) await this.pool.end();
  }

  async #lookup(username: string): Promise<UserRow | undefined> {
    try {
      const { rows } = await this.pool.query<UserRow>(LOOKUP, [username]);
      return rows[0];
    } catch (e) {
      this.#logger?.(`postgres: user lookup failed: ${e instanceof Error ? e.message : String(e)}`);
      throw new TemporaryFailure('authentication backend unavailable', { cause: e });
    }
  }
}

function principalOf(row: UserRow): Principal {
  return {
    username: row.username,
    ...(row.home !== null && row.home !== '' ? { home: row.home } : {}),
    ...(row.maildir !== null && row.maildir !== '' ? { maildir: row.maildir } : {}),
    ...quotaOf(row),
  };
}

/** The user's own quota columns (NULL: the `[quota]` default); a value past 2^53 - 1 counts as no limit. */
function quotaOf(row: UserRow): { quota?: UserQuota } {
  const n = (v: string | null): number | undefined => {
    if (v === null || !/^\d{1,20}$/.test(String(v))) return undefined;
    const x = Number(v);
    return Number.isSafeInteger(x) ? x : 0;
  };
  const bytes = n(row.quota_bytes);
  const messages = n(row.quota_messages);
  if (bytes === undefined && messages === undefined) return {};
  return { quota: { ...(bytes !== undefined ? { bytes } : {}), ...(messages !== undefined ? { messages } : {}) } };
}
