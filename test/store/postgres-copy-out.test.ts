/**
 * Message bodies read with COPY (bodies.ts): the bytes come out as stored
 * whatever sizes the socket reads cut them into, the connection serves
 * ordinary statements afterwards, and an error from the database fails the
 * read without breaking the pool; the chunks reach the encoder as they came
 * (a byte stream would join them into new buffers, a copy per byte).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { CHUNK_SIZE, openBody } from '../../src/store/postgres/bodies.js';
import { storeSocket } from '../../src/store/postgres/copy-socket.js';
import { POSTGRES_CONNECTION, lacksPostgres } from '../helpers/peers.js';
import { pgSchema } from './pg.js';

const PG_DOWN = await lacksPostgres();

async function drain(s: AsyncIterable<Buffer>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of s) parts.push(p);
  return Buffer.concat(parts);
}

describe.skipIf(PG_DOWN)('PostgreSQL store: bodies read with COPY', async () => {
  const db = PG_DOWN ? undefined! : await pgSchema();
  const store = PG_DOWN ? undefined! : db.store();

  async function stored(user: string, body: Buffer): Promise<{ mailboxId: number; bodyId: number; size: number }> {
    await store.deliver(user, body);
    const { rows } = await db.admin.query<{ mailbox_id: string; body_id: string; size: string }>(
      `SELECT m.mailbox_id, m.body_id, m.size FROM poplar_messages m JOIN poplar_mailboxes b USING (mailbox_id) WHERE b.username = $1 ORDER BY uid DESC LIMIT 1`,
      [user],
    );
    return { mailboxId: Number(rows[0]!.mailbox_id), bodyId: Number(rows[0]!.body_id), size: Number(rows[0]!.size) };
  }

  it('a body of several batches comes out byte for byte, twice in a row on one connection, which then serves ordinary statements', async () => {
    // Random bytes with CRLF now and then: a few MB, so the COPY arrives in many socket reads
    // and message headers fall across their edges.
    const body = randomBytes(3 * 1024 * 1024 + 12_345);
    for (let i = 100; i < body.length; i += 997) body.set([13, 10], i);
    const b = await stored('copy-big', body);
    const one = db.pool(1);
    for (let round = 0; round < 2; round++) {
      const got = await drain(await openBody(one, b.mailboxId, b.bodyId, b.size));
      expect(got.length).toBe(body.length);
      expect(got.equals(body)).toBe(true);
    }
    const small = await stored('copy-small', Buffer.from('Subject: x\r\n\r\nshort\r\n'));
    expect((await drain(await openBody(one, small.mailboxId, small.bodyId, small.size))).toString()).toBe('Subject: x\r\n\r\nshort\r\n');
    const { rows } = await one.query<{ n: number }>('SELECT 41 + 1 AS n');
    expect(rows[0]!.n).toBe(42);
    expect(one.totalCount).toBe(1);
  });

  it('hands the chunks on as they came, never joined into bigger buffers', async () => {
    const body = randomBytes(4 * CHUNK_SIZE + 1000);
    const b = await stored('copy-pieces', body);
    const pieces: Buffer[] = [];
    for await (const p of await openBody(db.pool(1), b.mailboxId, b.bodyId, b.size)) pieces.push(p as Buffer);
    expect(Buffer.concat(pieces).equals(body)).toBe(true);
    expect(Math.max(...pieces.map((p) => p.length))).toBeLessThanOrEqual(CHUNK_SIZE);
  });

  describe('on the store\'s own connections (read straight from their read buffer)', () => {
    const tapped = (): pg.Pool => {
      const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1, options: `-c search_path=${db.name}`, stream: storeSocket as unknown as NonNullable<pg.PoolConfig['stream']> });
      pool.on('error', () => undefined);
      return pool;
    };

    it('a read that keeps every chunk (a migration) gets chunks that stay as they were', async () => {
      const body = randomBytes(5 * CHUNK_SIZE + 777);
      const b = await stored('tap-kept', body);
      const pool = tapped();
      try {
        const pieces: Buffer[] = [];
        for await (const p of await openBody(pool, b.mailboxId, b.bodyId, b.size)) pieces.push(p as Buffer);
        // Read something else on the connection in between: nothing kept may change.
        await drain(await openBody(pool, b.mailboxId, b.bodyId, b.size));
        expect(Buffer.concat(pieces).equals(body)).toBe(true);
      } finally {
        await pool.end();
      }
    });

    it('transient reads (RETR, TOP) of big and small bodies, one after the other and side by side, come out byte for byte', async () => {
      const big = randomBytes(9 * CHUNK_SIZE + 4321); // three batches: every buffer of the ring is used
      const mid = randomBytes(3 * CHUNK_SIZE + 5); // one batch, one buffer of its own
      const small = Buffer.from('Subject: s\r\n\r\nsmall\r\n');
      const bodies = [big, mid, small];
      const ids = await Promise.all(bodies.map((body, i) => stored(`tap-transient-${i}`, body)));
      const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 3, options: `-c search_path=${db.name}`, stream: storeSocket as unknown as NonNullable<pg.PoolConfig['stream']> });
      pool.on('error', () => undefined);
      // A transient consumer: each chunk is used (here: hashed into a copy) before the next is asked for.
      const readTransient = async (i: number): Promise<Buffer> => {
        const parts: Buffer[] = [];
        const b = ids[i]!;
        for await (const p of await openBody(pool, b.mailboxId, b.bodyId, b.size, undefined, true)) {
          parts.push(Buffer.from(p as Buffer));
          await new Promise((r) => setImmediate(r)); // the socket keeps reading meanwhile
        }
        return Buffer.concat(parts);
      };
      try {
        for (let round = 0; round < 2; round++) for (let i = 0; i < 3; i++) expect((await readTransient(i)).equals(bodies[i]!)).toBe(true);
        const side = await Promise.all([0, 1, 2, 0, 1, 0].map((i) => readTransient(i)));
        expect(side.map((got, k) => got.equals(bodies[[0, 1, 2, 0, 1, 0][k]!]!))).toEqual([true, true, true, true, true, true]);
      } finally {
        await pool.end();
      }
    });
  });

  it('an error from the database fails the read, and the pool serves the next read', async () => {
    const b = await stored('copy-err', randomBytes(300_000));
    const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1, options: `-c search_path=${db.name} -c lock_timeout=200` });
    pool.on('error', () => undefined);
    const locker = await db.admin.connect();
    try {
      await locker.query('BEGIN');
      await locker.query('LOCK TABLE poplar_body_chunks IN ACCESS EXCLUSIVE MODE');
      await expect(openBody(pool, b.mailboxId, b.bodyId, b.size)).rejects.toThrow(/lock timeout/);
      await locker.query('COMMIT');
      const got = await drain(await openBody(pool, b.mailboxId, b.bodyId, b.size));
      expect(got.length).toBe(300_000);
      expect((await pool.query<{ n: number }>('SELECT 7 AS n')).rows[0]!.n).toBe(7);
    } finally {
      locker.release();
      await pool.end();
    }
  });
});
