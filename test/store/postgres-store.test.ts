/**
 * What only the PostgreSQL store has: the lease across nodes (InUseError,
 * expiry after a node stops renewing, fencing at UPDATE), idle sessions that
 * hold no connection, shared bodies and the sweep, rows written by someone
 * else, the migration side, and the listing of a 100 000-message maildrop.
 */
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { describe, expect, it, vi } from 'vitest';
import { MIGRATIONS, SCHEMA_VERSION, migrate, schemaVersion } from '../../src/auth/postgres/migrations.js';
import { InUseError, MessageUnavailable, TemporaryFailure } from '../../src/errors.js';
import { silentLogger } from '../../src/observability/log.js';
import { STORE_HISTORY_TABLE, STORE_MIGRATIONS, STORE_SCHEMA_VERSION, storeSchemaVersion } from '../../src/store/postgres/migrations.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { PG_URL, pgSchema } from './pg.js';

const PG_DOWN = await lacksPostgres();

async function bytes(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

async function countRows(store: PostgresStore, table: string, user: string): Promise<number> {
  const { rows } = await store.pool.query<{ n: string }>(
    `SELECT count(*) AS n FROM ${table} WHERE mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = $1)`,
    [user],
  );
  return Number(rows[0]!.n);
}

describe.skipIf(PG_DOWN)('PostgreSQL store', async () => {
  const db = PG_DOWN ? undefined! : await pgSchema();

  describe('migrations', () => {
    it('keeps its own history table beside the users backend in one schema', async () => {
      expect(await storeSchemaVersion(db.admin)).toBe(STORE_SCHEMA_VERSION);
      expect(await schemaVersion(db.admin)).toBe(0);
      expect(await migrate(db.admin)).toEqual(MIGRATIONS.map((m) => m.version));
      expect(await schemaVersion(db.admin)).toBe(SCHEMA_VERSION);
      expect(await storeSchemaVersion(db.admin)).toBe(STORE_SCHEMA_VERSION);
      const { rows } = await db.admin.query<{ n: string }>(`SELECT count(*) AS n FROM ${STORE_HISTORY_TABLE}`);
      expect(Number(rows[0]!.n)).toBe(STORE_SCHEMA_VERSION);
    });

    it('gives mailboxes made before the listing stamp existed a stamp, so their listings can be kept', async () => {
      const schema = `${db.name}_old`;
      await db.admin.query(`CREATE SCHEMA ${schema}`);
      const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 2, options: `-c search_path=${schema}` });
      try {
        // Version 1 only, a mailbox made then, then the rest.
        await migrate(pool, { migrations: STORE_MIGRATIONS.filter((m) => m.version === 1), historyTable: STORE_HISTORY_TABLE });
        await pool.query(`INSERT INTO poplar_mailboxes (username, uid_validity) VALUES ('early', 1)`);
        await migrate(pool, { migrations: STORE_MIGRATIONS, historyTable: STORE_HISTORY_TABLE });
        const { rows } = await pool.query<{ stamp: string | null }>(`SELECT listing_stamp AS stamp FROM poplar_mailboxes WHERE username = 'early'`);
        expect(rows[0]!.stamp).toMatch(/^[0-9a-f-]{36}$/);
      } finally {
        await pool.end();
        await db.admin.query(`DROP SCHEMA ${schema} CASCADE`);
      }
    });

    it('puts mailbox_id first in every key of every store table', async () => {
      const { rows } = await db.admin.query<{ table_name: string; first: string }>(
        `SELECT c.conrelid::regclass::text AS table_name, a.attname AS first
           FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
          WHERE c.contype IN ('p', 'u') AND c.connamespace = to_regnamespace(current_schema())
            AND c.conrelid::regclass::text IN ('poplar_messages', 'poplar_bodies', 'poplar_body_chunks', 'poplar_mailboxes')`,
      );
      const keys = rows.filter((r) => !(r.table_name === 'poplar_mailboxes' && r.first === 'username'));
      expect(keys.length).toBeGreaterThanOrEqual(5);
      for (const k of keys) expect(k.first, k.table_name).toBe('mailbox_id');
    });
  });

  describe('the lease across nodes', () => {
    it('refuses the maildrop on a second node while the first holds it, and serves it after release', async () => {
      const a = db.store();
      const b = db.store();
      await a.deliver('nodes', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const md = await a.open({ username: 'nodes' });
      await expect(b.open({ username: 'nodes' })).rejects.toBeInstanceOf(InUseError);
      await md.release();
      const md2 = await b.open({ username: 'nodes' });
      expect(md2.messages).toHaveLength(1);
      await expect(a.open({ username: 'nodes' })).rejects.toBeInstanceOf(InUseError);
      await md2.release();
    });

    it('keeps a lease alive past its timeout while the session lives (renewal)', async () => {
      const a = db.store({ leaseTimeout: 1 });
      const b = db.store({ leaseTimeout: 1 });
      await a.deliver('renewed', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const md = await a.open({ username: 'renewed' });
      await sleep(2500);
      await expect(b.open({ username: 'renewed' })).rejects.toBeInstanceOf(InUseError);
      await md.commit([0]);
      await md.release();
      expect(await countRows(a, 'poplar_messages', 'renewed')).toBe(0);
    });

    it('a node that stops renewing loses the lease after lease_timeout; its UPDATE then removes nothing', async () => {
      const a = db.store({ leaseTimeout: 1 });
      const b = db.store({ leaseTimeout: 1 });
      for (let i = 0; i < 2; i++) await a.deliver('dead', Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`));
      const md = await a.open({ username: 'dead' });
      // Node A hangs: no more renewals (as if SIGKILLed or cut off).
      a.leases.close();
      await expect(b.open({ username: 'dead' })).rejects.toBeInstanceOf(InUseError);
      await sleep(1300);
      const mdB = await b.open({ username: 'dead' });
      expect(mdB.messages).toHaveLength(2);
      // A wakes up and QUITs with DELE marks: refused, nothing removed.
      await expect(md.commit([0, 1])).rejects.toBeInstanceOf(TemporaryFailure);
      await md.release();
      expect(await countRows(b, 'poplar_messages', 'dead')).toBe(2);
      // B still holds the lease (A's release did not touch it) and its UPDATE works.
      await expect(a.open({ username: 'dead' })).rejects.toBeInstanceOf(Error);
      await mdB.commit([0]);
      await mdB.release();
      expect(await countRows(b, 'poplar_messages', 'dead')).toBe(1);
    });

    it('an expired lease nobody took yet does not let the UPDATE through either', async () => {
      const a = db.store({ leaseTimeout: 1 });
      await a.deliver('expired', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const md = await a.open({ username: 'expired' });
      a.leases.close();
      await sleep(1300);
      await expect(md.commit([0])).rejects.toBeInstanceOf(TemporaryFailure);
      await md.release();
      expect(await countRows(a, 'poplar_messages', 'expired')).toBe(1);
    });

    it('one busy mailbox row does not hold up the renewal of the others, nor lose its own lease', async () => {
      const store = db.store({ leaseTimeout: 2 });
      for (const u of ['busy', 'calm']) await store.deliver(u, Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const busy = await store.open({ username: 'busy' });
      const calm = await store.open({ username: 'calm' });
      const locker = await db.admin.connect();
      try {
        await locker.query('BEGIN');
        await locker.query(`SELECT 1 FROM poplar_mailboxes WHERE username = 'busy' FOR UPDATE`);
        const before = await db.admin.query<{ e: Date }>(`SELECT lease_expires AS e FROM poplar_mailboxes WHERE username = 'calm'`);
        const t0 = performance.now();
        await store.leases.renewAll();
        expect(performance.now() - t0).toBeLessThan(1000);
        const after = await db.admin.query<{ e: Date }>(`SELECT lease_expires AS e FROM poplar_mailboxes WHERE username = 'calm'`);
        expect(after.rows[0]!.e.getTime()).toBeGreaterThan(before.rows[0]!.e.getTime());
      } finally {
        await locker.query('ROLLBACK');
        locker.release();
      }
      await busy.commit([0]);
      await calm.commit([0]);
      await Promise.all([busy.release(), calm.release()]);
      expect(await countRows(store, 'poplar_messages', 'busy')).toBe(0);
    });

    it('a lease whose row stays locked (a stream of deliveries) is renewed, waiting for the lock, before it runs out', async () => {
      const store = db.store();
      await store.deliver('streamed', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const id = (await store.mailbox('streamed')).id;
      const lease = (await store.leases.acquire(id))!;
      const expires = async (): Promise<number> =>
        (await db.admin.query<{ e: Date }>(`SELECT lease_expires AS e FROM poplar_mailboxes WHERE username = 'streamed'`)).rows[0]!.e.getTime();
      const before = await expires();
      const locker = await db.admin.connect();
      try {
        await locker.query('BEGIN');
        await locker.query(`SELECT 1 FROM poplar_mailboxes WHERE username = 'streamed' FOR NO KEY UPDATE`);
        // Locked at the renewals of half the lease time: this renewal waits for the lock.
        lease.confirmedAt = performance.now() - store.leases.timeoutMs * 0.6;
        const renewal = store.leases.renewAll();
        await sleep(300);
        await locker.query('COMMIT');
        await renewal;
      } finally {
        locker.release();
      }
      expect(lease.lost).toBe(false);
      expect(await expires()).toBeGreaterThan(before);
      await store.leases.release(lease);
    });

    it('a renewal that finds the lease taken marks the session lost before it QUITs', async () => {
      const a = db.store({ leaseTimeout: 1 });
      await a.deliver('stolen', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const md = await a.open({ username: 'stolen' });
      // Someone else's lease written over ours (a new token).
      await db.admin.query(
        `UPDATE poplar_mailboxes SET lease_holder = 'other', lease_token = lease_token + 1, lease_expires = now() + interval '1 minute' WHERE username = 'stolen'`,
      );
      await a.leases.renewAll();
      await expect(md.commit([0])).rejects.toThrow(/lock was lost/);
      await md.release();
      const { rows } = await db.admin.query<{ lease_holder: string | null }>(`SELECT lease_holder FROM poplar_mailboxes WHERE username = 'stolen'`);
      expect(rows[0]!.lease_holder).toBe('other');
      expect(await countRows(a, 'poplar_messages', 'stolen')).toBe(1);
    });
  });

  it('2 000 open idle sessions on a pool of 4 connections hold no connection, keep their leases, and each commits', async () => {
    const N = 2000;
    const store = db.store({ max: 4, leaseTimeout: 1.5 });
    await db.admin.query(
      `WITH m AS (INSERT INTO poplar_mailboxes (username, uid_validity, next_uid) SELECT 'idle' || g, 1, 2 FROM generate_series(1, $1) g RETURNING mailbox_id),
            b AS (INSERT INTO poplar_bodies (mailbox_id, sha256, octets, chunks) SELECT mailbox_id, '\\x00', 15, 1 FROM m RETURNING mailbox_id, body_id),
            c AS (INSERT INTO poplar_body_chunks (mailbox_id, body_id, seq, data) SELECT mailbox_id, body_id, 0, 'Subject: idle\r\n'::bytea FROM b)
       INSERT INTO poplar_messages (mailbox_id, uid, uidl, size, body_id) SELECT mailbox_id, 1, 'idle-' || mailbox_id, 15, body_id FROM b`,
      [N],
    );
    const t0 = performance.now();
    const sessions = await Promise.all(Array.from({ length: N }, (_, i) => store.open({ username: `idle${i + 1}` })));
    const openMs = performance.now() - t0;
    expect(sessions.every((s) => s.messages.length === 1)).toBe(true);
    expect(store.pool.totalCount).toBeLessThanOrEqual(4);
    // Idle: not one connection checked out.
    expect(store.pool.totalCount - store.pool.idleCount).toBe(0);
    expect(store.leases.size).toBe(N);
    await sleep(3200); // more than twice the lease time: renewals keep all of them
    const other = db.store({ max: 1 });
    await expect(other.open({ username: 'idle777' })).rejects.toBeInstanceOf(InUseError);
    const t1 = performance.now();
    await Promise.all(sessions.map(async (s) => {
      await s.commit([0]);
      await s.release();
    }));
    const commitMs = performance.now() - t1;
    const { rows } = await db.admin.query<{ n: string }>(`SELECT count(*) AS n FROM poplar_messages m JOIN poplar_mailboxes b USING (mailbox_id) WHERE b.username LIKE 'idle%'`);
    expect(Number(rows[0]!.n)).toBe(0);
    expect(store.leases.size).toBe(0);
    console.log(`postgres store: ${N} sessions on a pool of 4: opened in ${openMs.toFixed(0)} ms, committed in ${commitMs.toFixed(0)} ms`);
  });

  describe('statement plans', () => {
    // PostgreSQL's default plan_cache_mode planned the batched lease release (array parameters) again at
    // every QUIT, and that planning was most of the database's CPU per session in the sessions/s bench.
    it('plans each named statement once per connection, however many sessions log in and out', async () => {
      const store = await PostgresStore.open({ url: PG_URL, schema: db.name, pool_size: 1, migrate: false }, { logger: silentLogger(), sweepIntervalMs: 0 });
      try {
        for (const u of ['plan-a', 'plan-b']) await store.deliver(u, Buffer.from('Subject: x\r\n\r\nx\r\n'));
        for (let i = 0; i < 12; i++) {
          const md = await store.open({ username: i % 2 === 0 ? 'plan-a' : 'plan-b' });
          expect(md.messages).toHaveLength(1);
          await md.release();
        }
        // pool_size 1: this is the connection the sessions used.
        const { rows } = await store.pool.query<{ name: string; generic_plans: string; custom_plans: string }>(
          'SELECT name, generic_plans, custom_plans FROM pg_prepared_statements',
        );
        const byName = new Map(rows.map((r) => [r.name, r]));
        for (const name of ['poplar_store_open', 'poplar_lease_release']) {
          const r = byName.get(name);
          expect(r, name).toBeDefined();
          expect(Number(r!.custom_plans), `${name}: plans made for one execution`).toBe(0);
          expect(Number(r!.generic_plans), `${name}: executions with the kept plan`).toBeGreaterThanOrEqual(12);
        }
        for (const r of rows) expect(Number(r.custom_plans), r.name).toBe(0);
      } finally {
        await store.close();
      }
    });
  });

  describe('bodies', () => {
    it('shares identical bodies within a mailbox and sweeps a body only when no message refers to it', async () => {
      const store = db.store();
      const raw = Buffer.concat([Buffer.from('Subject: same\r\n\r\n'), Buffer.alloc(700_000, 0x41)]);
      await store.deliver('shared', raw);
      await store.deliver('shared', raw);
      expect(await countRows(store, 'poplar_bodies', 'shared')).toBe(1);
      let md = await store.open({ username: 'shared' });
      expect(md.messages).toHaveLength(2);
      expect(md.messages[0]!.uidl).not.toBe(md.messages[1]!.uidl);
      await md.commit([0]);
      await md.release();
      await store.sweep();
      expect(await countRows(store, 'poplar_bodies', 'shared')).toBe(1);
      md = await store.open({ username: 'shared' });
      expect((await bytes(await md.read(0))).equals(raw)).toBe(true);
      await md.commit([0]);
      await md.release();
      // QUIT removed the message, not the body: that is the sweep's job.
      expect(await countRows(store, 'poplar_body_chunks', 'shared')).toBe(3);
      expect(await store.sweep()).toBeGreaterThanOrEqual(1);
      expect(await countRows(store, 'poplar_bodies', 'shared')).toBe(0);
      expect(await countRows(store, 'poplar_body_chunks', 'shared')).toBe(0);
    });

    it('a body with a chunk missing in the middle fails the stream instead of sending a shorter message', async () => {
      const store = db.store();
      await store.deliver('gap', Buffer.alloc(5 * 256 * 1024 + 10, 0x61));
      await db.admin.query(`DELETE FROM poplar_body_chunks WHERE seq = 4 AND mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = 'gap')`);
      const md = await store.open({ username: 'gap' });
      await expect(bytes(await md.read(0))).rejects.toBeInstanceOf(MessageUnavailable);
      await md.release();
    });

    it('reads a body of exactly four chunks with one query, and one of five with two', async () => {
      const store = db.store();
      const four = Buffer.alloc(4 * 256 * 1024, 0x62);
      const five = Buffer.alloc(4 * 256 * 1024 + 1, 0x63);
      await store.deliver('exact', four);
      await store.deliver('exact', five);
      const md = await store.open({ username: 'exact' });
      const connect = vi.spyOn(store.pool, 'connect');
      try {
        expect((await bytes(await md.read(0))).equals(four)).toBe(true);
        expect(connect).toHaveBeenCalledTimes(1);
        connect.mockClear();
        expect((await bytes(await md.read(1))).equals(five)).toBe(true);
        expect(connect).toHaveBeenCalledTimes(2);
      } finally {
        connect.mockRestore();
        await md.release();
      }
    });

    it('a body whose last chunk is gone fails the stream instead of sending a shorter message', async () => {
      const store = db.store();
      await store.deliver('tail', Buffer.alloc(4 * 256 * 1024 + 5, 0x64));
      await store.deliver('tail', Buffer.alloc(2 * 256 * 1024 + 5, 0x65));
      await db.admin.query(
        `DELETE FROM poplar_body_chunks k USING poplar_bodies b WHERE b.mailbox_id = k.mailbox_id AND b.body_id = k.body_id AND k.seq = b.chunks - 1
           AND k.mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = 'tail')`,
      );
      const md = await store.open({ username: 'tail' });
      await expect(bytes(await md.read(0))).rejects.toBeInstanceOf(MessageUnavailable);
      await expect(bytes(await md.read(1))).rejects.toBeInstanceOf(MessageUnavailable);
      await md.release();
    });

    it('a body whose chunks are gone is reported before anything is sent', async () => {
      const store = db.store();
      await store.deliver('nochunks', Buffer.from('Subject: x\r\n\r\nx\r\n'));
      await db.admin.query(`DELETE FROM poplar_body_chunks WHERE mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = 'nochunks')`);
      const md = await store.open({ username: 'nochunks' });
      await expect(md.read(0)).rejects.toBeInstanceOf(MessageUnavailable);
      await md.release();
    });
  });

  it('a database that does not answer is a temporary failure for login and delivery', async () => {
    const pool = new pg.Pool({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'test', connectionTimeoutMillis: 500 });
    pool.on('error', () => undefined);
    const store = new PostgresStore(pool, { logger: silentLogger(), ownsPool: true, sweepIntervalMs: 0 });
    try {
      await expect(store.open({ username: 'anyone' })).rejects.toBeInstanceOf(TemporaryFailure);
      await expect(store.deliver('anyone', Buffer.from('x\r\n'))).rejects.toBeInstanceOf(TemporaryFailure);
    } finally {
      await store.close();
    }
  });

  it('skips message rows POP3 cannot serve (bad UIDL, negative size) and serves the rest', async () => {
    const store = db.store();
    await store.deliver('hostile', Buffer.from('Subject: good\r\n\r\ngood\r\n'));
    const { rows } = await db.admin.query<{ mailbox_id: string; body_id: string }>(
      `SELECT m.mailbox_id, m.body_id FROM poplar_messages m JOIN poplar_mailboxes b USING (mailbox_id) WHERE b.username = 'hostile'`,
    );
    const { mailbox_id: id, body_id: body } = rows[0]!;
    const bad: [number, string, number][] = [
      [100, 'has space', 10],
      [101, 'x'.repeat(200), 10],
      [102, 'negative', -5],
      [103, 'tab\there', 10],
      [104, 'é-not-ascii', 10],
    ];
    for (const [uid, uidl, size] of bad) {
      await db.admin.query('INSERT INTO poplar_messages (mailbox_id, uid, uidl, size, body_id) VALUES ($1, $2, $3, $4, $5)', [id, uid, uidl, size, body]);
    }
    const md = await store.open({ username: 'hostile' });
    try {
      expect(md.messages).toHaveLength(1);
      expect((await bytes(await md.read(0))).toString()).toBe('Subject: good\r\n\r\ngood\r\n');
      await md.commit([0]);
    } finally {
      await md.release();
    }
  });

  describe('as a migration source and target', () => {
    it('adds messages under their UIDLs once, keeps arrival, first retrieval and order, and reads them back', async () => {
      const store = db.store();
      const arrived = new Date('2024-03-01T10:00:00Z');
      const seen = new Date('2024-03-02T11:00:00Z');
      const msgs = [
        { uidl: 'UID-b', body: Buffer.from('Subject: b\r\n\r\nb\r\n'), firstRetrieved: seen },
        { uidl: 'UID-a', body: Buffer.from('Subject: a\n\na\n'), firstRetrieved: null },
        { uidl: '00000001deadbeef', body: Buffer.from('Subject: c\r\n\r\nc\r\n'), firstRetrieved: null },
      ];
      const target = await store.openTarget('moved');
      // While the target is open, POP3 cannot open the maildrop.
      await expect(store.open({ username: 'moved' })).rejects.toBeInstanceOf(InUseError);
      for (const m of msgs) {
        expect(await target.add({ uidl: m.uidl, size: m.body.length, arrived, firstRetrieved: m.firstRetrieved }, m.body)).toBe('added');
      }
      expect(await target.add({ uidl: 'UID-a', size: 1, arrived, firstRetrieved: null }, Buffer.from('other'))).toBe('present');
      await expect(target.add({ uidl: 'bad uidl', size: 1, arrived, firstRetrieved: null }, Buffer.from('x'))).rejects.toThrow(/UIDL/);
      expect([...(await target.uidls())].sort()).toEqual(msgs.map((m) => m.uidl).sort());
      await target.close();
      // New mail after the migration never takes a migrated UIDL.
      await store.deliver('moved', Buffer.from('Subject: new\r\n\r\nnew\r\n'));
      expect(await store.users()).toContain('moved');
      const source = await store.openSource('moved');
      try {
        expect(source.messages.slice(0, 3).map((m) => [m.uidl, m.arrived.toISOString(), m.firstRetrieved?.toISOString() ?? null])).toEqual(
          msgs.map((m) => [m.uidl, arrived.toISOString(), m.firstRetrieved?.toISOString() ?? null]),
        );
        expect(source.messages[1]!.size).toBe(msgs[1]!.body.length + 3);
        expect(source.messages).toHaveLength(4);
        expect(msgs.map((m) => m.uidl)).not.toContain(source.messages[3]!.uidl);
        for (let i = 0; i < 3; i++) expect((await bytes(await source.read(i))).equals(msgs[i]!.body)).toBe(true);
      } finally {
        await source.close();
      }
      const md = await store.open({ username: 'moved' });
      expect(md.messages.map((m) => m.uidl).slice(0, 3)).toEqual(msgs.map((m) => m.uidl));
      await md.release();
    });

    it('a new message whose generated UIDL a migrated message already holds gets the next one', async () => {
      const store = db.store();
      const target = await store.openTarget('collide');
      const { rows } = await db.admin.query<{ uid_validity: string }>(`SELECT uid_validity FROM poplar_mailboxes WHERE username = 'collide'`);
      const v = Number(rows[0]!.uid_validity).toString(16).padStart(8, '0');
      // Takes uid 1 under the UIDL uid 2 would get.
      await target.add({ uidl: `00000002${v}`, size: 3, arrived: new Date(), firstRetrieved: null }, Buffer.from('a\r\n'));
      await target.close();
      await store.deliver('collide', Buffer.from('b\r\n'));
      const md = await store.open({ username: 'collide' });
      expect(md.messages.map((m) => m.uidl)).toEqual([`00000002${v}`, `00000003${v}`]);
      await md.release();
    });
  });

  it('lists a 100 000-message maildrop in one query', async () => {
    const N = 100_000;
    const store = db.store();
    await store.deliver('big', Buffer.from('Subject: one of many\r\n\r\nbody\r\n'));
    await db.admin.query(
      `INSERT INTO poplar_messages (mailbox_id, uid, uidl, size, body_id)
       SELECT m.mailbox_id, g, lpad(to_hex(g), 8, '0') || lpad(to_hex(m.uid_validity), 8, '0'), 1000 + g % 5000, b.body_id
         FROM poplar_mailboxes m JOIN poplar_bodies b USING (mailbox_id), generate_series(2, $1) g WHERE m.username = 'big'`,
      [N],
    );
    await db.admin.query(`UPDATE poplar_mailboxes SET next_uid = $1 + 1 WHERE username = 'big'`, [N]);
    await db.admin.query('VACUUM ANALYZE poplar_messages');
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      const md = await store.open({ username: 'big' });
      let octets = 0;
      for (const m of md.messages) octets += m.size;
      times.push(performance.now() - t0);
      expect(md.messages).toHaveLength(N);
      expect(octets).toBeGreaterThan(N * 1000);
      await md.release();
    }
    const plan = await db.admin.query<{ 'QUERY PLAN': string }>(
      `EXPLAIN SELECT uid, uidl, size, body_id FROM poplar_messages WHERE mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = 'big') ORDER BY uid`,
    );
    console.log(`postgres store: login+listing of ${N} messages: ${times.map((t) => t.toFixed(0)).join(', ')} ms\n${plan.rows.map((r) => r['QUERY PLAN']).join('\n')}`);
    expect(Math.min(...times)).toBeLessThan(2000);
  });
});
