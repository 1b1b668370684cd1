import { describe, expect, it } from 'vitest';
import { LoginThrottle, MemoryThrottleStore, THROTTLE_DEFAULTS, normalizeAddress } from './throttle.js';
import type { ThrottleStore } from './throttle.js';

function clocked(options: ConstructorParameters<typeof LoginThrottle>[0] = {}): { t: LoginThrottle; advance: (ms: number) => void } {
  let now = 1_700_000_000_000;
  const t = new LoginThrottle({ now: () => now, ...options });
  return { t, advance: (ms) => void (now += ms) };
}

describe('LoginThrottle delays', () => {
  it('doubles the delay per failure up to the cap', async () => {
    const { t } = clocked();
    expect(THROTTLE_DEFAULTS).toMatchObject({ baseDelayMs: 2000, maxDelayMs: 30000, windowMs: 900000 });
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(2000);
    const seen: number[] = [];
    for (let i = 0; i < 7; i++) seen.push(await t.recordFailure('192.0.2.1', 'alice'));
    expect(seen).toEqual([2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(30000);
  });

  it('honours custom base and cap, and does not overflow', async () => {
    const { t } = clocked({ baseDelayMs: 100, maxDelayMs: 1000 });
    const seen: number[] = [];
    for (let i = 0; i < 2000; i++) seen.push(await t.recordFailure('192.0.2.1', 'alice'));
    expect(seen.slice(0, 6)).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(seen.at(-1)).toBe(1000);
  });

  it('forgets a key after a window without failures, but not while failures continue', async () => {
    const { t, advance } = clocked({ windowMs: 60_000 });
    await t.recordFailure('192.0.2.1', 'alice');
    await t.recordFailure('192.0.2.1', 'alice');
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(4000);
    // a failure every 50 s keeps the count alive
    advance(50_000);
    expect(await t.recordFailure('192.0.2.1', 'alice')).toBe(8000);
    advance(50_000);
    expect(await t.recordFailure('192.0.2.1', 'alice')).toBe(16000);
    advance(59_999);
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(16000);
    advance(1);
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(2000);
    expect(await t.recordFailure('192.0.2.1', 'alice')).toBe(2000);
  });

  it('counts per user across addresses and per address across users', async () => {
    const { t } = clocked();
    for (let i = 1; i <= 4; i++) await t.recordFailure(`198.51.100.${i}`, 'alice');
    expect(await t.delayFor('203.0.113.9', 'alice')).toBe(16000);
    expect(await t.delayFor('203.0.113.9', 'bob')).toBe(2000);
    for (const u of ['u1', 'u2', 'u3']) await t.recordFailure('203.0.113.7', u);
    expect(await t.delayFor('203.0.113.7', 'someone-new')).toBe(8000);
  });

  it('counts user names case-insensitively and skips empty ones', async () => {
    const { t } = clocked();
    await t.recordFailure('192.0.2.1', 'Alice');
    await t.recordFailure('192.0.2.2', 'ALICE');
    expect(await t.delayFor('192.0.2.3', 'alice')).toBe(4000);
    expect(await t.recordFailure('192.0.2.9', '')).toBe(2000);
    expect(await t.recordFailure('192.0.2.9', '')).toBe(4000);
  });

  it('clears the user counter on success but keeps the address counter', async () => {
    const { t } = clocked();
    for (let i = 0; i < 3; i++) await t.recordFailure('192.0.2.1', 'alice');
    for (let i = 0; i < 3; i++) await t.recordFailure('198.51.100.1', 'alice');
    await t.recordSuccess('203.0.113.1', 'alice');
    expect(await t.delayFor('203.0.113.1', 'alice')).toBe(2000);
    expect(await t.delayFor('192.0.2.1', 'alice')).toBe(8000);
  });
});

describe('LoginThrottle blocking', () => {
  it('blocks an address after ipBlockAfter failures until the window passes', async () => {
    const { t, advance } = clocked({ ipBlockAfter: 5, windowMs: 60_000 });
    for (let i = 0; i < 4; i++) await t.recordFailure('192.0.2.1', `user${i}`);
    expect(await t.isBlocked('192.0.2.1', 'x')).toBe(false);
    await t.recordFailure('192.0.2.1', 'user4');
    expect(await t.isBlocked('192.0.2.1', 'x')).toBe(true);
    expect(await t.isBlocked('192.0.2.2', 'user0')).toBe(false);
    // success for some user does not unblock the address
    await t.recordSuccess('192.0.2.1', 'user0');
    expect(await t.isBlocked('192.0.2.1', 'x')).toBe(true);
    advance(60_000);
    expect(await t.isBlocked('192.0.2.1', 'x')).toBe(false);
  });

  it('blocks users only when userBlockAfter is set', async () => {
    const off = clocked({ ipBlockAfter: 0 });
    for (let i = 0; i < 50; i++) await off.t.recordFailure(`198.51.100.${i}`, 'alice');
    expect(await off.t.isBlocked('192.0.2.1', 'alice')).toBe(false);
    const on = clocked({ userBlockAfter: 10 });
    for (let i = 0; i < 10; i++) await on.t.recordFailure(`198.51.100.${i}`, 'alice');
    expect(await on.t.isBlocked('192.0.2.1', 'alice')).toBe(true);
    expect(await on.t.isBlocked('192.0.2.1', 'bob')).toBe(false);
  });
});

describe('address normalization', () => {
  it('maps addresses to counter keys', () => {
    expect(normalizeAddress('192.0.2.1')).toBe('192.0.2.1');
    expect(normalizeAddress('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(normalizeAddress('::FFFF:c000:0201')).toBe('192.0.2.1');
    expect(normalizeAddress('2001:db8::1')).toBe('2001:db8:0:0:0:0:0:0/64');
    expect(normalizeAddress('2001:DB8:0:0:ffff::2')).toBe('2001:db8:0:0:0:0:0:0/64');
    expect(normalizeAddress('2001:db8:0:1::1')).toBe('2001:db8:0:1:0:0:0:0/64');
    expect(normalizeAddress('fe80::1%eth0')).toBe('fe80:0:0:0:0:0:0:0/64');
    expect(normalizeAddress('[::1]')).toBe('0:0:0:0:0:0:0:0/64');
    expect(normalizeAddress('2001:db8:abcd:12ff::1', 56)).toBe('2001:db8:abcd:1200:0:0:0:0/56');
    expect(normalizeAddress('2001:db8::1', 128)).toBe('2001:db8:0:0:0:0:0:1/128');
    expect(normalizeAddress('not-an-ip')).toBe('not-an-ip');
    expect(normalizeAddress('x'.repeat(1000)).length).toBeLessThan(64);
  });

  it('normalizeAddress: IPv4 per address by default, or per configured prefix', () => {
    expect(normalizeAddress('198.51.100.77', 64, 32)).toBe('198.51.100.77');
    expect(normalizeAddress('198.51.100.77', 64, 24)).toBe('198.51.100.0/24');
    expect(normalizeAddress('198.51.100.77', 64, 24)).toBe(normalizeAddress('198.51.100.3', 64, 24));
    expect(normalizeAddress('198.51.101.77', 64, 24)).not.toBe(normalizeAddress('198.51.100.77', 64, 24));
    expect(normalizeAddress('255.255.255.255', 64, 1)).toBe('128.0.0.0/1');
    expect(normalizeAddress('::ffff:198.51.100.77', 64, 16)).toBe('198.51.0.0/16');
    expect(new LoginThrottle({ ipv4PrefixLength: 24 }).ipKey('192.0.2.200')).toBe('ip:192.0.2.0/24');
    expect(() => new LoginThrottle({ ipv4PrefixLength: 33 })).toThrow(RangeError);
  });

  it('counts an IPv6 /64 as one client', async () => {
    const { t } = clocked();
    await t.recordFailure('2001:db8::1', 'a');
    await t.recordFailure('2001:db8::ffff:2', 'b');
    expect(await t.delayFor('2001:db8::3', 'c')).toBe(4000);
    expect(await t.delayFor('2001:db8:0:1::3', 'c')).toBe(2000);
  });
});

describe('memory bounds', () => {
  it('keeps at most maxTracked keys per kind while addresses and user names are sprayed', async () => {
    const store = new MemoryThrottleStore(100);
    const { t } = clocked({ store });
    for (let i = 0; i < 5000; i++) await t.recordFailure(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, `user${i}`);
    expect(store.size).toBeLessThanOrEqual(200);
  });

  it('does not let a user-name spray evict address counters', async () => {
    const store = new MemoryThrottleStore(50);
    const { t } = clocked({ store });
    for (let i = 0; i < 4; i++) await t.recordFailure('192.0.2.66', 'alice');
    for (let i = 0; i < 1000; i++) await t.recordFailure('198.51.100.1', `spray${i}`);
    expect(await t.delayFor('192.0.2.66', 'nobody')).toBe(16000);
  });

  it('evicts the key whose last failure is oldest', async () => {
    const store = new MemoryThrottleStore(3);
    let now = 0;
    const win = 1_000_000;
    await store.increment(['ip:a'], (now += 1), win);
    await store.increment(['ip:b'], (now += 1), win);
    await store.increment(['ip:c'], (now += 1), win);
    await store.increment(['ip:a'], (now += 1), win); // a is now the newest
    await store.increment(['ip:d'], (now += 1), win); // evicts b
    expect(await store.counts(['ip:a', 'ip:b', 'ip:c', 'ip:d'], now, win)).toEqual([2, 0, 1, 1]);
  });

  it('keeps keys small for long user names', async () => {
    const keys: string[] = [];
    const inner = new MemoryThrottleStore();
    const spy: ThrottleStore = {
      increment: (k, n, w) => (keys.push(...k), inner.increment(k, n, w)),
      counts: (k, n, w) => inner.counts(k, n, w),
      reset: (k) => inner.reset(k),
    };
    const { t } = clocked({ store: spy });
    await t.recordFailure('192.0.2.1', 'a'.repeat(16_000));
    await t.recordFailure('192.0.2.1', 'A'.repeat(16_000));
    expect(Math.max(...keys.map((k) => k.length))).toBeLessThan(160);
    expect(keys[1]).toBe(keys[3]);
  });
});

describe('shared stores', () => {
  it('lets several throttles share counters through one ThrottleStore', async () => {
    // stands in for a database-backed store: async, shared by two "nodes"
    const shared = new MemoryThrottleStore();
    const remote: ThrottleStore = {
      increment: async (k, n, w) => {
        await new Promise((r) => setTimeout(r, 1));
        return shared.increment(k, n, w);
      },
      counts: async (k, n, w) => shared.counts(k, n, w),
      reset: async (k) => shared.reset(k),
    };
    let now = 0;
    const a = new LoginThrottle({ store: remote, now: () => now });
    const b = new LoginThrottle({ store: remote, now: () => now });
    await a.recordFailure('192.0.2.1', 'alice');
    now += 1000;
    expect(await b.recordFailure('198.51.100.1', 'alice')).toBe(4000);
    await a.recordSuccess('192.0.2.1', 'alice');
    expect(await b.delayFor('198.51.100.1', 'alice')).toBe(2000);
  });

  it('validates options', () => {
    expect(() => new LoginThrottle({ baseDelayMs: 10, maxDelayMs: 5 })).toThrow(RangeError);
    expect(() => new LoginThrottle({ windowMs: 0 })).toThrow(RangeError);
    expect(() => new LoginThrottle({ ipv6PrefixLength: 0 })).toThrow(RangeError);
    expect(() => new MemoryThrottleStore(0)).toThrow(RangeError);
  });
});
