/**
 * LOGIN-DELAY when the clock went back past a user's last login: the stored
 * time lies in the future and says nothing, so the user is let in instead of
 * waiting for the clock to catch up (a day, after a jump back of a day).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { POSTGRES_CONNECTION as DB, lacksPostgres } from '../../test/helpers/peers.js';
import { MemoryLoginDelayStore } from './throttle-login-delay.js';
import { PostgresLoginDelayStore, migrateLimits, storedKey } from './throttle-postgres.js';

const DAY = 86_400_000;

describe('LOGIN-DELAY after the clock went back', () => {
  it('in memory: a last login in the future is no reason to wait; the delay still holds otherwise', async () => {
    const s = new MemoryLoginDelayStore();
    const t = 1_796_000_000_000;
    await s.recordLogin('alice', t, 5_000);
    expect(await s.waitMs('alice', t + 1_000, 5_000)).toBe(4_000);
    expect(await s.waitMs('alice', t - DAY, 5_000)).toBe(0);
  });
});

const PG_DOWN = await lacksPostgres();
describe.skipIf(PG_DOWN)('LOGIN-DELAY after the clock went back (PostgreSQL)', () => {
  const schema = `poplar_delay_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ ...DB, max: 2 });
  const pool = new pg.Pool({ ...DB, max: 2, options: `-c search_path=${schema}` });
  afterAll(async () => {
    await pool.end();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
  });

  it("a last login after the database's now() is no reason to wait", async () => {
    await admin.query(`CREATE SCHEMA ${schema}`);
    await migrateLimits(pool);
    const s = new PostgresLoginDelayStore(pool);
    await s.recordLogin('alice', 0, 5_000);
    expect(await s.waitMs('alice', 0, 5_000)).toBeGreaterThan(4_000);
    await pool.query(`UPDATE poplar_login_times SET last_login = now() + interval '1 day' WHERE username = $1`, [storedKey('alice')]);
    expect(await s.waitMs('alice', 0, 5_000)).toBe(0);
  });
});
