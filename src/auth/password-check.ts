import { dummyVerify, inspectSecret, isSlowSecret, verifyPassword } from './schemes.js';
import type { Credentials } from './types.js';

const FORBIDDEN = /[\r\n\0]/;

/**
 * The password credentials a password backend may look at, or null: not a
 * password, an empty name, CR/LF/NUL anywhere, or an authzid naming someone
 * else (no proxy logins).
 */
export function passwordRequest(c: Credentials): { username: string; password: string } | null {
  if (c.kind !== 'password') return null;
  const { username, password } = c;
  if (username === '' || FORBIDDEN.test(username) || FORBIDDEN.test(password)) return null;
  if (c.authzid !== undefined && c.authzid !== '' && c.authzid !== username) return null;
  return { username, password };
}

/** A user name a lookup may be asked about. */
export function usableName(username: string): boolean {
  return username !== '' && !FORBIDDEN.test(username);
}

export interface PasswordCheckerOptions {
  /** Prefix of the one warning per unusable stored secret, e.g. "postgres". */
  readonly label: string;
  readonly logger?: ((message: string) => void) | undefined;
  /** Replaceable for tests; default the real ones from ./schemes.js. */
  readonly verify?: ((password: string, stored: string) => Promise<boolean>) | undefined;
  readonly dummy?: ((password: string) => Promise<void>) | undefined;
}

/**
 * Checks a password against a user's stored `{SCHEME}secret`. An unknown
 * user or an unusable secret costs one dummy verification, and so does a
 * wrong password under a scheme cheaper than argon2 or bcrypt ({PLAIN}, a
 * digest, SHA-crypt). Every "no" then does the same work at the same moment,
 * so its timing does not tell an unknown name from a known one even while
 * the machine's load changes from one login to the next; the server's
 * padding to recent decision times covers the rest. An unusable secret is
 * logged once.
 */
export class PasswordChecker {
  readonly #label: string;
  readonly #logger: ((message: string) => void) | undefined;
  readonly #verify: (password: string, stored: string) => Promise<boolean>;
  readonly #dummy: (password: string) => Promise<void>;
  /** `user\0secret` pairs already reported as unusable */
  readonly #warned = new Set<string>();

  constructor(options: PasswordCheckerOptions) {
    this.#label = options.label;
    this.#logger = options.logger;
    this.#verify = options.verify ?? verifyPassword;
    this.#dummy = options.dummy ?? dummyVerify;
  }

  /** `user` undefined: unknown (or disabled) user. */
  async check(password: string, user: { readonly username: string; readonly secret: string } | undefined): Promise<boolean> {
    if (user === undefined) {
      await this.#dummy(password);
      return false;
    }
    const { error } = inspectSecret(user.secret);
    if (error !== undefined) {
      const k = `${user.username}\0${user.secret}`;
      if (!this.#warned.has(k)) {
        this.#warned.add(k);
        this.#logger?.(`${this.#label}: user ${user.username}: unusable password field: ${error}`);
      }
      await this.#dummy(password);
      return false;
    }
    const ok = await this.#verify(password, user.secret);
    if (!ok && !isSlowSecret(user.secret)) await this.#dummy(password);
    return ok;
  }
}
