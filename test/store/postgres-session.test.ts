/**
 * What a POP3 session costs the PostgreSQL store and what it may skip:
 * statements per session (counted through a wrapped pool), the listing of a
 * big maildrop kept on a node and reused only while nothing changed (also
 * when the change came from another node), and fencing when an acquisition
 * committed without waiting for the WAL flush is lost in a crash.
 */
import type { Pool, PoolClient, QueryResult } from 'pg';
import { describe, expect, it } from 'vitest';
import { InUseError, TemporaryFailure } from '../../src/errors.js';
import { silentLogger } from '../../src/observability/log.js';
import { PostgresStore, type PostgresStoreOptions } from '../../src/store/postgres/postgres-store.js';
import { lacksPostgres } from '../helpers/peers.js';
import { pgSchema } from './pg.js';

const PG_DOWN = await lacksPostgres();

/** Statements sent through a pool (pool.query and queries of clients it hands out) and the rows they returned. */
interface Counted {
  statements: string[];
  rows: number[];
}

function counting(pool: Pool): Counted {
  const seen: Counted = { statements: [], rows: [] };
  // Every connection the pool opens: pool.query() and transactions both end up in client.query().
  pool.on('connect', (c: PoolClient) => {
    const query = c.query.bind(c) as (...a: unknown[]) => Promise<QueryResult> | undefined;
    (c as unknown as { query: unknown }).query = (...a: unknown[]) => {
      const text = typeof a[0] === 'string' ? a[0] : String((a[0] as { text?: unknown }).text);
      const last = a[a.length - 1];
      if (typeof last === 'function') {
        // pool.query() passes a callback.
        seen.statements.push(text);
        a[a.length - 1] = (err: unknown, res: QueryResult | undefined) => {
          seen.rows.push(res?.rows?.length ?? 0);
          (last as (e: unknown, r: unknown) => void)(err, res);
        };
        return query(...a);
      }
      const r = query(...a);
      if (r === undefined || typeof r.then !== 'function') return r; // a submittable (COPY)
      seen.statements.push(text);
      return r.then((res) => {
        seen.rows.push(res?.rows?.length ?? 0);
        return res;
      });
    };
  });
  return seen;
}

describe.skipIf(PG_DOWN)('PostgreSQL store: the cost of a session', async () => {
  const db = PG_DOWN ? undefined! : await pgSchema();
  /** A store ("node") on a pool whose statements are counted. */
  const node = (options: Partial<PostgresStoreOptions> = {}): { store: PostgresStore; seen: Counted } => {
    const pool = db.pool(4);
    const seen = counting(pool);
    const store = new PostgresStore(pool, { logger: silentLogger(), sweepIntervalMs: 0, leasePool: db.pool(1), ...options });
    return { store, seen };
  };
  const msg = (i: number): Buffer => Buffer.from(`Subject: ${i}\r\n\r\nbody ${i}\r\n`);

  it('a session that reads and leaves costs one statement at login and one at the end', async () => {
    const { store, seen } = node();
    await store.deliver('rt', msg(1));
    await store.deliver('rt', msg(2));
    seen.statements.length = 0;
    const md = await store.open({ username: 'rt' });
    expect(md.messages).toHaveLength(2);
    expect(seen.statements).toHaveLength(1); // lease and listing together
    await md.release();
    expect(seen.statements).toHaveLength(2);
    // A login while the maildrop is held: one statement, and IN-USE.
    const held = await store.open({ username: 'rt' });
    seen.statements.length = 0;
    await expect(node().store.open({ username: 'rt' })).rejects.toBeInstanceOf(InUseError);
    await expect(store.open({ username: 'rt' })).rejects.toBeInstanceOf(InUseError);
    expect(seen.statements).toHaveLength(1);
    await held.release();
    await store.close();
  });

  it('QUITs that come together release their leases in one statement, and every maildrop is free afterwards', async () => {
    const a = node();
    const b = node();
    const users = Array.from({ length: 12 }, (_, i) => `batch${i}`);
    for (const u of users) await a.store.deliver(u, msg(1));
    const drops = await Promise.all(users.map((u) => a.store.open({ username: u })));
    expect(a.store.leases.size).toBe(12);
    a.seen.statements.length = 0;
    await Promise.all(drops.map((d) => d.release()));
    // The first release goes out alone; the eleven that came while it was out go together.
    expect(a.seen.statements.length).toBeLessThanOrEqual(2);
    expect(a.store.leases.size).toBe(0);
    const held = await db.admin.query(`SELECT count(*)::int AS n FROM poplar_mailboxes WHERE username LIKE 'batch%' AND lease_holder IS NOT NULL`);
    expect(held.rows[0].n).toBe(0);
    // Another node takes every one of them at once.
    const onB = await Promise.all(users.map((u) => b.store.open({ username: u })));
    await Promise.all(onB.map((d) => d.release()));
    await Promise.all([a.store.close(), b.store.close()]);
  });

  it('a lost lease in a release batch frees nothing: the node that took the maildrop over keeps it, and the lost session removes nothing', async () => {
    const a = node();
    const b = node();
    for (const u of ['lostb1', 'lostb2']) for (let i = 0; i < 2; i++) await a.store.deliver(u, msg(i));
    const lost = await a.store.open({ username: 'lostb1' });
    const kept = await a.store.open({ username: 'lostb2' });
    // lostb1's lease runs out and node B takes the maildrop.
    await db.admin.query(`UPDATE poplar_mailboxes SET lease_expires = now() - interval '1 second' WHERE username = 'lostb1'`);
    const onB = await b.store.open({ username: 'lostb1' });
    await expect(lost.commit([0])).rejects.toBeInstanceOf(TemporaryFailure);
    await Promise.all([lost.release(), kept.release()]);
    // B still holds lostb1 (a third node is refused); lostb2 is free.
    await expect(node().store.open({ username: 'lostb1' })).rejects.toBeInstanceOf(InUseError);
    const again = await node().store.open({ username: 'lostb2' });
    await again.release();
    await onB.commit([1]);
    await onB.release();
    const left = await db.admin.query(`SELECT count(*)::int AS n FROM poplar_messages JOIN poplar_mailboxes USING (mailbox_id) WHERE username = 'lostb1'`);
    expect(left.rows[0].n).toBe(1);
    await Promise.all([a.store.close(), b.store.close()]);
  });

  it('a big listing is reused while nothing changed, and read again after a delivery or a QUIT with deletions on another node', async () => {
    const a = node({ listingCache: { minMessages: 3 } });
    const b = node({ listingCache: { minMessages: 3 } });
    for (let i = 0; i < 5; i++) await a.store.deliver('cached', msg(i));
    const uidls = async (n: { store: PostgresStore; seen: Counted }): Promise<{ uidls: string[]; rowsRead: number }> => {
      n.seen.rows.length = 0;
      const md = await n.store.open({ username: 'cached' });
      const out = md.messages.map((m) => m.uidl);
      await md.release();
      return { uidls: out, rowsRead: n.seen.rows[0]! };
    };
    const first = await uidls(a);
    expect(first.uidls).toHaveLength(5);
    expect(first.rowsRead).toBe(6); // the row of the lease, then the five messages
    const again = await uidls(a);
    expect(again).toEqual({ uidls: first.uidls, rowsRead: 1 }); // the listing was not sent
    // A QUIT that only records retrievals (first_retrieved_at) changes no listing.
    const md = await a.store.open({ username: 'cached' });
    await md.commit([], { retrieved: [0, 1] });
    await md.release();
    expect((await uidls(a)).rowsRead).toBe(1);

    // A delivery through another node.
    await b.store.deliver('cached', msg(5));
    const afterDelivery = await uidls(a);
    expect(afterDelivery.uidls).toHaveLength(6);
    expect(afterDelivery.rowsRead).toBe(7);
    expect(afterDelivery.uidls.slice(0, 5)).toEqual(first.uidls);
    expect((await uidls(a)).rowsRead).toBe(1);

    // A QUIT with deletions on the other node.
    const mdB = await b.store.open({ username: 'cached' });
    await mdB.commit([0, 2]);
    await mdB.release();
    const afterQuit = await uidls(a);
    expect(afterQuit.uidls).toEqual([first.uidls[1], first.uidls[3], first.uidls[4], afterDelivery.uidls[5]]);
    expect(afterQuit.rowsRead).toBe(5);

    // Rows changed by someone else's SQL count too.
    await db.admin.query(`UPDATE poplar_messages SET uidl = 'changed-by-hand' WHERE uid = (SELECT min(uid) FROM poplar_messages JOIN poplar_mailboxes USING (mailbox_id) WHERE username = 'cached') AND mailbox_id = (SELECT mailbox_id FROM poplar_mailboxes WHERE username = 'cached')`);
    expect((await uidls(a)).uidls[0]).toBe('changed-by-hand');
    await Promise.all([a.store.close(), b.store.close()]);
  });

  it('small maildrops are not kept, and the kept messages stay under the limit (least recently used go first)', async () => {
    const { store } = node({ listingCache: { minMessages: 3, maxMessages: 8 } });
    for (const u of ['lru1', 'lru2', 'lru3', 'tiny']) for (let i = 0; i < (u === 'tiny' ? 2 : 4); i++) await store.deliver(u, msg(i));
    for (const u of ['tiny', 'lru1', 'lru2', 'lru3']) await (await store.open({ username: u })).release();
    expect(store.listingCache.size).toEqual({ listings: 2, messages: 8 });
    const lru1 = await store.mailbox('lru1');
    expect(store.listingCache.stamp(lru1.id)).toBeUndefined();
    await store.close();
  });

  it('by default even a two-message listing is kept: a client polling a maildrop where nothing changed reads one row', async () => {
    const a = node();
    for (let i = 0; i < 2; i++) await a.store.deliver('polled', msg(i));
    const login = async (): Promise<{ uidls: string[]; rowsRead: number }> => {
      a.seen.rows.length = 0;
      const md = await a.store.open({ username: 'polled' });
      const out = md.messages.map((m) => m.uidl);
      await md.release();
      return { uidls: out, rowsRead: a.seen.rows[0]! };
    };
    const first = await login();
    expect(first.rowsRead).toBe(3);
    expect(await login()).toEqual({ uidls: first.uidls, rowsRead: 1 });
    await a.store.deliver('polled', msg(2));
    const after = await login();
    expect(after.rowsRead).toBe(4);
    expect(after.uidls.slice(0, 2)).toEqual(first.uidls);
    await a.store.close();
  });

  it('an acquisition lost in a crash shows up as a lost lease: the session that held it removes nothing', async () => {
    const a = node();
    const b = node();
    for (let i = 0; i < 3; i++) await a.store.deliver('crash', msg(i));
    const before = (await db.admin.query(`SELECT lease_holder, lease_token, lease_expires FROM poplar_mailboxes WHERE username = 'crash'`)).rows[0];
    const md = await a.store.open({ username: 'crash' });
    // The database comes back without the acquisition (it was committed without waiting for the flush).
    const reset = (): Promise<unknown> =>
      db.admin.query(`UPDATE poplar_mailboxes SET lease_holder = $1, lease_token = $2, lease_expires = $3 WHERE username = 'crash'`, [
        before.lease_holder,
        before.lease_token,
        before.lease_expires,
      ]);
    await reset();
    // The same node takes the maildrop again for a new session: the first session is fenced off.
    const again = await a.store.open({ username: 'crash' });
    await expect(md.commit([0])).rejects.toBeInstanceOf(TemporaryFailure);
    await md.release();
    const count = async (): Promise<number> =>
      Number((await db.admin.query(`SELECT count(*) AS n FROM poplar_messages JOIN poplar_mailboxes USING (mailbox_id) WHERE username = 'crash'`)).rows[0].n);
    expect(await count()).toBe(3);
    // The same again, with another node taking the maildrop.
    await reset();
    const onB = await b.store.open({ username: 'crash' });
    await expect(again.commit([1])).rejects.toBeInstanceOf(TemporaryFailure);
    await again.release();
    expect(await count()).toBe(3);
    await onB.commit([2]);
    await onB.release();
    expect(await count()).toBe(2);
    // Each acquisition gets a token of its own, also when the one before it was lost on this very node.
    const id = (await a.store.mailbox('crash')).id;
    const tokens = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const l = (await a.store.leases.acquire(id))!;
      tokens.add(l.token);
      await reset();
    }
    expect(tokens.size).toBe(5);
    await Promise.all([a.store.close(), b.store.close()]);
  });
});
