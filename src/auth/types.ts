/** Who logged in. `home`, `maildir` and `quota` come from the user database when it has them. */
export interface Principal {
  readonly username: string;
  readonly home?: string;
  readonly maildir?: string;
  /** This user's own limits (0 = none); a missing one is the `[quota]` default. */
  readonly quota?: UserQuota;
}

/** A user's quota override from the user database (octets as LIST counts them, and messages). */
export interface UserQuota {
  readonly bytes?: number;
  readonly messages?: number;
}

export interface ConnectionInfo {
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly localAddress: string;
  readonly localPort: number;
  readonly secure: boolean;
}

export type Credentials =
  | { readonly kind: 'password'; readonly username: string; readonly password: string; readonly authzid?: string }
  | { readonly kind: 'bearer'; readonly username: string; readonly token: string };

/**
 * Verifies credentials. Returns the principal, or null for "wrong credentials"
 * (unknown user and wrong password are indistinguishable). Throws
 * TemporaryFailure (src/errors.ts) when the backend is unavailable.
 */
export interface Authenticator {
  authenticate(c: Credentials, conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null>;
  /** The stored `{SCHEME}secret` of a user, for CRAM-MD5, SCRAM and APOP; undefined for an unknown user. */
  lookupSecret?(username: string, signal?: AbortSignal): Promise<string | undefined>;
  /**
   * The principal (home, maildir) of a user verified elsewhere (CRAM-MD5, SCRAM,
   * APOP, EXTERNAL); undefined for an unknown or disabled user.
   */
  lookupPrincipal?(username: string, signal?: AbortSignal): Promise<Principal | undefined>;
  close?(): Promise<void>;
}
