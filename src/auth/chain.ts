/**
 * Several authenticators tried in order, e.g. passwd-file then PostgreSQL
 * for passwords, OAuth for bearer tokens.
 *
 * - Only the members that handle the credential kind are asked.
 * - The first non-null principal wins; later members are not asked.
 * - A member that fails (SYS/TEMP, or any unexpected error) does not stop
 *   the chain: if a later member accepts the credentials, the login succeeds;
 *   otherwise the result is SYS/TEMP, because the failed member might have
 *   accepted them. Only when every asked member answers null is the result null.
 * - An aborted signal ends the chain at once with the abort reason.
 *
 * The same user name in two members: either member's password works.
 */
import { TemporaryFailure } from '../errors.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal } from './types.js';

export type CredentialKind = Credentials['kind'];

export interface ChainMember {
  readonly authenticator: Authenticator;
  /** Credential kinds this member is asked about; default all. */
  readonly kinds?: readonly CredentialKind[] | undefined;
  /** For log lines; default `#<index>`. */
  readonly name?: string | undefined;
}

export interface ChainAuthenticatorOptions {
  readonly logger?: ((message: string) => void) | undefined;
}

interface Member {
  readonly authenticator: Authenticator;
  readonly name: string;
  readonly kinds: ReadonlySet<CredentialKind> | undefined;
}

export class ChainAuthenticator implements Authenticator {
  readonly #members: readonly Member[];
  readonly #logger: ((message: string) => void) | undefined;

  constructor(members: readonly (ChainMember | Authenticator)[], options: ChainAuthenticatorOptions = {}) {
    this.#members = members.map((m, i) => {
      const member: ChainMember = typeof (m as Partial<Authenticator>).authenticate === 'function' ? { authenticator: m as Authenticator } : (m as ChainMember);
      return {
        authenticator: member.authenticator,
        name: member.name ?? `#${i}`,
        kinds: member.kinds === undefined ? undefined : new Set(member.kinds),
      };
    });
    this.#logger = options.logger;
  }

  async authenticate(c: Credentials, conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null> {
    let failure: unknown;
    for (const m of this.#members) {
      signal?.throwIfAborted();
      if (m.kinds !== undefined && !m.kinds.has(c.kind)) continue;
      try {
        const principal = await m.authenticator.authenticate(c, conn, signal);
        if (principal !== null) return principal;
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        this.#note(m.name, e);
        failure ??= e;
      }
    }
    if (failure !== undefined) throw asTemp(failure);
    return null;
  }

  /**
   * The first stored secret any member has for the user. Members without
   * lookupSecret are skipped; a failing member makes the answer SYS/TEMP
   * unless a later one knows the user.
   */
  async lookupSecret(username: string, signal?: AbortSignal): Promise<string | undefined> {
    return this.#firstAnswer((a) => a.lookupSecret?.bind(a), username, signal);
  }

  /** The principal from the first password member that knows the user (same failure rules as lookupSecret). */
  async lookupPrincipal(username: string, signal?: AbortSignal): Promise<Principal | undefined> {
    return this.#firstAnswer((a) => a.lookupPrincipal?.bind(a), username, signal);
  }

  /** Ask password members in order for a per-user answer; see lookupSecret for the failure rules. */
  async #firstAnswer<T>(
    method: (a: Authenticator) => ((username: string, signal?: AbortSignal) => Promise<T | undefined>) | undefined,
    username: string,
    signal?: AbortSignal,
  ): Promise<T | undefined> {
    let failure: unknown;
    for (const m of this.#members) {
      signal?.throwIfAborted();
      const ask = method(m.authenticator);
      if (ask === undefined) continue;
      if (m.kinds !== undefined && !m.kinds.has('password')) continue;
      try {
        const answer = await ask(username, signal);
        if (answer !== undefined) return answer;
      } catch (e) {
        if (signal?.aborted) throw signal.reason;
        this.#note(m.name, e);
        failure ??= e;
      }
    }
    if (failure !== undefined) throw asTemp(failure);
    return undefined;
  }

  /** Closes every member, even if some fail; rethrows the first failure. */
  async close(): Promise<void> {
    const results = await Promise.allSettled(this.#members.map((m) => m.authenticator.close?.()));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
  }

  #note(name: string, e: unknown): void {
    const temp = e instanceof TemporaryFailure;
    this.#logger?.(`auth chain: ${name} ${temp ? 'unavailable' : 'failed'}: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function asTemp(e: unknown): TemporaryFailure {
  if (e instanceof TemporaryFailure) return e;
  return new TemporaryFailure('authentication backend unavailable', { cause: e });
}
