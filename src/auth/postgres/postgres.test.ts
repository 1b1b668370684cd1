import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Pool } from 'pg';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { TemporaryFailure } from '../../errors.js';
import { dummyVerify, hashPassword, verifyPassword } from '../schemes.js';
import type { ConnectionInfo, Credentials } from '../types.js';
import { PostgresAuthenticator } from './authenticator.js';
import { PostgresConfigSchema, createPostgresPool } from './config.js';
import { MIGRATIONS, SCHEMA_VERSION, migrate, schemaVersion } from './migrations.js';
import { PostgresUserError, addUser, getUser, listUsers, removeUser, setEnabled, setMaildir, setPassword, setQuota } from './users.js';

const CONN: ConnectionInfo = { remoteAddress: '192.0.2.1', remotePort: 50000, localAddress: '192.0.2.2', localPort: 995, secure: true };
const DB = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };
const RUN = `poplar_test_${randomBytes(6).toString('hex')}`;

const admin = new pg.Pool({ ...DB, max: 2 });
const schemas: string[] = [];
const pools: Pool[] = [];

/** A new empty schema and a pool whose search_path points at it. */
async function freshPool(max = 4): Promise<{ schema: string; pool: Pool }> {
  const schema = `${RUN}_${schemas.length}`;
  await admin.query(`CREATE SCHEMA ${schema}`);
  schemas.push(schema);
  return { schema, pool: poolFor(schema, max) };
}

function poolFor(schema: string, max = 4): Pool {
  const pool = new pg.Pool({ ...DB, max, options: `-c search_path=${schema}` });
  pool.on('error', () => undefined);
  pools.push(pool);
  return pool;
}

afterAll(async () => {
  await Promise.allSettled(pools.map((p) => p.end()));
  for (const s of schemas) await admin.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  await admin.end();
});

const pw = (username: string, password: string, authzid?: string): Credentials =>
  authzid === undefined ? { kind: 'password', username, password } : { kind: 'password', username, password, authzid };

async function expectSysTemp(p: Promise<unknown>): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TemporaryFailure);
}

describe('migrate', () => {
  it('creates the schema once and is idempotent', async () => {
    const { pool } = await freshPool();
    expect(await schemaVersion(pool)).toBe(0);
    expect(await migrate(pool)).toEqual(MIGRATIONS.map((m) => m.version));
    expect(await migrate(pool)).toEqual([]);
    expect(await schemaVersion(pool)).toBe(SCHEMA_VERSION);
    const cols = await pool.query<{ column_name: string; data_type: string; is_nullable: string }>(
      `SELECT column_name, data_type, is_nullable FROM information_schema.columns
        WHERE table_schema = current_schema() AND table_name = 'poplar_users' ORDER BY ordinal_position`,
    );
    expect(cols.rows.map((r) => [r.column_name, r.data_type, r.is_nullable])).toEqual([
      ['username', 'text', 'NO'],
      ['password', 'text', 'NO'],
      ['home', 'text', 'YES'],
      ['maildir', 'text', 'YES'],
      ['enabled', 'boolean', 'NO'],
      ['created_at', 'timestamp with time zone', 'YES'],
      ['quota_bytes', 'bigint', 'YES'],
      ['quota_messages', 'bigint', 'YES'],
    ]);
    const applied = await pool.query<{ version: number; applied_at: Date }>('SELECT version, applied_at FROM poplar_schema_migrations');
    expect(applied.rows).toHaveLength(MIGRATIONS.length);
    expect(applied.rows[0]?.applied_at).toBeInstanceOf(Date);
  });

  it('applies each migration exactly once when three nodes start at once', async () => {
    const { schema } = await freshPool();
    const nodes = [poolFor(schema), poolFor(schema), poolFor(schema)];
    const results = await Promise.all(nodes.map((p) => migrate(p)));
    expect(results.flat().sort()).toEqual(MIGRATIONS.map((m) => m.version));
    expect(results.filter((r) => r.length > 0)).toHaveLength(1);
    const { rows } = await nodes[0]!.query<{ n: string }>('SELECT count(*) AS n FROM poplar_schema_migrations');
    expect(Number(rows[0]?.n)).toBe(MIGRATIONS.length);
  });

  it('applies later migrations and rolls back a failing batch completely', async () => {
    const { pool } = await freshPool();
    await migrate(pool);
    const extra = [
      ...MIGRATIONS,
      { version: 900, name: '900_ok', sql: 'CREATE TABLE poplar_extra (id int)' },
      { version: 901, name: '901_broken', sql: 'CREATE TABLE poplar_broken (' },
    ];
    await expect(migrate(pool, { migrations: extra })).rejects.toThrow();
    expect(await schemaVersion(pool)).toBe(SCHEMA_VERSION);
    const t = await pool.query<{ t: string | null }>(`SELECT to_regclass('poplar_extra')::text AS t`);
    expect(t.rows[0]?.t).toBeNull();
    expect(await migrate(pool, { migrations: extra.slice(0, -1) })).toEqual([900]);
  });

  it('reports versions it does not know', async () => {
    const { pool } = await freshPool();
    await migrate(pool);
    await pool.query('INSERT INTO poplar_schema_migrations (version, applied_at) VALUES (9999, now())');
    const logs: string[] = [];
    expect(await migrate(pool, { logger: (m) => logs.push(m) })).toEqual([]);
    expect(logs.join('\n')).toContain('9999');
  });
});

describe('PostgresAuthenticator', () => {
  let pool: Pool;
  beforeAll(async () => {
    ({ pool } = await freshPool());
    await migrate(pool);
    await addUser(pool, { username: 'alice', password: await hashPassword('pencil'), home: '/home/alice', maildir: '/var/mail/alice' });
    await addUser(pool, { username: 'bob', password: await hashPassword('pencil', 'SHA512-CRYPT') });
    await addUser(pool, { username: 'carol', password: '{PLAIN}pencil', enabled: false });
    await pool.query(`INSERT INTO poplar_users (username, password, home, maildir) VALUES ('dave', '{NOPE}pencil', '', '')`);
  });

  it('accepts correct passwords and returns home and maildir when set', async () => {
    const auth = new PostgresAuthenticator(pool);
    expect(await auth.authenticate(pw('alice', 'pencil'), CONN)).toEqual({ username: 'alice', home: '/home/alice', maildir: '/var/mail/alice' });
    const bob = await auth.authenticate(pw('bob', 'pencil', 'bob'), CONN);
    expect(bob).toEqual({ username: 'bob' });
    expect(bob && ('home' in bob || 'maildir' in bob)).toBe(false);
  });

  it('rejects wrong passwords, other spellings, other authzids and bearer credentials', async () => {
    const auth = new PostgresAuthenticator(pool);
    expect(await auth.authenticate(pw('alice', 'Pencil'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('Alice', 'pencil'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('alice', 'pencil', 'bob'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('', 'pencil'), CONN)).toBeNull();
    expect(await auth.authenticate({ kind: 'bearer', username: 'alice', token: 'pencil' }, CONN)).toBeNull();
  });

  it('rejects disabled and unknown users and unusable secrets after a dummy verification', async () => {
    const verify = vi.fn(verifyPassword);
    const dummy = vi.fn(dummyVerify);
    const logs: string[] = [];
    const auth = new PostgresAuthenticator(pool, { verify, dummy, logger: (m) => logs.push(m) });
    expect(await auth.authenticate(pw('carol', 'pencil'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('mallory', 'pencil'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('dave', 'pencil'), CONN)).toBeNull();
    expect(await auth.authenticate(pw('dave', 'pencil'), CONN)).toBeNull();
    expect(dummy).toHaveBeenCalledTimes(4);
    expect(verify).not.toHaveBeenCalled();
    expect(logs.filter((l) => l.includes('dave'))).toHaveLength(1);
    expect(logs.join('\n')).not.toContain('pencil}');
  });

  it('gives a delivery the quota columns a user has (NULL: none given, so the default applies)', async () => {
    const auth = new PostgresAuthenticator(pool);
    await setQuota(pool, 'bob', { bytes: 1000, messages: null });
    expect(await auth.lookupPrincipal('bob')).toEqual({ username: 'bob', quota: { bytes: 1000 } });
    await setQuota(pool, 'bob', { bytes: 0, messages: 7 });
    expect(await auth.lookupPrincipal('bob')).toEqual({ username: 'bob', quota: { bytes: 0, messages: 7 } });
    await expect(setQuota(pool, 'bob', { bytes: -1, messages: null })).rejects.toMatchObject({ code: 'INVALID_FIELD' });
    await expect(setQuota(pool, 'nobody', { bytes: 1, messages: 1 })).rejects.toMatchObject({ code: 'NO_SUCH_USER' });
    await setQuota(pool, 'bob', { bytes: null, messages: null });
    expect(await auth.lookupPrincipal('bob')).toEqual({ username: 'bob' });
  });

  it('looks up secrets of enabled users only', async () => {
    const auth = new PostgresAuthenticator(pool);
    expect(await auth.lookupSecret('alice')).toMatch(/^\{ARGON2ID\}/);
    expect(await auth.lookupSecret('carol')).toBeUndefined();
    expect(await auth.lookupSecret('mallory')).toBeUndefined();
  });

  it('answers SYS/TEMP when the database is unreachable', async () => {
    const dead = new pg.Pool({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'test', connectionTimeoutMillis: 2000 });
    dead.on('error', () => undefined);
    const logs: string[] = [];
    const auth = new PostgresAuthenticator(dead, { ownsPool: true, logger: (m) => logs.push(m) });
    await expectSysTemp(auth.authenticate(pw('alice', 'pencil'), CONN));
    await expectSysTemp(auth.lookupSecret('alice'));
    await expect(migrate(dead)).rejects.toThrow();
    expect(logs.join('\n')).not.toContain('pencil');
    await auth.close();
  });

  it('answers SYS/TEMP when the schema has not been migrated', async () => {
    const { pool: empty } = await freshPool();
    await expectSysTemp(new PostgresAuthenticator(empty).authenticate(pw('alice', 'pencil'), CONN));
  });
});

describe('PostgresAuthenticator.open and createPostgresPool', () => {
  it('parses the config section, migrates and owns the pool', async () => {
    const { schema } = await freshPool();
    const cfg = PostgresConfigSchema.parse({ url: `postgres://postgres@127.0.0.1:5432/test`, schema });
    expect(cfg).toMatchObject({ pool_size: 10, connect_timeout: 5, query_timeout: 5, migrate: true });
    expect(PostgresConfigSchema.safeParse({ schema: 'x; drop table y' }).success).toBe(false);
    const auth = await PostgresAuthenticator.open(cfg);
    await addUser(auth.pool, { username: 'erin', password: '{PLAIN}pencil' });
    expect(await auth.authenticate(pw('erin', 'pencil'), CONN)).toEqual({ username: 'erin' });
    await auth.close();
    expect(auth.pool.ended).toBe(true);
  });

  it('fails to open against a closed port', async () => {
    await expect(PostgresAuthenticator.open({ url: 'postgres://postgres@127.0.0.1:1/test', connect_timeout: 2 })).rejects.toThrow();
    const pool = createPostgresPool({ url: 'postgres://postgres@127.0.0.1:1/test' });
    await expectSysTemp(new PostgresAuthenticator(pool, { ownsPool: true }).authenticate(pw('a', 'b'), CONN));
    await pool.end();
  });
});

describe('user administration', () => {
  let pool: Pool;
  beforeAll(async () => {
    ({ pool } = await freshPool());
    await migrate(pool);
  });

  it('adds, lists, updates and removes users', async () => {
    await addUser(pool, { username: 'zoe', password: '{PLAIN}a' });
    await addUser(pool, { username: 'Adam', password: '{PLAIN}b', home: '/home/adam' });
    await addUser(pool, { username: 'adam', password: '{PLAIN}c' });
    expect(await listUsers(pool)).toEqual(['Adam', 'adam', 'zoe']);
    await expect(addUser(pool, { username: 'zoe', password: '{PLAIN}x' })).rejects.toMatchObject({ code: 'USER_EXISTS' });
    await expect(addUser(pool, { username: 'a/b', password: '{PLAIN}x' })).rejects.toMatchObject({ code: 'INVALID_NAME' });
    await expect(addUser(pool, { username: 'ok', password: '{NOPE}x' })).rejects.toMatchObject({ code: 'INVALID_FIELD' });
    await expect(addUser(pool, { username: 'ok', password: '' })).rejects.toBeInstanceOf(PostgresUserError);

    const auth = new PostgresAuthenticator(pool);
    await setPassword(pool, 'zoe', '{PLAIN}new');
    expect(await auth.authenticate(pw('zoe', 'new'), CONN)).toEqual({ username: 'zoe' });
    await setMaildir(pool, 'zoe', '/srv/mail/zoe');
    expect(await auth.authenticate(pw('zoe', 'new'), CONN)).toEqual({ username: 'zoe', maildir: '/srv/mail/zoe' });
    await setEnabled(pool, 'zoe', false);
    expect(await auth.authenticate(pw('zoe', 'new'), CONN)).toBeNull();
    expect(await getUser(pool, 'zoe')).toMatchObject({ username: 'zoe', enabled: false, maildir: '/srv/mail/zoe', home: null });
    expect((await getUser(pool, 'zoe'))?.createdAt).toBeInstanceOf(Date);
    await setEnabled(pool, 'zoe', true);
    expect(await auth.authenticate(pw('zoe', 'new'), CONN)).toEqual({ username: 'zoe', maildir: '/srv/mail/zoe' });

    await removeUser(pool, 'zoe');
    expect(await getUser(pool, 'zoe')).toBeUndefined();
    await expect(removeUser(pool, 'zoe')).rejects.toMatchObject({ code: 'NO_SUCH_USER' });
    await expect(setPassword(pool, 'zoe', '{PLAIN}x')).rejects.toMatchObject({ code: 'NO_SUCH_USER' });
    expect(await listUsers(pool)).toEqual(['Adam', 'adam']);
  });

  it('reports an unreachable database as UNAVAILABLE', async () => {
    const dead = new pg.Pool({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'test', connectionTimeoutMillis: 2000 });
    dead.on('error', () => undefined);
    await expect(listUsers(dead)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await dead.end();
  });
});
