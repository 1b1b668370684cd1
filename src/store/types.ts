import type { FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Principal } from '../auth/types.js';

/** One message of a maildrop snapshot; `size` is in CRLF octets as RETR sends it (before dot-stuffing). */
export interface MessageInfo {
  readonly uidl: string;
  readonly size: number;
}

export interface CommitOptions {
  readonly retrieved?: readonly number[];
  readonly expireDays?: number;
}

/** An opened, exclusively locked maildrop (RFC 1939 §8: the lock lives from PASS to the end of UPDATE). */
export interface Maildrop {
  /** Snapshot at open; index i is message number i + 1 for the whole session. */
  readonly messages: readonly MessageInfo[];
  /**
   * Raw stored bytes of message `index` (0-based). The protocol codec converts line ends and stuffs dots.
   * `transient`: the caller is done with each chunk before it asks for the next (RETR and TOP encode
   * it at once), so a store may hand over the same memory again for a later chunk.
   */
  read(index: number, signal?: AbortSignal, options?: { readonly transient?: boolean }): Promise<Readable>;
  /**
   * The same bytes as an open file, for stores that keep each message in a
   * file of its own (Maildir). RETR then reads and encodes it without a
   * stream. The caller closes the handle.
   */
  openFile?(index: number): Promise<FileHandle>;
  /**
   * UPDATE state: remove exactly these (0-based) messages, or throw.
   * `retrieved` messages (RETR in this session, not deleted) are marked as
   * seen; with `expireDays`, messages seen more than that many days ago are
   * removed as well (RFC 2449 EXPIRE). Neither changes the outcome for `deleted`.
   */
  commit(deleted: readonly number[], options?: CommitOptions): Promise<void>;
  /** Release the lock. Always called, exactly once, whatever happened before. */
  release(): Promise<void>;
}

/** Limits of one maildrop; 0 = no limit. */
export interface Quota {
  /** Octets, counted as LIST counts them (CRLF line ends). */
  readonly bytes: number;
  readonly messages: number;
}

export interface DeliverOptions {
  /**
   * Refuse the message with QuotaExceeded (src/errors.ts) when the maildrop
   * would hold more than this with it; checked by the store, for PostgreSQL
   * inside the delivery's transaction.
   */
  readonly quota?: Quota | undefined;
}

/** One maildrop of a delivery to several (deliverShared). */
export interface DeliveryTarget {
  readonly user: Principal;
  readonly quota?: Quota | undefined;
}

export interface MailStore {
  /** Takes the exclusive lock or throws InUseError; TemporaryFailure when the maildrop cannot be opened now (src/errors.ts). */
  open(user: Principal, signal?: AbortSignal): Promise<Maildrop>;
  /**
   * Atomic: the message is either fully delivered and durable, or not visible at all.
   * `user`: a name, or the principal from the user database (its `maildir`, when it has one, is used).
   */
  deliver(user: string | Principal, message: Readable | Buffer, signal?: AbortSignal, options?: DeliverOptions): Promise<void>;
  /**
   * One message into several maildrops, written once where the store can
   * share it (Maildir: hard links). One outcome per target, in order:
   * undefined when delivered (durable), else the error for that target only.
   * Stores without it get one deliver() per target.
   */
  deliverShared?(targets: readonly DeliveryTarget[], message: Buffer, signal?: AbortSignal): Promise<(Error | undefined)[]>;
  close?(): Promise<void>;
}
