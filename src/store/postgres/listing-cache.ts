/**
 * Listings of maildrops kept in memory on this node, each under the
 * mailbox row's listing_stamp it was read with. The database gives the row
 * a new random stamp in the same transaction as any change to the listed
 * columns (migration 2's triggers), so a login that finds the same stamp
 * reuses the listing without reading it again; the rows were checked when
 * they were read. Least recently used listings go first once the messages
 * of all kept listings pass a total.
 */
import type { ListedMessage } from './rows.js';

export interface ListingCacheOptions {
  /**
   * Listings with fewer messages are not kept. Default 1: every listing, since
   * a client polling a maildrop where nothing changed is the common login; on
   * a 20-message maildrop, not reading the rows took the store's CPU per login
   * (lease, listing, release) from about 0.05 to 0.036 ms.
   */
  readonly minMessages?: number;
  /** Messages of all kept listings together, at most. Default 400 000 (some 40 MB). */
  readonly maxMessages?: number;
}

interface Kept {
  readonly stamp: string;
  readonly listed: readonly ListedMessage[];
}

export class ListingCache {
  readonly minMessages: number;
  readonly maxMessages: number;
  /** Map order is use order: the first entry is the least recently used. */
  readonly #kept = new Map<number, Kept>();
  #messages = 0;

  constructor(options: ListingCacheOptions = {}) {
    this.minMessages = Math.max(1, options.minMessages ?? 1);
    this.maxMessages = Math.max(0, options.maxMessages ?? 400_000);
  }

  /** The stamp of the listing kept for a mailbox, if any (the query sends it to skip the listing). */
  stamp(mailboxId: number): string | undefined {
    return this.#kept.get(mailboxId)?.stamp;
  }

  /** The listing kept under exactly this stamp (and marks it used), else undefined. */
  take(mailboxId: number, stamp: string): readonly ListedMessage[] | undefined {
    const k = this.#kept.get(mailboxId);
    if (k === undefined || k.stamp !== stamp) return undefined;
    this.#kept.delete(mailboxId);
    this.#kept.set(mailboxId, k);
    return k.listed;
  }

  /** Keeps a listing read under `stamp` (null: a row without a stamp, never kept) when it is big enough. */
  keep(mailboxId: number, stamp: string | null, listed: readonly ListedMessage[]): void {
    this.forget(mailboxId);
    if (stamp === null || listed.length < this.minMessages || listed.length > this.maxMessages) return;
    this.#kept.set(mailboxId, { stamp, listed });
    this.#messages += listed.length;
    for (const [id, k] of this.#kept) {
      if (this.#messages <= this.maxMessages) break;
      this.#kept.delete(id);
      this.#messages -= k.listed.length;
    }
  }

  forget(mailboxId: number): void {
    const k = this.#kept.get(mailboxId);
    if (k === undefined) return;
    this.#kept.delete(mailboxId);
    this.#messages -= k.listed.length;
  }

  /** Listings and messages kept now (tests, metrics). */
  get size(): { listings: number; messages: number } {
    return { listings: this.#kept.size, messages: this.#messages };
  }
}
