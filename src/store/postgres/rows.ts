/**
 * Checks on what comes back from the database. Rows may have been written by
 * another program (an import script, a hand-made fix): a UIDL POP3 cannot
 * send, a size that is not a count of octets, an id out of range is refused
 * here, so that one such row cannot break a session.
 */
import { UIDL } from '../maildir/entry.js';

/** A bigint column (pg returns it as a string) as a safe non-negative integer, or null. */
export function count(v: unknown): number | null {
  if (typeof v === 'string') {
    const n = decimal(v);
    return n >= 0 ? n : null;
  }
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null;
}

/**
 * 1 to 16 ASCII digits as a number when it is a safe integer, else -1. A
 * loop over the characters: a listing checks three of these per message,
 * and this costs a fraction of a regular expression and Number().
 */
function decimal(v: string): number {
  const len = v.length;
  if (len === 0 || len > 16) return -1;
  let n = 0;
  for (let i = 0; i < len; i++) {
    const d = v.charCodeAt(i) - 48;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n <= Number.MAX_SAFE_INTEGER ? n : -1;
}

/** RFC 1939 §7: 1 to 70 characters 0x21..0x7E. */
export function validUidl(v: unknown): v is string {
  return typeof v === 'string' && UIDL.test(v);
}

/** One message of a listing as the store uses it. */
export interface ListedMessage {
  readonly uid: number;
  readonly uidl: string;
  readonly size: number;
  readonly bodyId: number;
}

/** A listing row [uid, uidl, size, body_id] checked, or the reason it is refused. */
export function listedMessage(row: readonly unknown[]): ListedMessage | string {
  const uid = count(row[0]);
  if (uid === null || uid === 0) return 'uid out of range';
  if (!validUidl(row[1])) return 'UIDL is not 1 to 70 printable characters';
  const size = count(row[2]);
  if (size === null) return 'size is not a non-negative integer';
  const bodyId = count(row[3]);
  if (bodyId === null) return 'body id out of range';
  return { uid, uidl: row[1], size, bodyId };
}
