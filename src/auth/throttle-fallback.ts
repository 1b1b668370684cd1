/**
 * Shared login counters that cannot be reached must neither lock everyone
 * out nor let brute force through unnoticed. These wrappers put a shared
 * store (PostgreSQL, the --workers primary) in front of this process's
 * memory:
 *
 * - while the shared store answers, its answers count; every failure and
 *   login is also noted in memory, so the memory is warm when it is needed;
 * - when a call fails (an error, a timeout), that call and every call for the
 *   next `retryAfterMs` are answered from memory: failures keep being counted
 *   and delayed, and addresses keep being blocked, by this process alone, as
 *   if it were the only node. A warning is logged at most once per
 *   `logEveryMs` while this lasts, and a note when the shared store is back.
 *
 * One FallbackGate serves both the counters and the LOGIN-DELAY times of one
 * shared store, so one outage is noticed (and logged) once.
 */
import { MemoryThrottleStore, type ThrottleStore } from './throttle.js';
import { MemoryLoginDelayStore, type LoginDelayStore } from './throttle-login-delay.js';

export interface FallbackGateOptions {
  /** What the shared store is, for the log ("postgres", "primary process"). */
  readonly name: string;
  readonly warn: (message: string, error: unknown) => void;
  readonly info?: ((message: string) => void) | undefined;
  /** After a failure, memory answers for this long before the shared store is tried again; default 10 s. */
  readonly retryAfterMs?: number | undefined;
  /** At most one warning per this many ms while the shared store fails; default 60 s. */
  readonly logEveryMs?: number | undefined;
  readonly now?: (() => number) | undefined;
}

export class FallbackGate {
  readonly #o: FallbackGateOptions;
  readonly #now: () => number;
  #downUntil = 0;
  #down = false;
  #lastWarning = Number.NEGATIVE_INFINITY;

  constructor(options: FallbackGateOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Whether the latest call fell back to memory. */
  get down(): boolean {
    return this.#down;
  }

  async run<T>(shared: () => Promise<T>, local: () => Promise<T>): Promise<T> {
    const t = this.#now();
    if (this.#down && t < this.#downUntil) return local();
    try {
      const value = await shared();
      if (this.#down) {
        this.#down = false;
        this.#o.info?.(`shared login counters (${this.#o.name}) answer again`);
      }
      return value;
    } catch (e) {
      const t2 = this.#now();
      this.#down = true;
      this.#downUntil = t2 + (this.#o.retryAfterMs ?? 10_000);
      if (t2 - this.#lastWarning >= (this.#o.logEveryMs ?? 60_000)) {
        this.#lastWarning = t2;
        this.#o.warn(`shared login counters (${this.#o.name}) unavailable: failures, blocks and LOGIN-DELAY are counted by this process alone until they answer`, e);
      }
      return local();
    }
  }
}

/** Counters from the shared store, or from this process's memory while it cannot answer. */
export class FallbackThrottleStore implements ThrottleStore {
  readonly shared: ThrottleStore;
  readonly local: ThrottleStore;
  readonly #gate: FallbackGate;

  constructor(shared: ThrottleStore, gate: FallbackGate, local: ThrottleStore = new MemoryThrottleStore()) {
    this.shared = shared;
    this.local = local;
    this.#gate = gate;
  }

  async increment(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    const local = this.local.increment(keys, now, windowMs);
    return this.#gate.run(
      () => this.shared.increment(keys, now, windowMs),
      () => local,
    );
  }

  counts(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    return this.#gate.run(
      () => this.shared.counts(keys, now, windowMs),
      () => this.local.counts(keys, now, windowMs),
    );
  }

  async reset(keys: readonly string[]): Promise<void> {
    await this.local.reset(keys);
    await this.#gate.run(
      () => this.shared.reset(keys),
      async () => undefined,
    );
  }

  async close(): Promise<void> {
    await this.shared.close?.();
  }
}

/** LOGIN-DELAY times from the shared store, or from this process's memory while it cannot answer. */
export class FallbackLoginDelayStore implements LoginDelayStore {
  readonly shared: LoginDelayStore;
  readonly local: LoginDelayStore;
  readonly #gate: FallbackGate;

  constructor(shared: LoginDelayStore, gate: FallbackGate, local: LoginDelayStore = new MemoryLoginDelayStore()) {
    this.shared = shared;
    this.local = local;
    this.#gate = gate;
  }

  waitMs(username: string, now: number, delayMs: number): Promise<number> {
    return this.#gate.run(
      () => this.shared.waitMs(username, now, delayMs),
      () => this.local.waitMs(username, now, delayMs),
    );
  }

  async recordLogin(username: string, now: number, delayMs: number): Promise<void> {
    await this.local.recordLogin(username, now, delayMs);
    await this.#gate.run(
      () => this.shared.recordLogin(username, now, delayMs),
      async () => undefined,
    );
  }

  async close(): Promise<void> {
    await this.shared.close?.();
  }
}
