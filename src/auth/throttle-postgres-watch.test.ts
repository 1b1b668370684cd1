/**
 * Login counters heard of through LISTEN/NOTIFY: a node answers checks for
 * clean keys without a statement, and still blocks at once what another
 * node counted.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import type { Pool } from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { POSTGRES_CONNECTION as DB, lacksPostgres } from '../../test/helpers/peers.js';
import { LoginThrottle } from './throttle.js';
import { LIMITS_HISTORY_TABLE, LIMITS_MIGRATIONS, PostgresThrottleStore, migrateLimits } from './throttle-postgres.js';

const PG_DOWN = await lacksPostgres();
const RUN = `poplar_watch_${randomBytes(6).toString('hex')}`;
const admin = PG_DOWN ? undefined : new pg.Pool({ ...DB, max: 2 });
const schemas: string[] = [];
const pools: Pool[] = [];
const stores: PostgresThrottleStore[] = [];

afterAll(async () => {
  await Promise.allSettled(stores.map((s) => s.close()));
  await Promise.allSettled(pools.map((p) => p.end()));
  for (const s of schemas) await admin?.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`);
  await admin?.end();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls until `ok()` (at most some 10 s: a notification or a reconnection is under way). */
async function until(ok: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 500 && !(await ok()); i++) await sleep(20);
}

/** A fresh schema with the limits tables, and a function making "nodes" on it. */
async function database(): Promise<{ schema: string; node: (listen: boolean) => { store: PostgresThrottleStore; statements: () => number; pool: Pool } }> {
  const schema = `${RUN}_${schemas.length}`;
  await admin!.query(`CREATE SCHEMA ${schema}`);
  schemas.push(schema);
  const options = `-c search_path=${schema}`;
  const node = (listen: boolean): { store: PostgresThrottleStore; statements: () => number; pool: Pool } => {
    const pool = new pg.Pool({ ...DB, max: 4, options });
    pool.on('error', () => undefined);
    pools.push(pool);
    let n = 0;
    const query = pool.query.bind(pool) as (...a: unknown[]) => unknown;
    (pool as unknown as { query: unknown }).query = (...a: unknown[]) => {
      n++;
      return query(...a);
    };
    const store = new PostgresThrottleStore(pool, listen ? { listen: () => new pg.Client({ ...DB, options, application_name: `${schema}_watch` }) } : {});
    stores.push(store);
    return { store, statements: () => n, pool };
  };
  const first = new pg.Pool({ ...DB, max: 1, options });
  pools.push(first);
  await migrateLimits(first);
  return { schema, node };
}

describe.skipIf(PG_DOWN)('login counters heard of as they are counted', () => {
  it('migration 2 adds the trigger that tells listeners', async () => {
    await database();
    const schema = schemas[schemas.length - 1]!;
    const { rows } = await admin!.query<{ version: number }>(`SELECT version FROM ${schema}.${LIMITS_HISTORY_TABLE} ORDER BY 1`);
    expect(rows.map((r) => r.version)).toEqual(LIMITS_MIGRATIONS.map((m) => m.version));
    expect(LIMITS_MIGRATIONS.map((m) => m.version)).toContain(2);
  });

  it('a clean login costs no statement; failures counted on node A block the address on node B; a success clears the user on B', async () => {
    const { node } = await database();
    const a = node(true);
    const b = node(true);
    await until(() => a.store.watch!.live && b.store.watch!.live);
    expect(b.store.watch!.live).toBe(true);
    const nodeA = new LoginThrottle({ store: a.store, ipBlockAfter: 3, userBlockAfter: 0, baseDelayMs: 100 });
    const nodeB = new LoginThrottle({ store: b.store, ipBlockAfter: 3, userBlockAfter: 0, baseDelayMs: 100 });

    const before = b.statements();
    expect(await nodeB.check('192.0.2.1', 'alice')).toEqual({ blocked: false, userKey: 'user:alice', userFailures: 0 });
    expect(b.statements()).toBe(before);

    for (let i = 0; i < 3; i++) await nodeA.recordFailure('192.0.2.1', 'alice');
    await until(() => b.store.watch!.size >= 2);
    expect(await nodeB.isBlocked('192.0.2.1', 'bob')).toBe(true);
    expect(await nodeB.check('198.51.100.7', 'alice')).toEqual({ blocked: false, userKey: 'user:alice', userFailures: 3 });
    // Another address and user are still clean: no statement.
    const n = b.statements();
    expect(await nodeB.isBlocked('192.0.2.2', 'carol')).toBe(false);
    expect(b.statements()).toBe(n);

    // A success on A clears alice's counter; B hears of it and asks no more about her.
    await nodeA.recordSuccess('198.51.100.7', 'alice');
    await until(() => b.store.watch!.size === 1);
    const m = b.statements();
    expect(await nodeB.check('198.51.100.8', 'alice')).toEqual({ blocked: false, userKey: 'user:alice', userFailures: 0 });
    expect(b.statements()).toBe(m);
    // The address stays blocked everywhere.
    expect(await nodeA.isBlocked('192.0.2.1', 'dave')).toBe(true);
    expect(await nodeB.isBlocked('192.0.2.1', 'dave')).toBe(true);
  });

  it('failures from before a node started, or written by hand, count on that node', async () => {
    const { node, schema } = await database();
    const a = node(false);
    await a.store.increment(['ip:192.0.2.5', 'ip:192.0.2.5'], 0, 60_000);
    await a.store.increment(['ip:192.0.2.5'], 0, 60_000);
    const b = node(true);
    await until(() => b.store.watch!.live);
    const nodeB = new LoginThrottle({ store: b.store, ipBlockAfter: 2 });
    expect(await nodeB.isBlocked('192.0.2.5', 'x')).toBe(true);
    // A row written by some other program: the trigger tells B.
    await admin!.query(`INSERT INTO ${schema}.poplar_auth_failures (key, failures, last_failure) VALUES ('ip:192.0.2.6', 5, now())`);
    await until(() => b.store.watch!.size >= 2);
    expect(await nodeB.isBlocked('192.0.2.6', 'x')).toBe(true);
  });

  it('while the listening connection is lost, every check asks the database; it comes back by itself', async () => {
    const { node, schema } = await database();
    const a = node(false);
    const b = node(true);
    await until(() => b.store.watch!.live);
    const nodeB = new LoginThrottle({ store: b.store, ipBlockAfter: 2 });
    await admin!.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1`, [`${schema}_watch`]);
    await until(() => !b.store.watch!.live);
    expect(b.store.watch!.live).toBe(false);
    // Counted while B hears nothing: B asks, so it blocks.
    await a.store.increment(['ip:192.0.2.7'], 0, 60_000);
    await a.store.increment(['ip:192.0.2.7'], 0, 60_000);
    const n = b.statements();
    expect(await nodeB.isBlocked('192.0.2.7', 'x')).toBe(true);
    expect(await nodeB.isBlocked('192.0.2.8', 'x')).toBe(false);
    expect(b.statements()).toBe(n + 2);
    // Back: the keys are read again, the blocked address stays blocked, a clean one costs nothing.
    await until(() => b.store.watch!.live);
    expect(b.store.watch!.live).toBe(true);
    const m = b.statements();
    expect(await nodeB.isBlocked('192.0.2.8', 'x')).toBe(false);
    expect(b.statements()).toBe(m);
    expect(await nodeB.isBlocked('192.0.2.7', 'x')).toBe(true);
  });
});
