import type { MailStore } from '../store/types.js';
import { MailHalf, type MailDeps } from './mail.js';
import type { Verified } from './verify.js';

/**
 * The one way from the login half to the mail half: a principal the user
 * database vouched for (verify.ts), its maildrop opened and locked, the mail
 * half made around them. Throws what the store throws (InUseError, ...);
 * the login half answers it and stays in AUTHORIZATION.
 */
export async function handOff(user: Verified, store: MailStore, deps: MailDeps, signal: AbortSignal): Promise<MailHalf> {
  const maildrop = await store.open(user, signal);
  return new MailHalf(deps, user, maildrop);
}
