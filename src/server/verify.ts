import type { Authenticator, ConnectionInfo, Credentials, Principal } from '../auth/types.js';

declare const verified: unique symbol;

/** A principal the user database vouched for. Only this module makes one; only the hand-off takes one. */
export type Verified = Principal & { readonly [verified]: true };

/** Check credentials: the principal, or null when they are wrong. Throws when the authenticator fails. */
export async function verifyCredentials(authenticator: Authenticator, credentials: Credentials, client: ConnectionInfo, signal: AbortSignal): Promise<Verified | null> {
  return (await authenticator.authenticate(credentials, client, signal)) as Verified | null;
}

/**
 * A user a SASL mechanism (CRAM-MD5, SCRAM, EXTERNAL) or APOP verified itself:
 * the user database still decides where the maildrop is and whether the user
 * may log in. Undefined for an unknown or disabled user; throws when the authenticator fails.
 */
export async function verifyUser(authenticator: Authenticator, username: string, signal: AbortSignal): Promise<Verified | undefined> {
  const lookup = authenticator.lookupPrincipal;
  if (lookup === undefined) return { username } as Verified;
  return (await lookup.call(authenticator, username, signal)) as Verified | undefined;
}
