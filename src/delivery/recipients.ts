/**
 * From a recipient address to a user of the user database, for LMTP's RCPT
 * TO and `poplar deliver`: by the whole address, by its local part, or the
 * whole address first and the local part when no such user exists
 * (`[lmtp] recipient_format`), optionally without a `+extension`
 * (`recipient_delimiter`); as written first, then in lower case. The
 * quota a delivery gets is the user's own (from the user database) over the
 * `[quota]` defaults.
 */
import type { Authenticator, Principal } from '../auth/types.js';
import { usernameSyntaxProblem } from '../auth/username.js';
import type { Quota } from '../store/types.js';
import type { QuotaConfig } from './config.js';

export type RecipientFormat = 'auto' | 'full' | 'local';

export interface RecipientRules {
  readonly format: RecipientFormat;
  /** '' for none. */
  readonly delimiter: string;
}

/** The user names an address may stand for, in the order they are tried. */
export function candidateNames(address: string, rules: RecipientRules): string[] {
  const at = address.lastIndexOf('@');
  const local = at < 0 ? address : address.slice(0, at);
  const domain = at < 0 ? '' : address.slice(at + 1).toLowerCase();
  const stripped = (l: string): string => {
    if (rules.delimiter === '') return l;
    const i = l.indexOf(rules.delimiter);
    return i > 0 ? l.slice(0, i) : l;
  };
  const full = (l: string): string => (at < 0 ? l : `${l}@${domain}`);
  const out: string[] = [];
  if (rules.format !== 'local') out.push(full(local), full(stripped(local)));
  if (rules.format !== 'full') out.push(local, stripped(local));
  // Then the same in lower case: most MTAs and users treat the local part as case-insensitive.
  const lower = out.map((n) => n.toLowerCase());
  return [...new Set([...out, ...lower])].filter((n) => n !== '' && usernameSyntaxProblem(n) === undefined);
}

/**
 * The user an address reaches, or undefined for none. A user database that
 * cannot answer throws (TemporaryFailure): the MTA tries again.
 */
export async function resolveRecipient(auth: Authenticator, address: string, rules: RecipientRules, signal?: AbortSignal): Promise<Principal | undefined> {
  if (auth.lookupPrincipal === undefined) return undefined;
  for (const name of candidateNames(address, rules)) {
    const p = await auth.lookupPrincipal(name, signal);
    if (p !== undefined) return p;
  }
  return undefined;
}

/** A user's limits: their own where the user database has them, else the defaults (0 = none). */
export function quotaFor(user: Principal, defaults: QuotaConfig): Quota {
  return { bytes: user.quota?.bytes ?? defaults.max_bytes, messages: user.quota?.messages ?? defaults.max_messages };
}
