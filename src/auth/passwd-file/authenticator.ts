import { TemporaryFailure } from '../../errors.js';
import { PasswordChecker, passwordRequest, usableName } from '../password-check.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal, UserQuota } from '../types.js';
import { PasswdFile } from './passwd-file.js';
import type { PasswdEntry, PasswdFileOptions } from './passwd-file.js';

export interface PasswdFileAuthenticatorOptions extends PasswdFileOptions {
  /** Replaceable for tests; defaults to the real ones from ../schemes.js. */
  readonly verify?: (password: string, stored: string) => Promise<boolean>;
  readonly dummy?: (password: string) => Promise<void>;
}

const FORBIDDEN = /[\r\n\0]/;

/**
 * Password authentication against a Dovecot passwd-file.
 *
 * - Unknown user, unusable stored secret and wrong password all yield null;
 *   the first two still spend one dummyVerify() so timing is alike.
 * - An authzid different from the user name is refused (no proxy logins).
 * - A file that has never been readable → TemporaryFailure.
 * - Extra fields are not interpreted, except `quota_bytes=N` and
 *   `quota_messages=N` (a delivery's limits for this user, 0 = none; a value
 *   that is not a whole number is ignored and the `[quota]` default applies).
 */
export class PasswdFileAuthenticator implements Authenticator {
  readonly file: PasswdFile;
  readonly #checker: PasswordChecker;

  constructor(file: PasswdFile | string, options: PasswdFileAuthenticatorOptions = {}) {
    this.file = typeof file === 'string' ? new PasswdFile(file, options) : file;
    this.#checker = new PasswordChecker({ label: `passwd-file ${this.file.path}`, logger: options.logger, verify: options.verify, dummy: options.dummy });
  }

  async authenticate(c: Credentials, _conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null> {
    signal?.throwIfAborted();
    const req = passwordRequest(c);
    if (req === null) return null;
    const entry = await this.#lookup(req.username);
    if (!(await this.#checker.check(req.password, entry && { username: entry.username, secret: entry.password })) || !entry) return null;
    return entry.home !== '' ? { username: entry.username, home: entry.home } : { username: entry.username };
  }

  async lookupPrincipal(username: string): Promise<Principal | undefined> {
    if (!usableName(username)) return undefined;
    const entry = await this.#lookup(username);
    if (!entry) return undefined;
    const quota = quotaOf(entry);
    return { username: entry.username, ...(entry.home !== '' ? { home: entry.home } : {}), ...(quota !== undefined ? { quota } : {}) };
  }

  /** The stored secret (e.g. `{PLAIN}...`) for challenge-response mechanisms, or undefined for unknown users. */
  async lookupSecret(username: string): Promise<string | undefined> {
    if (!usableName(username)) return undefined;
    return (await this.#lookup(username))?.password;
  }

  async close(): Promise<void> {
    // nothing held open between lookups
  }

  async #lookup(username: string): Promise<PasswdEntry | undefined> {
    try {
      return await this.file.lookup(username);
    } catch (e) {
      throw new TemporaryFailure('authentication backend unavailable', { cause: e });
    }
  }
}

/** The largest limit taken from a file: 2^53 - 1 octets or messages. */
const QUOTA_VALUE = /^\d{1,15}$/;

function quotaOf(entry: PasswdEntry): UserQuota | undefined {
  const bytes = entry.extra.get('quota_bytes');
  const messages = entry.extra.get('quota_messages');
  const q: { bytes?: number; messages?: number } = {};
  if (bytes !== undefined && QUOTA_VALUE.test(bytes)) q.bytes = Number(bytes);
  if (messages !== undefined && QUOTA_VALUE.test(messages)) q.messages = Number(messages);
  return q.bytes !== undefined || q.messages !== undefined ? q : undefined;
}
