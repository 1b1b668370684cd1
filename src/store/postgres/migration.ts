/**
 * The PostgreSQL store as the source or the target of `poplar migrate`: a
 * maildrop locked by its lease like a POP3 session, listed with everything
 * a move keeps (UIDL, size, arrival, first retrieval, uid order), and an
 * add() that is idempotent by UIDL.
 */
import type { Readable } from 'node:stream';
import type { Pool, PoolClient } from 'pg';
import { PermanentFailure, TemporaryFailure } from '../../errors.js';
import type { MigratedMessage, MigrationSource, MigrationTarget } from '../migration.js';
import { openBody, writeBody, type WrittenBody } from './bodies.js';
import type { Lease, LeaseKeeper } from './lease.js';
import { count, validUidl } from './rows.js';
import { inTransaction } from '../../auth/postgres/tx.js';

const FULL_LISTING = `SELECT uid, uidl, size, body_id, arrived_at, first_retrieved_at
  FROM poplar_messages WHERE mailbox_id = $1 ORDER BY uid`;

const HOLDS_LEASE = `SELECT lease_token = $2 AND lease_holder = $3 AND lease_expires > now() AS held
  FROM poplar_mailboxes WHERE mailbox_id = $1 FOR UPDATE`;

/** Thrown inside add()'s transaction to roll it back when the UIDL is already there. */
const ALREADY_PRESENT = new Error('already present');

interface SourceRow {
  uid: string;
  uidl: unknown;
  size: string;
  body_id: string;
  arrived_at: Date;
  first_retrieved_at: Date | null;
}

export async function openMigrationSource(pool: Pool, leases: LeaseKeeper, mailboxId: number, lease: Lease, signal?: AbortSignal): Promise<MigrationSource> {
  signal?.throwIfAborted();
  const { rows } = await pool.query<SourceRow>(FULL_LISTING, [mailboxId]);
  const messages: MigratedMessage[] = [];
  const bodies: { bodyId: number; size: number }[] = [];
  for (const r of rows) {
    const size = count(r.size);
    const bodyId = count(r.body_id);
    // A row POP3 could not serve cannot be moved either; the migration reports what it moved.
    if (!validUidl(r.uidl) || size === null || bodyId === null || !(r.arrived_at instanceof Date)) continue;
    messages.push({ uidl: r.uidl, size, arrived: r.arrived_at, firstRetrieved: r.first_retrieved_at instanceof Date ? r.first_retrieved_at : null });
    bodies.push({ bodyId, size });
  }
  let closed = false;
  return {
    messages,
    read(index: number, readSignal?: AbortSignal): Promise<Readable> {
      const b = bodies[index];
      if (b === undefined) return Promise.reject(new RangeError(`no message ${index}`));
      return openBody(pool, mailboxId, b.bodyId, b.size, readSignal);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await leases.release(lease);
    },
  };
}

/** A message's identity kept through a migration. */
export interface KeptMessage {
  readonly uidl: string;
  readonly arrived: Date;
  readonly firstRetrieved: Date | null;
}

/** What a migration target needs of the store (PostgresStore). */
export interface TargetStore {
  readonly pool: Pool;
  insertMessage(c: PoolClient, mailbox: { id: number; uidValidity: number }, body: WrittenBody, kept: KeptMessage | null): Promise<boolean>;
}

export function openMigrationTarget(store: TargetStore, leases: LeaseKeeper, mailbox: { id: number; uidValidity: number }, lease: Lease): MigrationTarget {
  let closed = false;
  return {
    async uidls(): Promise<ReadonlySet<string>> {
      const { rows } = await store.pool.query<{ uidl: string }>('SELECT uidl FROM poplar_messages WHERE mailbox_id = $1', [mailbox.id]);
      return new Set(rows.map((r) => r.uidl));
    },
    async add(message: MigratedMessage, body: Buffer): Promise<'added' | 'present'> {
      if (!validUidl(message.uidl)) throw new PermanentFailure(`UIDL ${JSON.stringify(String(message.uidl).slice(0, 80))} is not 1 to 70 printable characters`);
      if (lease.lost) throw new TemporaryFailure('The maildrop lock was lost');
      const present = await store.pool.query('SELECT 1 FROM poplar_messages WHERE mailbox_id = $1 AND uidl = $2', [mailbox.id, message.uidl]);
      if ((present.rowCount ?? 0) > 0) return 'present';
      try {
        return await inTransaction(store.pool, async (c) => {
          // The body first; the mailbox row is locked only from the lease check to COMMIT.
          const written = await writeBody(c, mailbox.id, [body]);
          const held = await c.query<{ held: boolean | null }>(HOLDS_LEASE, [mailbox.id, lease.token, leases.holder]);
          if (held.rows[0]?.held !== true) {
            lease.markLost();
            throw new TemporaryFailure('The maildrop lock was lost');
          }
          const added = await store.insertMessage(c, mailbox, written, { uidl: message.uidl, arrived: message.arrived, firstRetrieved: message.firstRetrieved });
          if (!added) throw ALREADY_PRESENT; // rolls the body back
          return 'added' as const;
        });
      } catch (e) {
        if (e === ALREADY_PRESENT) return 'present';
        throw e;
      }
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      await leases.release(lease);
    },
  };
}
