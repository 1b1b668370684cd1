import { Pop3Error } from '../../protocol/codes.js';
import { dummyVerify, inspectSecret, verifyPassword } from '../schemes.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal } from '../types.js';
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
 * - A file that has never been readable → Pop3Error('SYS/TEMP').
 * - Extra fields (nopassword, allow_nets, ...) are not interpreted.
 */
export class PasswdFileAuthenticator implements Authenticator {
  readonly file: PasswdFile;
  readonly #logger: ((message: string) => void) | undefined;
  readonly #verify: (password: string, stored: string) => Promise<boolean>;
  readonly #dummy: (password: string) => Promise<void>;
  /** `user\0secret` pairs already reported as unusable */
  readonly #warned = new Set<string>();

  constructor(file: PasswdFile | string, options: PasswdFileAuthenticatorOptions = {}) {
    this.file = typeof file === 'string' ? new PasswdFile(file, options) : file;
    this.#logger = options.logger;
    this.#verify = options.verify ?? verifyPassword;
    this.#dummy = options.dummy ?? dummyVerify;
  }

  async authenticate(c: Credentials, _conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null> {
    signal?.throwIfAborted();
    if (c.kind !== 'password') return null;
    const { username, password } = c;
    if (username === '' || FORBIDDEN.test(username) || FORBIDDEN.test(password)) return null;
    if (c.authzid !== undefined && c.authzid !== '' && c.authzid !== username) return null;

    const entry = await this.#lookup(username);
    if (!entry) {
      await this.#dummy(password);
      return null;
    }
    const { error } = inspectSecret(entry.password);
    if (error !== undefined) {
      this.#warnOnce(entry, error);
      await this.#dummy(password);
      return null;
    }
    if (!(await this.#verify(password, entry.password))) return null;
    return entry.home !== '' ? { username: entry.username, home: entry.home } : { username: entry.username };
  }

  async lookupPrincipal(username: string): Promise<Principal | undefined> {
    if (username === '' || FORBIDDEN.test(username)) return undefined;
    const entry = await this.#lookup(username);
    if (!entry) return undefined;
    return entry.home !== '' ? { username: entry.username, home: entry.home } : { username: entry.username };
  }

  /** The stored secret (e.g. `{PLAIN}...`) for challenge-response mechanisms, or undefined for unknown users. */
  async lookupSecret(username: string): Promise<string | undefined> {
    if (username === '' || FORBIDDEN.test(username)) return undefined;
    return (await this.#lookup(username))?.password;
  }

  async close(): Promise<void> {
    // nothing held open between lookups
  }

  async #lookup(username: string): Promise<PasswdEntry | undefined> {
    try {
      return await this.file.lookup(username);
    } catch (e) {
      throw new Pop3Error('authentication backend unavailable', 'SYS/TEMP', { cause: e });
    }
  }

  #warnOnce(entry: PasswdEntry, error: string): void {
    const k = `${entry.username}\0${entry.password}`;
    if (this.#warned.has(k)) return;
    this.#warned.add(k);
    this.#logger?.(`passwd-file ${this.file.path}: user ${entry.username}: unusable password field: ${error}`);
  }
}
