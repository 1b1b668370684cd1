import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Pool } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { POSTGRES_CONNECTION as DB, lacksPostgres } from '../../test/helpers/peers.js';
import { MIGRATIONS, migrate } from './postgres/migrations.js';
import { LoginThrottle } from './throttle.js';
import { FallbackGate, FallbackThrottleStore } from './throttle-fallback.js';
import { LIMITS_HISTORY_TABLE, LIMITS_MIGRATIONS, PostgresLoginDelayStore, PostgresThrottleStore, migrateLimits, storedKey } from './throttle-postgres.js';

const PG_DOWN = await lacksPostgres();
const RUN = `poplar_limits_${randomBytes(6).toString('hex')}`;
const admin = PG_DOWN ? undefined : new pg.Pool({ ...DB, max: 2 });
const schemas: string[] = [];
const pools: Pool[] = [];

/** A fresh schema with the limits tables, and `n` pools on it (one per node). */
async function nodes(n = 2): Promise<Pool[]> {
  const schema = `${RUN}_${schemas.length}`;
  await admin!.query(`CREATE SCHEMA ${schema}`);
  schemas.push(schema);
  const ps = Array.from({ length: n }, () => {
    const p = new pg.Pool({ ...DB, max: 4, options: `-c search_path=${schema}` });
    p.on('error', () => undefined);
    pools.push(p);
    return p;
  });
  await migrateLimits(ps[0]!);
  return ps;
}

afterAll(async () => {
  await Promise.allSettled(pools.map((p) => p.end()));
  for (const s of schemas) await admin?.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  await admin?.end();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.skipIf(PG_DOWN)('login counters in PostgreSQL', () => {
  it('migrations have their own history table, beside the users backend in the same schema', async () => {
    const [pool] = await nodes(1);
    expect(await migrateLimits(pool!)).toEqual([]); // already applied by nodes()
    // The users' versions are a different history: all of them are applied, whatever the limits' history holds.
    expect(await migrate(pool!)).toEqual(MIGRATIONS.map((m) => m.version));
    const { rows } = await pool!.query<{ version: number }>(`SELECT version FROM ${LIMITS_HISTORY_TABLE}`);
    expect(rows.map((r) => r.version)).toEqual(LIMITS_MIGRATIONS.map((m) => m.version));
    const tables = await pool!.query<{ t: string }>(`SELECT table_name AS t FROM information_schema.tables WHERE table_schema = current_schema() ORDER BY 1`);
    expect(tables.rows.map((r) => r.t)).toEqual(['poplar_auth_failures', 'poplar_limits_migrations', 'poplar_login_times', 'poplar_schema_migrations', 'poplar_users']);
  });

  it('failures counted on one node block the address on the other', async () => {
    const [a, b] = await nodes(2);
    const nodeA = new LoginThrottle({ store: new PostgresThrottleStore(a!), ipBlockAfter: 3, baseDelayMs: 100 });
    const nodeB = new LoginThrottle({ store: new PostgresThrottleStore(b!), ipBlockAfter: 3, baseDelayMs: 100 });
    expect(await nodeA.recordFailure('192.0.2.1', 'alice')).toBe(100);
    expect(await nodeB.recordFailure('192.0.2.1', 'bob')).toBe(200);
    expect(await nodeA.isBlocked('192.0.2.1', 'carol')).toBe(false);
    expect(await nodeA.recordFailure('::ffff:192.0.2.1', 'carol')).toBe(400);
    expect(await nodeB.isBlocked('192.0.2.1', 'anyone')).toBe(true);
    expect(await nodeB.isBlocked('192.0.2.2', 'anyone')).toBe(false);
    // the user's counter is shared too, and a success on B clears it for A
    expect(await nodeA.delayFor('203.0.113.5', 'alice')).toBe(100);
    await nodeB.recordFailure('203.0.113.6', 'alice');
    expect(await nodeA.delayFor('203.0.113.5', 'alice')).toBe(200);
    await nodeB.recordSuccess('203.0.113.6', 'alice');
    expect(await nodeA.delayFor('203.0.113.5', 'alice')).toBe(100);
  });

  it('concurrent failures on two nodes are all counted, without deadlocks', async () => {
    const [a, b] = await nodes(2);
    const stores = [new PostgresThrottleStore(a!), new PostgresThrottleStore(b!)];
    // The two kinds of batches name the keys in opposite orders.
    await Promise.all(
      Array.from({ length: 60 }, (_, i) => stores[i % 2]!.increment(i % 2 === 0 ? ['ip:x', 'user:y'] : ['user:y', 'ip:x'], 0, 60_000)),
    );
    expect(await stores[0]!.counts(['ip:x', 'user:y', 'ip:z'], 0, 60_000)).toEqual([60, 60, 0]);
  });

  it('uses the database clock: a window passes on its time, whatever `now` the caller passes', async () => {
    const [a] = await nodes(1);
    const s = new PostgresThrottleStore(a!);
    expect(await s.increment(['ip:w'], 0, 400)).toEqual([1]);
    expect(await s.increment(['ip:w'], 9e15, 400)).toEqual([2]);
    expect(await s.counts(['ip:w'], 0, 400)).toEqual([2]);
    await sleep(500);
    expect(await s.counts(['ip:w'], 0, 400)).toEqual([0]);
    expect(await s.increment(['ip:w'], 0, 400)).toEqual([1]);
  });

  it('takes keys no table could hold: a batch naming one key twice, NUL, very long keys', async () => {
    const [a] = await nodes(1);
    const s = new PostgresThrottleStore(a!);
    const nul = 'user:a\0b';
    const long = `user:${'é'.repeat(5000)}`;
    expect(await s.increment(['ip:d', 'ip:d'], 0, 60_000)).toEqual([1, 1]);
    expect(await s.increment([nul, long], 0, 60_000)).toEqual([1, 1]);
    expect(await s.increment([nul, long], 0, 60_000)).toEqual([2, 2]);
    expect(await s.counts([long, nul, 'user:a'], 0, 60_000)).toEqual([2, 2, 0]);
    expect(storedKey(long).length).toBeLessThanOrEqual(60);
    const { rows } = await a!.query<{ n: number }>('SELECT max(octet_length(key))::int AS n FROM poplar_auth_failures');
    expect(rows[0]!.n).toBeLessThanOrEqual(200);
    await s.reset([nul, long]);
    expect(await s.counts([nul, long], 0, 60_000)).toEqual([0, 0]);
  });

  it('prunes only rows whose window has passed', async () => {
    const [a] = await nodes(1);
    const s = new PostgresThrottleStore(a!);
    await s.increment(['ip:old1', 'ip:old2'], 0, 300);
    await sleep(400);
    await s.increment(['ip:new'], 0, 300);
    expect(await s.prune()).toBe(2);
    const { rows } = await a!.query<{ key: string }>('SELECT key FROM poplar_auth_failures');
    expect(rows.map((r) => r.key)).toEqual(['ip:new']);
  });

  it('prunes in the background now and then, not on every call', async () => {
    const [a] = await nodes(1);
    const s = new PostgresThrottleStore(a!, { pruneEveryMs: 300 });
    await s.increment(['ip:p1'], 0, 100);
    await sleep(150);
    await s.increment(['ip:p2'], 0, 100); // within 300 ms of creation: no pruning yet
    expect((await a!.query('SELECT 1 FROM poplar_auth_failures')).rowCount).toBe(2);
    await sleep(300);
    await s.increment(['ip:p3'], 0, 100); // starts a pruning of p1 and p2
    for (let i = 0; i < 50 && (await a!.query('SELECT 1 FROM poplar_auth_failures')).rowCount !== 1; i++) await sleep(20);
    expect((await a!.query<{ key: string }>('SELECT key FROM poplar_auth_failures')).rows).toEqual([{ key: 'ip:p3' }]);
  });

  it('LOGIN-DELAY set by a login on one node is enforced on the other, and ends on time', async () => {
    const [a, b] = await nodes(2);
    const nodeA = new PostgresLoginDelayStore(a!);
    const nodeB = new PostgresLoginDelayStore(b!);
    expect(await nodeB.waitMs('alice', 0, 1000)).toBe(0);
    await nodeA.recordLogin('alice', 0, 1000);
    const w = await nodeB.waitMs('alice', 0, 1000);
    expect(w).toBeGreaterThan(800);
    expect(w).toBeLessThanOrEqual(1000);
    expect(await nodeB.waitMs('bob', 0, 1000)).toBe(0);
    await sleep(1100);
    expect(await nodeB.waitMs('alice', 0, 1000)).toBe(0);
    await nodeA.recordLogin('x'.repeat(3000), 0, 300);
    await sleep(400);
    await nodeA.recordLogin('fresh', 0, 300);
    expect(await nodeA.prune()).toBe(1);
  });

  it('a database that cannot be reached fails the call, and the fallback keeps counting in memory', async () => {
    const dead = new pg.Pool({ ...DB, port: 1, connectionTimeoutMillis: 500 });
    dead.on('error', () => undefined);
    pools.push(dead);
    const warnings: string[] = [];
    await expect(new PostgresThrottleStore(dead).counts(['ip:a'], 0, 1000)).rejects.toThrow();
    const gate = new FallbackGate({ name: 'postgres', warn: (m) => warnings.push(m) });
    const t = new LoginThrottle({ store: new FallbackThrottleStore(new PostgresThrottleStore(dead), gate), ipBlockAfter: 2, baseDelayMs: 100 });
    expect(await t.recordFailure('192.0.2.9', 'u')).toBe(100);
    expect(await t.recordFailure('192.0.2.9', 'u')).toBe(200);
    expect(await t.isBlocked('192.0.2.9', 'v')).toBe(true);
    expect(await t.isBlocked('192.0.2.10', 'v')).toBe(false);
    expect(warnings).toHaveLength(1);
  });
});
