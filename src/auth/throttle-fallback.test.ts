import { describe, expect, it } from 'vitest';
import { FallbackGate, FallbackLoginDelayStore, FallbackThrottleStore } from './throttle-fallback.js';
import { LoginThrottle, MemoryThrottleStore, type ThrottleStore } from './throttle.js';
import { MemoryLoginDelayStore, type LoginDelayStore } from './throttle-login-delay.js';

/** A shared store that can be switched off: its calls then throw like an unreachable database. */
class Switchable implements ThrottleStore, LoginDelayStore {
  up = true;
  calls = 0;
  readonly counters = new MemoryThrottleStore();
  readonly logins = new MemoryLoginDelayStore();
  #check(): void {
    this.calls++;
    if (!this.up) throw new Error('connect ECONNREFUSED 127.0.0.1:5432');
  }
  async increment(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    this.#check();
    return this.counters.increment(keys, now, windowMs);
  }
  async counts(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    this.#check();
    return this.counters.counts(keys, now, windowMs);
  }
  async reset(keys: readonly string[]): Promise<void> {
    this.#check();
    return this.counters.reset(keys);
  }
  async waitMs(u: string, now: number, d: number): Promise<number> {
    this.#check();
    return this.logins.waitMs(u, now, d);
  }
  async recordLogin(u: string, now: number, d: number): Promise<void> {
    this.#check();
    return this.logins.recordLogin(u, now, d);
  }
}

function setup(): { shared: Switchable; throttle: LoginThrottle; delay: FallbackLoginDelayStore; warnings: string[]; infos: string[]; advance: (ms: number) => void } {
  let now = 1_700_000_000_000;
  const warnings: string[] = [];
  const infos: string[] = [];
  const shared = new Switchable();
  const gate = new FallbackGate({ name: 'test', warn: (m) => warnings.push(m), info: (m) => infos.push(m), now: () => now });
  const throttle = new LoginThrottle({ store: new FallbackThrottleStore(shared, gate), ipBlockAfter: 3, baseDelayMs: 100, now: () => now });
  return { shared, throttle, delay: new FallbackLoginDelayStore(shared, gate), warnings, infos, advance: (ms) => void (now += ms) };
}

describe('shared login counters that stop answering', () => {
  it('keep blocking from this process memory, warn once a minute, and go back to the shared store once it answers', async () => {
    const { shared, throttle, warnings, infos, advance } = setup();
    await throttle.recordFailure('192.0.2.1', 'alice');
    await throttle.recordFailure('192.0.2.1', 'alice');
    expect(await throttle.isBlocked('192.0.2.1', 'alice')).toBe(false);

    shared.up = false;
    // The address is not let through: its third failure, counted in memory (which saw the first two), blocks it.
    expect(await throttle.recordFailure('192.0.2.1', 'bob')).toBe(400);
    expect(await throttle.isBlocked('192.0.2.1', 'carol')).toBe(true);
    // Nor is anyone locked out: another address logs in as usual.
    expect(await throttle.isBlocked('198.51.100.7', 'dave')).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/unavailable.*this process alone/);

    // While it is down, the shared store is not asked on every call (a login does not wait for a timeout each time).
    const before = shared.calls;
    for (let i = 0; i < 5; i++) await throttle.isBlocked('198.51.100.7', 'dave');
    expect(shared.calls).toBe(before);

    // Retried after 10 s, still down: no second warning within the minute.
    advance(11_000);
    await throttle.isBlocked('198.51.100.7', 'dave');
    expect(shared.calls).toBe(before + 1);
    expect(warnings).toHaveLength(1);
    advance(60_000);
    await throttle.isBlocked('198.51.100.7', 'dave');
    expect(warnings).toHaveLength(2);

    shared.up = true;
    advance(11_000);
    // Back: the shared count (2 failures) answers again, and the recovery is noted.
    expect(await throttle.delayFor('192.0.2.1', 'x')).toBe(200);
    expect(infos).toEqual(['shared login counters (test) answer again']);
  });

  it('LOGIN-DELAY falls back to the times this process noted', async () => {
    const { shared, delay } = setup();
    await delay.recordLogin('alice', 1000, 60_000);
    expect(await delay.waitMs('alice', 2000, 60_000)).toBe(59_000);
    shared.up = false;
    expect(await delay.waitMs('alice', 2000, 60_000)).toBe(59_000);
    // A login while down is still noted here (and the shared store is left alone).
    await delay.recordLogin('bob', 3000, 60_000);
    expect(await delay.waitMs('bob', 4000, 60_000)).toBe(59_000);
  });
});
