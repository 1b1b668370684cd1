/**
 * The maildrop lease: the lock that keeps one POP3 session per maildrop
 * across every node sharing the database (RFC 1939 §8).
 *
 * A lease is the mailbox row's lease_holder, lease_token and lease_expires.
 * It is taken when free or expired (by the database clock, so nodes' clocks
 * do not matter), and every acquisition adds one to lease_token: the fencing
 * token that an UPDATE checks, under the row lock, before it removes
 * anything. A node renews all its leases in one statement every third of the
 * lease time; a lease the renewal does not find any more (expired and taken
 * by another node, or released) is marked lost. A node that dies stops
 * renewing, and its leases run out after lease_timeout.
 *
 * No pool client is held between queries: the renewal timer takes one for
 * its statement only, from a pool of its own (one connection), so that
 * renewals never queue behind sessions' queries on a busy pool and a lease
 * is not lost because the node is merely loaded.
 *
 * Acquisition, renewal and release commit without waiting for the WAL flush
 * (synchronous_commit off for those statements only). That is safe because
 * every acquisition's token is unique: it grows by one plus a random 32-bit
 * step, so an acquisition lost in a database crash is never issued again to
 * anyone, this node included. The session that held it finds its token gone
 * (a lost lease: its UPDATE removes nothing), never a second holder with the
 * same token. Every transaction that removes or adds mail keeps the site's
 * synchronous_commit, and its COMMIT makes the acquisition before it durable
 * too (WAL is flushed in order).
 */
import { hostname } from 'node:os';
import { randomBytes, randomInt } from 'node:crypto';
import type { Pool } from 'pg';
import { InUseError } from '../../errors.js';
import type { Logger } from '../../observability/log.js';
import { inTransaction } from '../../auth/postgres/tx.js';

/** One held lease. */
export class Lease {
  readonly mailboxId: number;
  readonly token: string;
  #lost = false;
  /** performance.now() at the start of the last renewal the database confirmed. */
  confirmedAt: number;

  constructor(mailboxId: number, token: string, at: number) {
    this.mailboxId = mailboxId;
    this.token = token;
    this.confirmedAt = at;
  }
  get lost(): boolean {
    return this.#lost;
  }
  markLost(): void {
    this.#lost = true;
  }
}

/** In a statement's FROM: that statement's transaction commits without waiting for the WAL flush. */
export const NO_FLUSH_WAIT = `(SELECT set_config('synchronous_commit', 'off', true)) AS no_flush_wait`;

/** The SET and WHERE of an acquisition ($1 mailbox, $2 holder, $3 lifetime ms, $4 random step). */
export const ACQUIRE_SET = `lease_holder = $2, lease_token = lease_token + 1 + $4::bigint, lease_expires = now() + $3 * interval '1 millisecond'`;
export const ACQUIRE_WHERE = `mailbox_id = $1 AND (lease_expires IS NULL OR lease_expires <= now())`;

const ACQUIRE = `UPDATE poplar_mailboxes SET ${ACQUIRE_SET} FROM ${NO_FLUSH_WAIT}
  WHERE ${ACQUIRE_WHERE}
  RETURNING lease_token`;

/** The random part of a new token: 0 to 2^32 - 1 (a bigint token lasts some 2^31 acquisitions of one mailbox). */
export function tokenStep(): number {
  return randomInt(0, 2 ** 32);
}

/**
 * Renewal skips rows locked at the moment (a delivery, an UPDATE or a sweep
 * in that mailbox holds the row until its COMMIT), so one busy mailbox never
 * holds up the renewal of all the others; STILL_HELD then tells a lease that
 * was merely skipped from one that is gone.
 */
const RENEW = `WITH mine AS (
    SELECT m.mailbox_id FROM poplar_mailboxes AS m
      JOIN unnest($1::bigint[], $2::bigint[]) AS l(mailbox_id, token) ON m.mailbox_id = l.mailbox_id
     WHERE m.lease_token = l.token AND m.lease_holder = $3 AND m.lease_expires > now()
       FOR UPDATE OF m SKIP LOCKED)
  UPDATE poplar_mailboxes AS m SET lease_expires = now() + $4 * interval '1 millisecond'
    FROM mine, ${NO_FLUSH_WAIT} WHERE m.mailbox_id = mine.mailbox_id
  RETURNING m.mailbox_id`;

/**
 * The renewal of leases whose rows were locked at every renewal for half
 * the lease time (a stream of deliveries or a migration into the mailbox
 * holds its row most of the time): this one waits for the row lock, within
 * the time the lease has left.
 */
const RENEW_WAITING = `UPDATE poplar_mailboxes AS m SET lease_expires = now() + $4 * interval '1 millisecond'
    FROM unnest($1::bigint[], $2::bigint[]) AS l(mailbox_id, token), ${NO_FLUSH_WAIT}
  WHERE m.mailbox_id = l.mailbox_id AND m.lease_token = l.token AND m.lease_holder = $3 AND m.lease_expires > now()
  RETURNING m.mailbox_id`;

const STILL_HELD = `SELECT m.mailbox_id FROM poplar_mailboxes AS m
    JOIN unnest($1::bigint[], $2::bigint[]) AS l(mailbox_id, token) ON m.mailbox_id = l.mailbox_id
   WHERE m.lease_token = l.token AND m.lease_holder = $3 AND m.lease_expires > now()`;

/**
 * Releases every lease of a batch ($1 mailboxes, $2 their tokens): a row
 * changes only while it still carries that lease. Rows are matched, never
 * waited for, unless this holder's lease is on them, and no other statement
 * locks several of this holder's rows at once (renewal skips locked rows),
 * so concurrent batches cannot deadlock.
 */
const RELEASE = `UPDATE poplar_mailboxes AS m SET lease_holder = NULL, lease_expires = NULL
    FROM unnest($1::bigint[], $2::bigint[]) AS l(mailbox_id, token), ${NO_FLUSH_WAIT}
  WHERE m.mailbox_id = l.mailbox_id AND m.lease_token = l.token AND m.lease_holder = $3`;

/** At most this many leases per renewal or release statement. */
const RENEW_BATCH = 5000;

/** A release waiting for its statement. */
interface PendingRelease {
  readonly lease: Lease;
  readonly done: (e?: unknown) => void;
}

export class LeaseKeeper {
  /** Identifies this store instance in lease_holder (host, process, random): for operators, and checked on renewal. */
  readonly holder = `${hostname().slice(0, 64)}/${process.pid}/${randomBytes(6).toString('hex')}`;
  readonly timeoutMs: number;
  readonly #pool: Pool;
  readonly #renewPool: Pool;
  readonly #log: Logger;
  readonly #held = new Map<number, Lease>();
  #timer: NodeJS.Timeout | undefined;
  #renewing: Promise<void> | undefined;
  /** Releases that came while a release statement was out: the next statement carries them all. */
  #pending: PendingRelease[] = [];
  #releasing = false;
  #closed = false;

  /** `renewPool`: where renewals run (a pool of their own; default `pool`). */
  constructor(pool: Pool, timeoutMs: number, log: Logger, renewPool: Pool = pool) {
    this.#pool = pool;
    this.#renewPool = renewPool;
    this.timeoutMs = timeoutMs;
    this.#log = log;
  }

  /** Leases this instance holds now. */
  get size(): number {
    return this.#held.size;
  }

  /**
   * Takes the lease of a mailbox, or throws InUseError while someone holds
   * it; null when the mailbox row does not exist.
   */
  async acquire(mailboxId: number): Promise<Lease | null> {
    if (this.#closed) throw new Error('store is closed');
    const t = performance.now();
    const r = await this.#pool.query<{ lease_token: string }>(ACQUIRE, [mailboxId, this.holder, this.timeoutMs, tokenStep()]);
    const row = r.rows[0];
    if (row === undefined) {
      const exists = await this.#pool.query('SELECT 1 FROM poplar_mailboxes WHERE mailbox_id = $1', [mailboxId]);
      if (exists.rowCount === 0) return null;
      throw new InUseError('Maildrop is locked by another session');
    }
    return this.taken(mailboxId, String(row.lease_token), t);
  }

  /** The arguments of an acquisition statement ($1 to $4: ACQUIRE_SET, ACQUIRE_WHERE) for a caller that runs its own. */
  acquireArguments(mailboxId: number): [number, string, number, number] {
    if (this.#closed) throw new Error('store is closed');
    return [mailboxId, this.holder, this.timeoutMs, tokenStep()];
  }

  /**
   * Records a lease a caller's statement took (`at`: performance.now() before
   * it was sent). A lease this instance still held on that mailbox cannot be
   * valid any more (the database gave the mailbox out again): it is marked lost.
   */
  taken(mailboxId: number, token: string, at: number): Lease {
    const before = this.#held.get(mailboxId);
    if (before !== undefined) this.#lose(before, 'the mailbox was given out again');
    const lease = new Lease(mailboxId, token, at);
    this.#held.set(mailboxId, lease);
    this.#schedule();
    return lease;
  }

  /**
   * Gives the lease up (also when it was lost: then nothing changes in the
   * database) and resolves once the database has it free. Releases are
   * grouped: the first goes out at once, and those that come while a release
   * statement is out wait for it and then go together in one statement, so a
   * busy node spends one statement on many QUITs and an idle one waits for
   * nothing.
   */
  release(lease: Lease): Promise<void> {
    if (this.#held.get(lease.mailboxId) !== lease) return Promise.resolve(); // released before
    this.#held.delete(lease.mailboxId);
    if (this.#held.size === 0) this.#unschedule();
    lease.markLost();
    // Also after a loss: the statement changes nothing unless the row still carries this lease.
    return new Promise<void>((resolve, reject) => {
      this.#pending.push({ lease, done: (e?: unknown) => (e === undefined ? resolve() : reject(e)) });
      if (!this.#releasing) void this.#releaseBatches();
    });
  }

  async #releaseBatches(): Promise<void> {
    this.#releasing = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending.splice(0, RENEW_BATCH);
        try {
          await this.#pool.query({ name: 'poplar_lease_release', text: RELEASE, values: [batch.map((p) => p.lease.mailboxId), batch.map((p) => p.lease.token), this.holder] });
          for (const p of batch) p.done();
        } catch (e) {
          for (const p of batch) p.done(e ?? new Error('releasing maildrop leases failed'));
        }
      }
    } finally {
      this.#releasing = false;
    }
  }

  /** Renews every held lease now (the timer calls this; tests may too). */
  renewAll(): Promise<void> {
    this.#renewing ??= this.#renew().finally(() => (this.#renewing = undefined));
    return this.#renewing;
  }

  async #renew(): Promise<void> {
    const leases = [...this.#held.values()].filter((l) => !l.lost);
    for (let i = 0; i < leases.length; i += RENEW_BATCH) {
      const batch = leases.slice(i, i + RENEW_BATCH);
      const t = performance.now();
      try {
        const r = await this.#renewPool.query<{ mailbox_id: string }>(RENEW, [batch.map((l) => l.mailboxId), batch.map((l) => l.token), this.holder, this.timeoutMs]);
        const renewed = new Set(r.rows.map((row) => Number(row.mailbox_id)));
        for (const l of batch) if (renewed.has(l.mailboxId)) l.confirmedAt = t;
        const missed = batch.filter((l) => !renewed.has(l.mailboxId));
        if (missed.length === 0) continue;
        const h = await this.#renewPool.query<{ mailbox_id: string }>(STILL_HELD, [missed.map((l) => l.mailboxId), missed.map((l) => l.token), this.holder]);
        const held = new Set(h.rows.map((row) => Number(row.mailbox_id)));
        const due: Lease[] = [];
        for (const l of missed) {
          if (held.has(l.mailboxId)) {
            // Busy row: renewed next time, or now, waiting for the lock, once half the lease time went by.
            if (performance.now() - l.confirmedAt >= this.timeoutMs / 2) due.push(l);
            continue;
          }
          if (this.#held.get(l.mailboxId) === l) this.#lose(l, 'not renewed: expired or taken over');
        }
        if (due.length > 0) await this.#renewWaiting(due);
      } catch (e) {
        // The database did not answer: a lease not confirmed within its lifetime is given up.
        this.#log.warn({ err: e, leases: batch.length }, 'postgres store: renewing maildrop leases failed');
        for (const l of batch) if (performance.now() - l.confirmedAt >= this.timeoutMs) this.#lose(l, 'not renewed in time');
      }
    }
  }

  async #renewWaiting(leases: Lease[]): Promise<void> {
    const t = performance.now();
    const left = Math.min(...leases.map((l) => this.timeoutMs - (t - l.confirmedAt)));
    const waitMs = Math.max(100, Math.floor(left - 100));
    const r = await inTransaction(this.#renewPool, async (c) => {
      await c.query(`SET LOCAL lock_timeout = ${waitMs}`);
      return c.query<{ mailbox_id: string }>(RENEW_WAITING, [leases.map((l) => l.mailboxId), leases.map((l) => l.token), this.holder, this.timeoutMs]);
    });
    const renewed = new Set(r.rows.map((row) => Number(row.mailbox_id)));
    for (const l of leases) {
      if (renewed.has(l.mailboxId)) l.confirmedAt = t;
      else if (this.#held.get(l.mailboxId) === l) this.#lose(l, 'not renewed: expired or taken over');
    }
  }

  #lose(lease: Lease, why: string): void {
    if (lease.lost) return;
    lease.markLost();
    this.#log.warn({ mailbox: lease.mailboxId }, `postgres store: maildrop lease lost (${why})`);
  }

  #schedule(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => void this.renewAll(), Math.max(100, Math.floor(this.timeoutMs / 3)));
    this.#timer.unref();
  }

  #unschedule(): void {
    if (this.#timer === undefined) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** Stops renewing (the leases still held run out in the database). */
  close(): void {
    this.#closed = true;
    this.#unschedule();
  }
}
