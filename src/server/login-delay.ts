/**
 * RFC 2449 §6.5 LOGIN-DELAY: the minimum time between two logins of one
 * user. Kept in memory on this node (a later shared store can replace it);
 * entries older than the delay are useless and are pruned, so memory stays
 * proportional to the users who logged in within the last `delaySeconds`.
 */
export class LoginDelayPolicy {
  readonly #delayMs: number;
  readonly #last = new Map<string, number>();
  readonly #now: () => number;
  #lastPrune = 0;

  constructor(delaySeconds: number, now: () => number = Date.now) {
    this.#delayMs = delaySeconds * 1000;
    this.#now = now;
  }

  /** Seconds the user must still wait, or 0 when a login is allowed now. */
  waitSeconds(username: string): number {
    const last = this.#last.get(username);
    if (last === undefined) return 0;
    const left = last + this.#delayMs - this.#now();
    return left > 0 ? Math.ceil(left / 1000) : 0;
  }

  recordLogin(username: string): void {
    const now = this.#now();
    // Re-insert so the map stays ordered by time: pruning can stop at the first fresh entry.
    this.#last.delete(username);
    this.#last.set(username, now);
    if (now - this.#lastPrune > Math.min(this.#delayMs, 60_000)) {
      this.#lastPrune = now;
      for (const [u, t] of this.#last) {
        if (now - t < this.#delayMs) break;
        this.#last.delete(u);
      }
    }
  }

  get tracked(): number {
    return this.#last.size;
  }
}
