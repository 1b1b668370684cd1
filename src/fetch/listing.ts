/**
 * Step 2 of a fetch: UIDL and LIST, both bounded (max_list_lines,
 * max_list_octets, message_timeout), and the listings a safe fetch can use.
 */
import { Pop3LimitError, Pop3ServerError } from '../client/errors.js';
import type { Pop3Client } from '../client/pop3-client.js';
import { isValidUid, type UidlEntry } from '../client/reply.js';
import { printable } from '../client/errors.js';
import type { ResolvedAccount } from './config.js';

/** The server refuses what a safe fetch needs (UIDL). */
export class FetchProtocolError extends Error {
  override name = 'FetchProtocolError';
}

export interface Listing {
  /** Every UIDL line the server sent (its length is the message count on the server). */
  readonly listed: readonly UidlEntry[];
  /** The messages that may be fetched or deleted: valid, unique UIDL and a LIST size (see `usableListings`). */
  readonly usable: readonly UidlEntry[];
  /** LIST: message number → announced size. */
  readonly sizes: ReadonlyMap<number, number>;
  /** The valid UIDLs the server still lists (also those left out of `usable` for a fault of this listing). */
  readonly onServer: ReadonlySet<string>;
}

/** UIDL then LIST. `skip` hears of each message left on the server, and why. */
export async function listMessages(client: Pop3Client, acct: ResolvedAccount, skip: (number: number, why: string) => void): Promise<Listing> {
  const listing = { maxLines: acct.max_list_lines, maxOctets: acct.max_list_octets, deadlineMs: acct.message_timeout * 1000 };
  let listed;
  try {
    listed = await client.uidl(listing);
  } catch (e) {
    if (e instanceof Pop3ServerError) throw new FetchProtocolError(`${acct.host} does not support UIDL, which a safe fetch needs (${printable(e.text)})`);
    throw listingLimit(e);
  }
  const sizes = new Map((await client.list(listing).catch((e: unknown) => Promise.reject(listingLimit(e)))).map((l) => [l.number, l.octets]));
  const usable = usableListings(listed, sizes, skip);
  return { listed, usable, sizes, onServer: new Set(listed.filter((u) => isValidUid(u.uid)).map((u) => u.uid)) };
}

/** What message `n` may carry: its announced size plus the margin (docs/fetch.md, "Limits"). */
export function allowance(acct: Pick<ResolvedAccount, 'size_margin'>, sizes: ReadonlyMap<number, number>): (n: number) => number {
  return (n) => {
    const size = sizes.get(n) ?? 0;
    return size + Math.max(acct.size_margin, Math.ceil(size / 10));
  };
}

/**
 * The listings a safe fetch can use. A message is left on the server, with
 * a warning, when its UIDL is not one RFC 1939 allows (it could not be told
 * apart from another, or recorded), when two messages share a UIDL or a
 * number appears twice (delivering either could repeat the other), or when
 * LIST gives no size for it (its size bounds the download).
 */
export function usableListings(listed: readonly UidlEntry[], sizes: ReadonlyMap<number, number>, skip: (number: number, why: string) => void): UidlEntry[] {
  const uids = new Map<string, number>();
  const numbers = new Map<number, number>();
  for (const u of listed) {
    uids.set(u.uid, (uids.get(u.uid) ?? 0) + 1);
    numbers.set(u.number, (numbers.get(u.number) ?? 0) + 1);
  }
  return listed.filter((u) => {
    const why = !isValidUid(u.uid)
      ? `its UIDL ${JSON.stringify(printable(u.uid))} is not valid (RFC 1939: 1 to 70 characters from 0x21 to 0x7E)`
      : uids.get(u.uid)! > 1
        ? `its UIDL ${JSON.stringify(u.uid)} is listed for more than one message`
        : numbers.get(u.number)! > 1
          ? 'UIDL lists its number more than once'
          : !sizes.has(u.number)
            ? 'LIST gives no size for it'
            : undefined;
    if (why !== undefined) skip(u.number, why);
    return why === undefined;
  });
}

/** A listing cut off by its bound says which settings raise it. */
function listingLimit(e: unknown): unknown {
  return e instanceof Pop3LimitError ? new Pop3LimitError(`${e.message} (the account's max_list_lines and max_list_octets)`, { cause: e }) : e;
}
