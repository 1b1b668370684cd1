/**
 * An open PostgreSQL maildrop: the listing taken at login, bodies read as
 * streams, and UPDATE (commit) in one transaction that first checks, under
 * the mailbox row lock, that this session still holds its lease with the
 * same token. A session that lost its lease removes nothing.
 */
import type { Readable } from 'node:stream';
import type { Pool } from 'pg';
import { TemporaryFailure } from '../../errors.js';
import type { Logger } from '../../observability/log.js';
import type { CommitOptions, Maildrop, MessageInfo } from '../types.js';
import { openBody } from './bodies.js';
import type { Lease, LeaseKeeper } from './lease.js';
import type { ListedMessage } from './rows.js';
import { inTransaction } from '../../auth/postgres/tx.js';

const HOLDS_LEASE = `SELECT lease_token = $2 AND lease_holder = $3 AND lease_expires > now() AS held
  FROM poplar_mailboxes WHERE mailbox_id = $1 FOR UPDATE`;

export class PostgresMaildrop implements Maildrop {
  readonly messages: readonly MessageInfo[];
  readonly #pool: Pool;
  readonly #leases: LeaseKeeper;
  readonly #lease: Lease;
  readonly #listed: readonly ListedMessage[];
  readonly #log: Logger;
  #released = false;

  constructor(pool: Pool, leases: LeaseKeeper, lease: Lease, listed: readonly ListedMessage[], log: Logger) {
    this.#pool = pool;
    this.#leases = leases;
    this.#lease = lease;
    this.#listed = listed;
    this.#log = log;
    this.messages = listed; // a ListedMessage is a MessageInfo (uidl, size)
  }

  get mailboxId(): number {
    return this.#lease.mailboxId;
  }

  async read(index: number, signal?: AbortSignal, options: { readonly transient?: boolean } = {}): Promise<Readable> {
    const m = this.#listed[index];
    if (m === undefined) throw new RangeError(`no message ${index}`);
    try {
      return await openBody(this.#pool, this.#lease.mailboxId, m.bodyId, m.size, signal, options.transient === true);
    } catch (e) {
      if (e instanceof Error && 'kind' in e) throw e;
      throw new TemporaryFailure('The maildrop cannot be read, try again later.', { cause: e });
    }
  }

  async commit(deleted: readonly number[], options: CommitOptions = {}): Promise<void> {
    const n = this.#listed.length;
    const uids = (indexes: readonly number[] | undefined): number[] => (indexes ?? []).filter((i) => Number.isInteger(i) && i >= 0 && i < n).map((i) => this.#listed[i]!.uid);
    const gone = uids(deleted);
    const goneSet = new Set(gone);
    const seen = uids(options.retrieved).filter((u) => !goneSet.has(u));
    const expire = options.expireDays;
    if (gone.length === 0 && seen.length === 0 && expire === undefined) return;
    if (this.#lease.lost) throw new TemporaryFailure('The maildrop lock was lost; nothing was removed');
    const lastUid = n > 0 ? this.#listed[n - 1]!.uid : 0;
    try {
      await inTransaction(this.#pool, async (c) => {
        const held = await c.query<{ held: boolean | null }>(HOLDS_LEASE, [this.#lease.mailboxId, this.#lease.token, this.#leases.holder]);
        if (held.rows[0]?.held !== true) {
          this.#lease.markLost();
          throw new TemporaryFailure('The maildrop lock was lost; nothing was removed');
        }
        let removed = 0;
        if (gone.length > 0) {
          const r = await c.query('DELETE FROM poplar_messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])', [this.#lease.mailboxId, gone]);
          removed += r.rowCount ?? 0; // rows already gone are not an error
        }
        if (seen.length > 0) {
          await c.query('UPDATE poplar_messages SET first_retrieved_at = now() WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) AND first_retrieved_at IS NULL', [
            this.#lease.mailboxId,
            seen,
          ]);
        }
        if (expire !== undefined && lastUid > 0) {
          // RFC 2449 EXPIRE: messages of this session's listing first retrieved more than `expire` days ago.
          const r = await c.query(
            `DELETE FROM poplar_messages WHERE mailbox_id = $1 AND uid <= $2 AND NOT (uid = ANY($3::bigint[]))
               AND first_retrieved_at < now() - $4 * interval '1 day'`,
            [this.#lease.mailboxId, lastUid, seen, expire],
          );
          removed += r.rowCount ?? 0;
        }
        if (removed > 0) await c.query('UPDATE poplar_mailboxes SET needs_sweep = true WHERE mailbox_id = $1', [this.#lease.mailboxId]);
      });
    } catch (e) {
      if (e instanceof TemporaryFailure) throw e;
      this.#log.error({ err: e, mailbox: this.#lease.mailboxId }, 'postgres store: UPDATE failed');
      throw new TemporaryFailure('Removing deleted messages failed, try again later', { cause: e });
    }
  }

  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await this.#leases.release(this.#lease);
  }
}
