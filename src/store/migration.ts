/**
 * What `poplar migrate` needs from a store, beyond serving POP3: the users
 * it holds, a maildrop's messages with everything a move must keep (UIDL,
 * order, arrival, first retrieval), and an idempotent way to add one message
 * under a given UIDL. Both stores implement it (Maildir and PostgreSQL), so a
 * migration in either direction, or from a live POP3 server, is one loop.
 */
import type { Readable } from 'node:stream';

/** One message as a migration moves it. */
export interface MigratedMessage {
  /** RFC 1939 unique-id, kept as it is: 1 to 70 characters 0x21..0x7E. */
  readonly uidl: string;
  /** Size in CRLF octets, as LIST reports it. */
  readonly size: number;
  /** When the message arrived in the maildrop. */
  readonly arrived: Date;
  /** When it was first retrieved (RETR), or null when never: Maildir's S flag, PostgreSQL's first_retrieved_at. */
  readonly firstRetrieved: Date | null;
}

/** A maildrop opened for reading by a migration: locked like a POP3 session, in POP3 order. */
export interface MigrationSource {
  readonly messages: readonly MigratedMessage[];
  /** The stored bytes of message `index` (0-based), line ends as stored. */
  read(index: number, signal?: AbortSignal): Promise<Readable>;
  close(): Promise<void>;
}

/** A maildrop opened for writing by a migration. */
export interface MigrationTarget {
  /** The UIDLs the maildrop already holds (a rerun skips them). */
  uidls(): Promise<ReadonlySet<string>>;
  /**
   * Adds one message after all messages already there, durably, keeping its
   * UIDL, arrival and first retrieval. Adding a UIDL that is already present
   * does nothing and returns 'present', so a migration killed at any point
   * and run again ends with every message exactly once.
   */
  add(message: MigratedMessage, body: Buffer): Promise<'added' | 'present'>;
  close(): Promise<void>;
}

export interface MigratableStore {
  /** Every user with a maildrop in this store, sorted. */
  users(): Promise<string[]>;
  openSource(user: string, signal?: AbortSignal): Promise<MigrationSource>;
  openTarget(user: string, signal?: AbortSignal): Promise<MigrationTarget>;
}
