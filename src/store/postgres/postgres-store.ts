/**
 * The PostgreSQL mail store (`[store] type = "postgres"`): the composition
 * of the lease (lease.ts), the chunked bodies and their sweep (bodies.ts),
 * the open maildrop (maildrop.ts) and the migration side (migration.ts).
 *
 * open() takes the maildrop lease and reads the whole listing in one
 * statement (one round trip); a maildrop's listing kept on this node is
 * reused without reading it when the mailbox row's listing_stamp shows
 * nothing changed (listing-cache.ts); deliver() writes the body in chunks and the message row in
 * one transaction, durable at COMMIT, after the quota check (with the mailbox
 * row locked) when a quota is given. No pool client is kept between
 * queries, so an idle session costs no database connection.
 */
import type { Readable } from 'node:stream';
import type { Pool, PoolClient } from 'pg';
import type { Principal } from '../../auth/types.js';
import { InUseError, MailError, PermanentFailure, QuotaExceeded, TemporaryFailure } from '../../errors.js';
import type { Logger } from '../../observability/log.js';
import { dovecotUidl } from '../maildir/entry.js';
import type { MigratableStore, MigrationSource, MigrationTarget } from '../migration.js';
import type { DeliverOptions, MailStore, Maildrop, Quota } from '../types.js';
import { shareBody, sweepBodies, writeBody, type WrittenBody } from './bodies.js';
import { createStorePool, PostgresStoreConfigSchema, type PostgresStoreConfigInput } from './config.js';
import { ACQUIRE_SET, ACQUIRE_WHERE, LeaseKeeper, NO_FLUSH_WAIT, type Lease } from './lease.js';
import { ListingCache, type ListingCacheOptions } from './listing-cache.js';
import { PostgresMaildrop } from './maildrop.js';
import { migrateStore } from './migrations.js';
import { openMigrationSource, openMigrationTarget, type KeptMessage } from './migration.js';
import { count, listedMessage, type ListedMessage } from './rows.js';
import { inTransaction } from '../../auth/postgres/tx.js';

export interface PostgresStoreOptions {
  readonly logger: Logger;
  /** Seconds a lease lives without renewal (default 30). */
  readonly leaseTimeout?: number;
  /** close() ends the pool (set when the store created it). Default false. */
  readonly ownsPool?: boolean;
  /** Milliseconds between sweeps of unreferenced bodies; 0: only when sweep() is called. Default 60 000. */
  readonly sweepIntervalMs?: number;
  /** A pool (one connection is enough) for lease renewals only; default the main pool. Ended by close() with ownsPool. */
  readonly leasePool?: Pool;
  /** Which listings of big maildrops this node keeps in memory. */
  readonly listingCache?: ListingCacheOptions;
}

/** A mailbox row as the store caches it: the id and UIDVALIDITY never change. */
interface Mailbox {
  readonly id: number;
  readonly uidValidity: number;
}

/**
 * The lease and the listing in one statement ($1 to $4 as in lease.ts; $5
 * the stamp of the listing this node keeps, or NULL). The first row, uid -1,
 * carries the row's listing_stamp, the new token (NULL: the lease is held
 * by someone else) and whether the row the UPDATE took is the one the
 * statement's snapshot shows (1) or a newer one it waited for (0: the
 * listing of that snapshot may be out of date, so it is not sent). The
 * messages follow, in uid order, only when the lease was taken and the kept
 * listing is not current. The lease commits without waiting for the WAL
 * flush (lease.ts). A named statement: each connection parses and plans it
 * once, not at every login.
 */
const OPEN = `WITH taken AS (
    UPDATE poplar_mailboxes SET ${ACQUIRE_SET} FROM ${NO_FLUSH_WAIT}
     WHERE ${ACQUIRE_WHERE}
    RETURNING lease_token, listing_stamp),
  box AS (
    SELECT b.listing_stamp AS stamp, t.lease_token AS token, t.listing_stamp IS NOT DISTINCT FROM b.listing_stamp AS same
      FROM poplar_mailboxes AS b LEFT JOIN taken AS t ON true WHERE b.mailbox_id = $1)
  SELECT -1::bigint, stamp::text, token, same::int::bigint FROM box
  UNION ALL
  (SELECT uid, uidl, size, body_id FROM poplar_messages
    WHERE mailbox_id = $1 AND (SELECT token IS NOT NULL AND same AND NOT coalesce(stamp = $5::uuid, false) FROM box)
    ORDER BY uid)`;
/** The listing alone, with the stamp of the same snapshot in a first row of uid -1. */
const LISTING = `WITH box AS (SELECT listing_stamp AS stamp FROM poplar_mailboxes WHERE mailbox_id = $1)
  SELECT -1::bigint, stamp::text, NULL::bigint, NULL::bigint FROM box
  UNION ALL
  (SELECT uid, uidl, size, body_id FROM poplar_messages WHERE mailbox_id = $1 ORDER BY uid)`;
const MAILBOX = 'SELECT mailbox_id, uid_validity FROM poplar_mailboxes WHERE username = $1';
const CREATE_MAILBOX = `INSERT INTO poplar_mailboxes (username, uid_validity) VALUES ($1, $2)
  ON CONFLICT (username) DO NOTHING RETURNING mailbox_id, uid_validity`;
// NO KEY UPDATE, the lock the uid counter's UPDATE takes: it does not wait for the KEY SHARE locks that
// other deliveries' body rows hold on the mailbox row (FOR UPDATE would, and deadlock).
const LOCK_MAILBOX = 'SELECT 1 FROM poplar_mailboxes WHERE mailbox_id = $1 FOR NO KEY UPDATE';
const USAGE = 'SELECT count(*) AS messages, coalesce(sum(size), 0) AS bytes FROM poplar_messages WHERE mailbox_id = $1';
const NEXT_UID = 'UPDATE poplar_mailboxes SET next_uid = next_uid + 1 WHERE mailbox_id = $1 RETURNING next_uid - 1 AS uid';
const INSERT_MESSAGE = `INSERT INTO poplar_messages (mailbox_id, uid, uidl, size, body_id, arrived_at, first_retrieved_at)
  VALUES ($1, $2, $3, $4, $5, coalesce($6, now()), $7) ON CONFLICT (mailbox_id, uidl) DO NOTHING`;

/** Mailbox ids remembered per process; cleared when it grows past this. */
const CACHE_LIMIT = 100_000;
/** A generated UIDL taken by a migrated message: the next uid is tried, this many times. */
const UIDL_ATTEMPTS = 100;

export class PostgresStore implements MailStore, MigratableStore {
  readonly pool: Pool;
  readonly #log: Logger;
  readonly #leases: LeaseKeeper;
  readonly #ownsPool: boolean;
  readonly #leasePool: Pool | undefined;
  readonly #mailboxes = new Map<string, Mailbox>();
  readonly #listings: ListingCache;
  #sweepTimer: NodeJS.Timeout | undefined;
  #sweeping: Promise<number> | undefined;

  constructor(pool: Pool, options: PostgresStoreOptions) {
    this.pool = pool;
    this.#log = options.logger;
    this.#ownsPool = options.ownsPool ?? false;
    this.#leasePool = options.leasePool;
    this.#listings = new ListingCache(options.listingCache);
    this.#leases = new LeaseKeeper(pool, Math.round((options.leaseTimeout ?? 30) * 1000), options.logger, options.leasePool);
    const every = options.sweepIntervalMs ?? 60_000;
    if (every > 0) {
      this.#sweepTimer = setInterval(() => void this.sweep().catch((e: unknown) => this.#log.warn({ err: e }, 'postgres store: sweeping unreferenced bodies failed')), every);
      this.#sweepTimer.unref();
    }
  }

  /**
   * Creates the pool from a `[store.postgres]` section, applies pending
   * migrations when `migrate` is true (the default) and returns a store that
   * owns the pool. A database that cannot be reached rejects with the pg error.
   */
  static async open(config: PostgresStoreConfigInput, options: Omit<PostgresStoreOptions, 'ownsPool' | 'leaseTimeout'>): Promise<PostgresStore> {
    const c = PostgresStoreConfigSchema.parse(config);
    const warn = (m: string): void => options.logger.warn({ store: 'postgres' }, m);
    const pool = createStorePool(c, warn);
    // Renewals get a connection of their own: they must not wait behind sessions on a busy pool.
    const leasePool = createStorePool({ ...c, pool_size: 1 }, warn);
    try {
      if (c.migrate) await migrateStore(pool, (m) => options.logger.info({ store: 'postgres' }, m));
      else await pool.query('SELECT 1 FROM poplar_mailboxes LIMIT 0');
    } catch (e) {
      await Promise.allSettled([pool.end(), leasePool.end()]);
      throw e;
    }
    return new PostgresStore(pool, { ...options, leaseTimeout: c.lease_timeout, ownsPool: true, leasePool });
  }

  /** The leases this store holds (tests and metrics). */
  get leases(): LeaseKeeper {
    return this.#leases;
  }

  /** Listings of maildrops kept on this node (tests, metrics). */
  get listingCache(): ListingCache {
    return this.#listings;
  }

  async open(user: Principal, signal?: AbortSignal): Promise<Maildrop> {
    const { lease, listed } = await this.#openListed(user.username);
    try {
      signal?.throwIfAborted();
      return new PostgresMaildrop(this.pool, this.#leases, lease, listed, this.#log);
    } catch (e) {
      await this.#leases.release(lease).catch(() => undefined);
      throw this.#failure(e, 'opening a maildrop failed', user.username);
    }
  }

  /** The lease and the listing (OPEN), or InUseError while another session holds the lease. */
  async #openListed(username: string): Promise<{ lease: Lease; listed: readonly ListedMessage[] }> {
    let lease: Lease | undefined;
    try {
      for (let attempt = 0; ; attempt++) {
        const mailbox = await this.mailbox(username);
        const kept = this.#listings.stamp(mailbox.id) ?? null;
        const t = performance.now();
        const { rows } = await this.pool.query<unknown[]>({ name: 'poplar_store_open', text: OPEN, values: [...this.#leases.acquireArguments(mailbox.id), kept], rowMode: 'array' });
        const head = rows[0];
        if (head === undefined || head[0] !== '-1') {
          // The row went away (removed by an operator): forget it and make it again, once.
          this.#mailboxes.delete(username);
          this.#listings.forget(mailbox.id);
          if (attempt > 0) throw new TemporaryFailure('Cannot open the maildrop, try again later.');
          continue;
        }
        if (head[2] === null) throw new InUseError('Maildrop is locked by another session');
        lease = this.#leases.taken(mailbox.id, String(head[2]), t);
        const stamp = typeof head[1] === 'string' ? head[1] : null;
        if (head[3] !== '1') return { lease, listed: await this.#listing(mailbox.id) };
        if (rows.length === 1 && stamp !== null && stamp === kept) {
          const listed = this.#listings.take(mailbox.id, stamp);
          if (listed !== undefined) return { lease, listed };
          return { lease, listed: await this.#listing(mailbox.id) }; // dropped meanwhile by another login
        }
        const listed = this.#checked(mailbox.id, rows, 1);
        this.#listings.keep(mailbox.id, stamp, listed);
        return { lease, listed };
      }
    } catch (e) {
      if (lease !== undefined) await this.#leases.release(lease).catch(() => undefined);
      throw this.#failure(e, 'opening a maildrop failed', username);
    }
  }

  /** The mailbox (created on first use) and its lease; InUseError while another session holds it. */
  async #lock(username: string): Promise<{ mailbox: Mailbox; lease: Lease }> {
    try {
      for (let attempt = 0; ; attempt++) {
        const mailbox = await this.mailbox(username);
        const lease = await this.#leases.acquire(mailbox.id);
        if (lease !== null) return { mailbox, lease };
        // The row went away (removed by an operator): forget it and make it again, once.
        this.#mailboxes.delete(username);
        if (attempt > 0) throw new TemporaryFailure('Cannot open the maildrop, try again later.');
      }
    } catch (e) {
      throw this.#failure(e, 'opening a maildrop failed', username);
    }
  }

  /** The listing alone (LISTING), kept for the next login. */
  async #listing(mailboxId: number): Promise<ListedMessage[]> {
    const { rows } = await this.pool.query<unknown[]>({ name: 'poplar_store_listing', text: LISTING, values: [mailboxId], rowMode: 'array' });
    const head = rows[0];
    const listed = this.#checked(mailboxId, rows, head?.[0] === '-1' ? 1 : 0);
    this.#listings.keep(mailboxId, head?.[0] === '-1' && typeof head[1] === 'string' ? head[1] : null, listed);
    return listed;
  }

  /** Listing rows from `from` on: uid, UIDL, size and body of every message, in uid order; rows POP3 cannot use are skipped and logged. */
  #checked(mailboxId: number, rows: readonly unknown[][], from: number): ListedMessage[] {
    const out: ListedMessage[] = [];
    let sorted = true;
    for (let i = from; i < rows.length; i++) {
      const row = rows[i]!;
      const m = listedMessage(row);
      if (typeof m === 'string') {
        this.#log.error({ mailbox: mailboxId, uid: String(row[0]).slice(0, 24) }, `postgres store: message row skipped: ${m}`);
        continue;
      }
      if (out.length > 0 && out[out.length - 1]!.uid >= m.uid) sorted = false;
      out.push(m);
    }
    if (!sorted) out.sort((a, b) => a.uid - b.uid);
    return out;
  }

  /** The mailbox row of a user, created when missing (@internal: the migration side uses it). */
  async mailbox(username: string): Promise<Mailbox> {
    const known = this.#mailboxes.get(username);
    if (known !== undefined) return known;
    if (username === '' || username.length > 255 || username.includes('\0')) throw new PermanentFailure('Invalid user name for a maildrop');
    let row = (await this.pool.query<{ mailbox_id: string; uid_validity: string }>(MAILBOX, [username])).rows[0];
    // UIDVALIDITY as Dovecot makes it: the creation time in seconds.
    row ??= (await this.pool.query<{ mailbox_id: string; uid_validity: string }>(CREATE_MAILBOX, [username, Math.floor(Date.now() / 1000)])).rows[0];
    row ??= (await this.pool.query<{ mailbox_id: string; uid_validity: string }>(MAILBOX, [username])).rows[0];
    const id = count(row?.mailbox_id);
    const uidValidity = count(row?.uid_validity);
    if (id === null || uidValidity === null) throw new TemporaryFailure('The maildrop record is damaged');
    if (this.#mailboxes.size >= CACHE_LIMIT) this.#mailboxes.clear();
    const mailbox = { id, uidValidity };
    this.#mailboxes.set(username, mailbox);
    return mailbox;
  }

  async deliver(user: string | Principal, message: Readable | Buffer, signal?: AbortSignal, options?: DeliverOptions): Promise<void> {
    const name = typeof user === 'string' ? user : user.username;
    let mailbox: Mailbox;
    try {
      mailbox = await this.mailbox(name);
    } catch (e) {
      throw this.#failure(e, 'delivery failed', name);
    }
    const source = Buffer.isBuffer(message) ? [message] : (message as AsyncIterable<Buffer>);
    const quota = options?.quota;
    try {
      await inTransaction(this.pool, async (c) => {
        const body = await writeBody(c, mailbox.id, source, signal);
        if (quota !== undefined && (quota.bytes > 0 || quota.messages > 0)) await checkQuota(c, mailbox.id, body.crlfSize, quota);
        await this.insertMessage(c, mailbox, body, null);
      });
    } catch (e) {
      throw this.#failure(e, 'delivery failed', name);
    }
  }

  /**
   * Inside a transaction that wrote `body`: takes the next uid (the mailbox
   * row stays locked until COMMIT), shares an identical body, and inserts the
   * message; with `kept` (a migration), under that UIDL, arrival and first
   * retrieval, else under a new Dovecot-style UIDL. Returns false when `kept`
   * names a UIDL the mailbox already has. (@internal: migration.ts.)
   */
  async insertMessage(c: PoolClient, mailbox: Mailbox, body: WrittenBody, kept: KeptMessage | null): Promise<boolean> {
    let bodyId: number | undefined;
    for (let attempt = 0; attempt < UIDL_ATTEMPTS; attempt++) {
      const uid = count((await c.query<{ uid: string }>(NEXT_UID, [mailbox.id])).rows[0]?.uid);
      if (uid === null) throw new TemporaryFailure('The maildrop record is damaged');
      bodyId ??= await shareBody(c, mailbox.id, body);
      const uidl = kept?.uidl ?? dovecotUidl(uid, mailbox.uidValidity);
      const r = await c.query(INSERT_MESSAGE, [mailbox.id, uid, uidl, body.crlfSize, bodyId, kept?.arrived ?? null, kept?.firstRetrieved ?? null]);
      if ((r.rowCount ?? 0) > 0) return true;
      if (kept !== null) return false;
      // A migrated message holds this generated UIDL: the uid stays used, the next one is tried.
    }
    throw new TemporaryFailure('No free UIDL for a new message');
  }

  /** Removes bodies no message refers to any more (a periodic job; never part of a POP3 UPDATE). */
  sweep(): Promise<number> {
    this.#sweeping ??= sweepBodies(this.pool).finally(() => (this.#sweeping = undefined));
    return this.#sweeping;
  }

  async users(): Promise<string[]> {
    const { rows } = await this.pool.query<{ username: string }>('SELECT username FROM poplar_mailboxes');
    return rows.map((r) => r.username).sort();
  }

  async openSource(user: string, signal?: AbortSignal): Promise<MigrationSource> {
    const { mailbox, lease } = await this.#lock(user);
    return openMigrationSource(this.pool, this.#leases, mailbox.id, lease, signal).catch(async (e: unknown) => {
      await this.#leases.release(lease).catch(() => undefined);
      throw this.#failure(e, 'opening a migration source failed', user);
    });
  }

  async openTarget(user: string, signal?: AbortSignal): Promise<MigrationTarget> {
    signal?.throwIfAborted();
    const { mailbox, lease } = await this.#lock(user);
    return openMigrationTarget(this, this.#leases, mailbox, lease);
  }

  /** A failure as the caller should see it: MailErrors as they are, anything else (the database) logged and SYS/TEMP. */
  #failure(e: unknown, what: string, user: string): Error {
    if (e instanceof MailError) return e;
    if (e instanceof Error && e.name === 'AbortError') return e;
    this.#log.error({ err: e, user }, `postgres store: ${what}`);
    return new TemporaryFailure('The mail store is not available, try again later.', { cause: e });
  }

  async close(): Promise<void> {
    if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
    this.#leases.close();
    await this.#sweeping?.catch(() => undefined);
    if (this.#ownsPool) await Promise.all([this.pool.end(), this.#leasePool?.end()]);
  }
}

/**
 * Inside the delivery's transaction: locks the mailbox row (deliveries to
 * one mailbox with a quota wait for each other until COMMIT, so two cannot
 * both fit into the last free room) and refuses a message that would take
 * the mailbox past its quota (QuotaExceeded; the transaction rolls back).
 */
async function checkQuota(c: PoolClient, mailboxId: number, size: number, quota: Quota): Promise<void> {
  await c.query(LOCK_MAILBOX, [mailboxId]);
  const row = (await c.query<{ messages: string; bytes: string }>(USAGE, [mailboxId])).rows[0];
  const messages = Number(row?.messages ?? 0);
  const bytes = Number(row?.bytes ?? 0);
  if (quota.messages > 0 && messages + 1 > quota.messages) throw new QuotaExceeded('Mailbox is full (message count quota)');
  if (quota.bytes > 0 && bytes + size > quota.bytes) throw new QuotaExceeded('Mailbox is full (size quota)');
}
