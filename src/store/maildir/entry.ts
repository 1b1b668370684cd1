/** One message of a maildrop scan, and the UIDL a message gets. */

/** RFC 1939 §7: a unique-id is 1 to 70 characters from 0x21 to 0x7E. */
export const UIDL = /^[\x21-\x7e]{1,70}$/;

/** Dovecot's default pop3_uidl_format `%08Xu%08Xv`: UID then UIDVALIDITY, 8 lower-case hex digits each. */
export function dovecotUidl(uid: number, uidValidity: number): string {
  return uid.toString(16).padStart(8, '0') + uidValidity.toString(16).padStart(8, '0');
}

/**
 * One message of a scan. Never changed once made: a remembered scan hands the
 * same objects to every session that reuses it, and a session keeps its own
 * record of files it found renamed (MaildirMaildrop#names).
 */
export interface Entry {
  readonly uid: number;
  readonly basename: string;
  readonly filename: string;
  readonly size: number;
  readonly uidl: string;
  readonly order: number | undefined;
}
