/**
 * Where RFC 2449 LOGIN-DELAY times are kept: the time of each user's last
 * successful login. LoginDelayPolicy (src/server/login-delay.ts) asks a
 * LoginDelayStore; MemoryLoginDelayStore keeps the times in this process,
 * other stores (PostgreSQL, the --workers primary) share them between
 * processes and nodes.
 *
 * Keys are user names as the authenticator returned them; names longer than
 * 128 characters are hashed so that a key stays small in every store.
 */
import { createHash } from 'node:crypto';

export interface LoginDelayStore {
  /**
   * Milliseconds `username` must still wait at `now` before logging in
   * again, given the delay `delayMs`; 0 when a login is allowed.
   */
  waitMs(username: string, now: number, delayMs: number): Promise<number>;
  /** Notes a successful login of `username` at `now`. */
  recordLogin(username: string, now: number, delayMs: number): Promise<void>;
  close?(): Promise<void>;
}

const MAX_KEY = 128;

/** The key a user name is kept under: the name, or a hash of a long one. */
export function loginDelayKey(username: string): string {
  return username.length <= MAX_KEY ? username : `#${createHash('sha256').update(username, 'utf8').digest('base64url')}`;
}

/**
 * In-process LOGIN-DELAY times. Entries older than the delay are useless and
 * are pruned, so memory stays proportional to the users who logged in within
 * the last `delayMs`.
 */
export class MemoryLoginDelayStore implements LoginDelayStore {
  /** user → time of the last login, ordered by time (oldest first) */
  readonly #last = new Map<string, number>();
  #lastPrune = 0;

  async waitMs(username: string, now: number, delayMs: number): Promise<number> {
    const last = this.#last.get(loginDelayKey(username));
    // A last login in the future means the clock went back: its time says nothing, and
    // LOGIN-DELAY is a courtesy to the server, not a lock, so the user is let in.
    if (last === undefined || last > now) return 0;
    return Math.max(0, last + delayMs - now);
  }

  async recordLogin(username: string, now: number, delayMs: number): Promise<void> {
    const key = loginDelayKey(username);
    // Re-insert so the map stays ordered by time: pruning can stop at the first fresh entry.
    this.#last.delete(key);
    this.#last.set(key, now);
    if (now - this.#lastPrune > Math.min(delayMs, 60_000)) {
      this.#lastPrune = now;
      for (const [u, t] of this.#last) {
        if (now - t < delayMs) break;
        this.#last.delete(u);
      }
    }
  }

  /** Users currently held. */
  get tracked(): number {
    return this.#last.size;
  }
}
