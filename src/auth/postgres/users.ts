/**
 * User administration for the PostgreSQL backend (for `poplar user --db`).
 * Functions take stored secrets (`{SCHEME}...`, see hashPassword), never
 * plaintext passwords. Names follow the same rules as the passwd-file.
 */
import type { Pool } from 'pg';
import { usernameProblem } from '../passwd-file/passwd-file.js';
import { inspectSecret } from '../schemes.js';

export class PostgresUserError extends Error {
  readonly code: 'INVALID_NAME' | 'INVALID_FIELD' | 'USER_EXISTS' | 'NO_SUCH_USER' | 'UNAVAILABLE';
  constructor(code: PostgresUserError['code'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PostgresUserError';
    this.code = code;
  }
}

export interface PostgresUserInput {
  readonly username: string;
  /** stored secret, e.g. from hashPassword() */
  readonly password: string;
  readonly home?: string | undefined;
  readonly maildir?: string | undefined;
  readonly enabled?: boolean | undefined;
}

export interface PostgresUser {
  readonly username: string;
  readonly home: string | null;
  readonly maildir: string | null;
  readonly enabled: boolean;
  readonly createdAt: Date | null;
}

function checkName(username: string): void {
  const problem = usernameProblem(username);
  if (problem !== undefined) throw new PostgresUserError('INVALID_NAME', problem);
}

function checkSecret(secret: string): void {
  const { error } = inspectSecret(secret);
  if (error !== undefined) throw new PostgresUserError('INVALID_FIELD', `unusable password: ${error}`);
}

function checkPath(name: string, v: string | undefined): void {
  if (v !== undefined && /[\0\r\n]/.test(v)) throw new PostgresUserError('INVALID_FIELD', `${name} contains a control character`);
}

async function run<T>(what: string, f: () => Promise<T>): Promise<T> {
  try {
    return await f();
  } catch (e) {
    if (e instanceof PostgresUserError) throw e;
    if ((e as { code?: unknown }).code === '23505') throw new PostgresUserError('USER_EXISTS', `${what}: user already exists`, { cause: e });
    throw new PostgresUserError('UNAVAILABLE', `${what}: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
  }
}

export async function addUser(pool: Pool, user: PostgresUserInput): Promise<void> {
  checkName(user.username);
  checkSecret(user.password);
  checkPath('home', user.home);
  checkPath('maildir', user.maildir);
  await run('add user', () =>
    pool.query('INSERT INTO poplar_users (username, password, home, maildir, enabled) VALUES ($1, $2, $3, $4, $5)', [
      user.username,
      user.password,
      user.home ?? null,
      user.maildir ?? null,
      user.enabled ?? true,
    ]),
  );
}

async function updateOne(pool: Pool, what: string, username: string, sql: string, params: unknown[]): Promise<void> {
  const res = await run(what, () => pool.query(sql, [username, ...params]));
  if (res.rowCount === 0) throw new PostgresUserError('NO_SUCH_USER', `${what}: no such user: ${username}`);
}

export async function setPassword(pool: Pool, username: string, secret: string): Promise<void> {
  checkSecret(secret);
  await updateOne(pool, 'set password', username, 'UPDATE poplar_users SET password = $2 WHERE username = $1', [secret]);
}

export async function setEnabled(pool: Pool, username: string, enabled: boolean): Promise<void> {
  await updateOne(pool, enabled ? 'enable user' : 'disable user', username, 'UPDATE poplar_users SET enabled = $2 WHERE username = $1', [enabled]);
}

export async function setMaildir(pool: Pool, username: string, maildir: string | null): Promise<void> {
  checkPath('maildir', maildir ?? undefined);
  await updateOne(pool, 'set maildir', username, 'UPDATE poplar_users SET maildir = $2 WHERE username = $1', [maildir]);
}

export async function removeUser(pool: Pool, username: string): Promise<void> {
  await updateOne(pool, 'remove user', username, 'DELETE FROM poplar_users WHERE username = $1', []);
}

/** User names, sorted (byte order, like `ORDER BY username COLLATE "C"`). */
export async function listUsers(pool: Pool): Promise<string[]> {
  const { rows } = await run('list users', () => pool.query<{ username: string }>('SELECT username FROM poplar_users ORDER BY username COLLATE "C"'));
  return rows.map((r) => r.username);
}

/** One user without the password, or undefined. */
export async function getUser(pool: Pool, username: string): Promise<PostgresUser | undefined> {
  const { rows } = await run('get user', () =>
    pool.query<{ username: string; home: string | null; maildir: string | null; enabled: boolean; created_at: Date | null }>(
      'SELECT username, home, maildir, enabled, created_at FROM poplar_users WHERE username = $1',
      [username],
    ),
  );
  const r = rows[0];
  return r && { username: r.username, home: r.home, maildir: r.maildir, enabled: r.enabled, createdAt: r.created_at };
}

/** A user's own delivery limits (null: the `[quota]` default; 0: none). */
export async function setQuota(pool: Pool, username: string, quota: { bytes: number | null; messages: number | null }): Promise<void> {
  for (const [k, v] of Object.entries(quota)) {
    if (v !== null && !(Number.isSafeInteger(v) && v >= 0)) throw new PostgresUserError('INVALID_FIELD', `quota ${k} must be a whole number >= 0`);
  }
  await updateOne(pool, 'set quota', username, 'UPDATE poplar_users SET quota_bytes = $2, quota_messages = $3 WHERE username = $1', [quota.bytes, quota.messages]);
}
