/**
 * RFC 2449 §6.5 LOGIN-DELAY: the minimum time between two logins of one
 * user. The times live in a LoginDelayStore: in this process by default,
 * shared by all nodes (PostgreSQL) or all --workers (the primary process)
 * when the server is given such a store (src/cli/shared-limits.ts).
 */
import { MemoryLoginDelayStore, type LoginDelayStore } from '../auth/throttle-login-delay.js';

export class LoginDelayPolicy {
  readonly delaySeconds: number;
  readonly store: LoginDelayStore;
  readonly #now: () => number;

  constructor(delaySeconds: number, store: LoginDelayStore = new MemoryLoginDelayStore(), now: () => number = Date.now) {
    this.delaySeconds = delaySeconds;
    this.store = store;
    this.#now = now;
  }

  /** Seconds the user must still wait, or 0 when a login is allowed now. */
  async waitSeconds(username: string): Promise<number> {
    if (this.delaySeconds <= 0) return 0;
    const left = await this.store.waitMs(username, this.#now(), this.delaySeconds * 1000);
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  async recordLogin(username: string): Promise<void> {
    if (this.delaySeconds <= 0) return;
    await this.store.recordLogin(username, this.#now(), this.delaySeconds * 1000);
  }
}
