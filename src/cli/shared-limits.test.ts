import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { POSTGRES_CONNECTION as PG, lacksPostgres } from '../../test/helpers/peers.js';
import { ConfigError } from '../config/errors.js';
import type { ResolvedConfig } from '../config/load.js';
import { ConfigSchema } from '../config/schema.js';
import { silentLogger } from '../observability/log.js';
import { limitsDatabase, sharedLimits } from './shared-limits.js';

const PG_DOWN = await lacksPostgres();
const url = `postgres://${PG.user}@${PG.host}:${PG.port}/${PG.database}`;
const RUN = `poplar_shared_limits_${randomBytes(5).toString('hex')}`;
const admin = PG_DOWN ? undefined : new pg.Pool({ ...PG, max: 2 });
const schemas: string[] = [];

afterAll(async () => {
  for (const s of schemas) await admin?.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  await admin?.end();
});

/** A resolved configuration; `store` may name a PostgreSQL store section. */
function config(input: Record<string, unknown>, store?: Record<string, unknown>): ResolvedConfig {
  const c = ConfigSchema.parse(input) as unknown as ResolvedConfig;
  return store === undefined ? c : ({ ...c, store: { ...c.store, ...store } } as unknown as ResolvedConfig);
}

async function schema(): Promise<string> {
  const s = `${RUN}_${schemas.length}`;
  schemas.push(s);
  await admin!.query(`CREATE SCHEMA ${s}`);
  return s;
}

async function tablesIn(s: string): Promise<string[]> {
  const { rows } = await admin!.query<{ t: string }>(`SELECT table_name AS t FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1`, [s]);
  return rows.map((r) => r.t);
}

describe('where login counters live', () => {
  it('in memory for one process without a database, in the primary for a --workers worker', async () => {
    const solo = await sharedLimits(config({}), silentLogger(), false);
    expect(solo.where).toBe('memory');
    const worker = await sharedLimits(config({}), silentLogger(), true);
    expect(worker.where).toBe('primary');
  });

  it('a [auth.postgres] section the users do not use is not a place for counters', () => {
    expect(limitsDatabase(config({ auth: { type: 'passwd-file', postgres: { url } } }))).toBeUndefined();
    expect(limitsDatabase(config({ auth: { type: 'postgres', postgres: { url, schema: 'u' } } }))).toMatchObject({ schema: 'u' });
    expect(limitsDatabase(config({ auth: { type: 'postgres', postgres: { url, schema: 'u' } } }, { type: 'postgres', postgres: { url, schema: 's' } }))).toMatchObject({ schema: 's' });
  });

  it.skipIf(PG_DOWN)('in the users database, for workers too: its tables are created there', async () => {
    const s = await schema();
    const limits = await sharedLimits(config({ auth: { type: 'postgres', postgres: { url, schema: s } } }), silentLogger(), true);
    try {
      expect(limits.where).toBe('postgres');
      expect(await tablesIn(s)).toEqual(['poplar_auth_failures', 'poplar_limits_migrations', 'poplar_login_times']);
      expect(await limits.throttleStore.increment(['ip:192.0.2.1'], Date.now(), 60_000)).toEqual([1]);
      await limits.loginDelayStore.recordLogin('alice', Date.now(), 60_000);
      expect(await limits.loginDelayStore.waitMs('alice', Date.now(), 60_000)).toBeGreaterThan(50_000);
    } finally {
      await limits.close();
    }
  });

  it.skipIf(PG_DOWN)("in the store's database when both are PostgreSQL", async () => {
    const users = await schema();
    const store = await schema();
    // Parsed like a config file: the store's section carries lease_timeout, which is not a connection setting.
    const parsed = config({ auth: { type: 'postgres', postgres: { url, schema: users } }, store: { type: 'postgres', postgres: { url, schema: store } } });
    expect(parsed.store.postgres?.lease_timeout).toBe(30);
    const limits = await sharedLimits(parsed, silentLogger(), false);
    await limits.close();
    expect(await tablesIn(store)).toContain('poplar_auth_failures');
    expect(await tablesIn(users)).toEqual([]);
  });

  it.skipIf(PG_DOWN)('migrate = false creates nothing', async () => {
    const s = await schema();
    const limits = await sharedLimits(config({ auth: { type: 'postgres', postgres: { url, schema: s, migrate: false } } }), silentLogger(), false);
    await limits.close();
    expect(await tablesIn(s)).toEqual([]);
  });

  it('a database that cannot be reached at start is a configuration error', async () => {
    const c = config({ auth: { type: 'postgres', postgres: { url: `postgres://${PG.user}@127.0.0.1:1/test`, connect_timeout: 1 } } });
    const e = await sharedLimits(c, silentLogger(), false).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(e).toBeInstanceOf(ConfigError);
    expect((e as Error).message).toMatch(/cannot use the PostgreSQL database for login counters: .*ECONNREFUSED/);
  });
});
