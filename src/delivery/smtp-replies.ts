/**
 * What a delivery's outcome is on the LMTP wire: the store's and the user
 * database's typed failures (src/errors.ts) as SMTP reply codes with RFC 3463
 * enhanced status codes, as the POP3 side maps them to response codes
 * (src/protocol/codes.ts).
 */
import type { FailureKind } from '../errors.js';
import { MailError } from '../errors.js';

export interface SmtpReply {
  readonly code: number;
  /** RFC 3463 enhanced status code. */
  readonly status: string;
  readonly text: string;
}

export type OverQuota = 'temporary' | 'permanent';

const BY_KIND: Readonly<Record<FailureKind, SmtpReply>> = {
  'in-use': { code: 451, status: '4.3.0', text: 'Mailbox busy, try again later' },
  temporary: { code: 451, status: '4.3.0', text: 'Temporary failure in the mail store' },
  permanent: { code: 550, status: '5.2.0', text: 'Mailbox unusable' },
  'auth-failed': { code: 451, status: '4.3.0', text: 'Temporary failure in the user database' },
  'not-found': { code: 550, status: '5.1.1', text: 'No such user here' },
  'message-unavailable': { code: 451, status: '4.3.0', text: 'Temporary failure in the mail store' },
  quota: { code: 452, status: '4.2.2', text: 'Mailbox is full' },
};

/** The reply for a failed delivery; anything that is not a MailError is a local fault (451 4.3.0, no details). */
export function smtpReplyFor(e: unknown, overQuota: OverQuota): SmtpReply {
  const kind: FailureKind = e instanceof MailError ? e.kind : 'temporary';
  if (kind === 'quota' && overQuota === 'permanent') return { code: 552, status: '5.2.2', text: 'Mailbox is full' };
  return BY_KIND[kind];
}

/** The reply for a delivered message (durable in the store). */
export const DELIVERED: SmtpReply = { code: 250, status: '2.0.0', text: 'Saved' };

/** sysexits for `poplar deliver`: 67 unknown user, 73 cannot create, 75 temporary failure. */
export function exitCodeFor(e: unknown, overQuota: OverQuota): number {
  const kind: FailureKind = e instanceof MailError ? e.kind : 'temporary';
  if (kind === 'not-found') return 67;
  if (kind === 'permanent') return 73;
  if (kind === 'quota') return overQuota === 'permanent' ? 73 : 75;
  return 75;
}
