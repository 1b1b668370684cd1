/**
 * Brute-force resistance for logins.
 *
 * Failures are counted per client address and per user name. The delay
 * before a failure is answered grows exponentially with the larger of the two
 * counts:
 *
 *     delay = min(maxDelayMs, baseDelayMs × 2^(failures − 1))
 *
 * so with the defaults 2 s, 4 s, 8 s, 16 s, then 30 s. A counter is forgotten
 * once its key has had no failure for `windowMs` (a client that keeps failing
 * keeps its count). A successful login clears the user's counter, not the
 * address's, so one valid account cannot launder a password-spraying address.
 *
 * Besides the delay, an address with `ipBlockAfter` failures in the window
 * is blocked: the server refuses its logins without checking credentials
 * (and counts them, so a client that keeps trying stays blocked). A per-user
 * block (`userBlockAfter`) is off by default because it lets anyone lock a
 * victim out.
 *
 * Addresses: IPv4-mapped IPv6 counts as IPv4; other IPv6 addresses are counted
 * per /64 (configurable), since one host usually holds a whole /64. User names
 * are counted case-insensitively; long ones are hashed so keys stay small.
 *
 * Memory: counters live in a ThrottleStore. MemoryThrottleStore keeps at most
 * `maxTracked` keys per kind (addresses, users), about 250 bytes each, and
 * evicts the key whose last failure is oldest, so spraying addresses or user
 * names cannot exhaust memory. Shared stores implement the same interface:
 * PostgresThrottleStore (throttle-postgres.ts) for all nodes on a database,
 * ClusterThrottleStore (throttle-cluster.ts) for the --workers of one
 * machine, each behind FallbackThrottleStore (throttle-fallback.ts) so that an
 * outage falls back to this process's memory; src/cli/shared-limits.ts picks.
 */
import { createHash } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';

/**
 * Failure counters by key. Keys look like `kind:value` (`ip:192.0.2.1`,
 * `user:alice`); a store may partition by kind. All methods take the whole
 * batch so a remote store can answer in one round trip.
 */
export interface ThrottleStore {
  /**
   * Adds one failure at `now` to each key and returns the new counts, in
   * order. A key whose last failure is `windowMs` or more before `now`
   * starts again at 1.
   */
  increment(keys: readonly string[], now: number, windowMs: number): Promise<number[]>;
  /** Current counts, in order; 0 for unknown or expired keys. */
  counts(keys: readonly string[], now: number, windowMs: number): Promise<number[]>;
  /** Forgets the keys. */
  reset(keys: readonly string[]): Promise<void>;
  close?(): Promise<void>;
}

/** What isBlocked() read: the decision, and the user's count when it was read. */
export interface ThrottleCheck {
  readonly blocked: boolean;
  /** The user's counter key and its count as read (absent when no count was read). */
  readonly userKey?: string;
  readonly userFailures?: number;
}

interface Counter {
  count: number;
  last: number;
}

/** In-process ThrottleStore; at most `maxPerKind` keys per kind (the part before the first ':'). */
export class MemoryThrottleStore implements ThrottleStore {
  readonly maxPerKind: number;
  /** kind → key → counter; each inner map is ordered by last failure, oldest first */
  readonly #kinds = new Map<string, Map<string, Counter>>();

  constructor(maxPerKind = 50_000) {
    if (!Number.isInteger(maxPerKind) || maxPerKind < 1) throw new RangeError('maxPerKind must be a positive integer');
    this.maxPerKind = maxPerKind;
  }

  /** Keys currently held (all kinds). */
  get size(): number {
    let n = 0;
    for (const m of this.#kinds.values()) n += m.size;
    return n;
  }

  async increment(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    return keys.map((key) => {
      const map = this.#map(key, true);
      const c = map.get(key);
      const count = c !== undefined && now - c.last < windowMs ? c.count + 1 : 1;
      // delete + set moves the key to the end: the map stays ordered by last failure
      map.delete(key);
      map.set(key, { count, last: now });
      this.#trim(map, now, windowMs);
      return count;
    });
  }

  async counts(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    return keys.map((key) => {
      const c = this.#map(key, false)?.get(key);
      return c !== undefined && now - c.last < windowMs ? c.count : 0;
    });
  }

  async reset(keys: readonly string[]): Promise<void> {
    for (const key of keys) this.#map(key, false)?.delete(key);
  }

  #map(key: string, create: true): Map<string, Counter>;
  #map(key: string, create: false): Map<string, Counter> | undefined;
  #map(key: string, create: boolean): Map<string, Counter> | undefined {
    const colon = key.indexOf(':');
    const kind = colon < 0 ? '' : key.slice(0, colon);
    let m = this.#kinds.get(kind);
    if (!m && create) {
      m = new Map();
      this.#kinds.set(kind, m);
    }
    return m;
  }

  #trim(map: Map<string, Counter>, now: number, windowMs: number): void {
    // expired keys sit at the front; drop them, then the oldest while over the cap
    for (const [k, c] of map) {
      if (map.size > this.maxPerKind || now - c.last >= windowMs) map.delete(k);
      else break;
    }
  }
}

/**
 * The longest of the last few login decisions (ms from the client's line to
 * "yes" or "no"): how long the slowest verification takes here and now. Every
 * failure is answered no sooner than this after its attempt started, so a
 * wrong password for a user with a cheap scheme and an unknown user (a dummy
 * argon2id) cannot be told apart by timing, even with no failure delay.
 */
export class RecentMaximum {
  readonly #values: Float64Array;
  readonly #capMs: number;
  #next = 0;

  constructor(size = 64, capMs = 60_000) {
    this.#values = new Float64Array(size);
    this.#capMs = capMs;
  }

  note(ms: number): void {
    this.#values[this.#next] = Math.min(Math.max(0, ms), this.#capMs);
    this.#next = (this.#next + 1) % this.#values.length;
  }

  get value(): number {
    let m = 0;
    for (const v of this.#values) if (v > m) m = v;
    return m;
  }
}

export interface LoginThrottleOptions {
  /** Delay after the first failure; default 2000 ms (the old fixed auth_failure_delay). */
  readonly baseDelayMs?: number | undefined;
  /** Upper bound of the delay; default 30000 ms. */
  readonly maxDelayMs?: number | undefined;
  /** A key is forgotten after this long without a failure; default 900000 ms (15 min). */
  readonly windowMs?: number | undefined;
  /** Keys per kind kept by the default MemoryThrottleStore; default 50000. */
  readonly maxTracked?: number | undefined;
  /** Failures from one address (or IPv6 prefix) within the window after which it is blocked; default 100; 0 disables. */
  readonly ipBlockAfter?: number | undefined;
  /** Failures for one user name within the window after which it is blocked; default 0 (disabled). */
  readonly userBlockAfter?: number | undefined;
  /** IPv6 addresses are counted per prefix of this length; default 64. */
  readonly ipv6PrefixLength?: number | undefined;
  /** IPv4 addresses are counted per prefix of this length; default 32 (each address). */
  readonly ipv4PrefixLength?: number | undefined;
  /** Default: a new MemoryThrottleStore(maxTracked). */
  readonly store?: ThrottleStore | undefined;
  /** Clock in ms; default Date.now. */
  readonly now?: (() => number) | undefined;
}

export const THROTTLE_DEFAULTS = Object.freeze({
  baseDelayMs: 2_000,
  maxDelayMs: 30_000,
  windowMs: 15 * 60_000,
  maxTracked: 50_000,
  ipBlockAfter: 100,
  userBlockAfter: 0,
  ipv6PrefixLength: 64,
  ipv4PrefixLength: 32,
});

const MAX_KEY_VALUE = 128;

export class LoginThrottle {
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  readonly windowMs: number;
  readonly ipBlockAfter: number;
  readonly userBlockAfter: number;
  readonly ipv6PrefixLength: number;
  readonly ipv4PrefixLength: number;
  readonly store: ThrottleStore;
  readonly #now: () => number;

  constructor(options: LoginThrottleOptions = {}) {
    const d = THROTTLE_DEFAULTS;
    this.baseDelayMs = options.baseDelayMs ?? d.baseDelayMs;
    this.maxDelayMs = options.maxDelayMs ?? d.maxDelayMs;
    this.windowMs = options.windowMs ?? d.windowMs;
    this.ipBlockAfter = options.ipBlockAfter ?? d.ipBlockAfter;
    this.userBlockAfter = options.userBlockAfter ?? d.userBlockAfter;
    this.ipv6PrefixLength = options.ipv6PrefixLength ?? d.ipv6PrefixLength;
    this.ipv4PrefixLength = options.ipv4PrefixLength ?? d.ipv4PrefixLength;
    if (!(this.baseDelayMs >= 0) || !(this.maxDelayMs >= this.baseDelayMs)) throw new RangeError('need 0 <= baseDelayMs <= maxDelayMs');
    if (!(this.windowMs > 0)) throw new RangeError('windowMs must be positive');
    if (!Number.isInteger(this.ipv6PrefixLength) || this.ipv6PrefixLength < 1 || this.ipv6PrefixLength > 128) {
      throw new RangeError('ipv6PrefixLength must be in 1..128');
    }
    if (!Number.isInteger(this.ipv4PrefixLength) || this.ipv4PrefixLength < 1 || this.ipv4PrefixLength > 32) {
      throw new RangeError('ipv4PrefixLength must be in 1..32');
    }
    this.store = options.store ?? new MemoryThrottleStore(options.maxTracked ?? d.maxTracked);
    this.#now = options.now ?? Date.now;
  }

  /** Counts one failed login and returns the delay (ms) to wait before answering it. */
  async recordFailure(ip: string, username: string): Promise<number> {
    const counts = await this.store.increment(this.#keys(ip, username), this.#now(), this.windowMs);
    return this.#delay(Math.max(0, ...counts));
  }

  /**
   * The delay (ms) before answering a failure for this address and user now:
   * the delay for the current count, at least baseDelayMs. After
   * recordFailure() it equals what recordFailure() returned.
   */
  async delayFor(ip: string, username: string): Promise<number> {
    const counts = await this.store.counts(this.#keys(ip, username), this.#now(), this.windowMs);
    return this.#delay(Math.max(0, ...counts));
  }

  /**
   * A successful login clears the user's counter (the address keeps its
   * count). With `checked`, what check() read for this login: when that
   * showed no failures for this user, there is nothing to clear and the
   * store is not asked (a shared store saves a round trip per login).
   */
  async recordSuccess(_ip: string, username: string, checked?: ThrottleCheck): Promise<void> {
    const key = this.#userKey(username);
    if (key === undefined) return;
    if (checked !== undefined && checked.userKey === key && checked.userFailures === 0) return;
    await this.store.reset([key]);
  }

  /** True when logins from this address, or for this user, are to be refused without checking credentials. */
  async isBlocked(ip: string, username: string): Promise<boolean> {
    return (await this.check(ip, username)).blocked;
  }

  /** isBlocked() with the user's count it read, for recordSuccess(). */
  async check(ip: string, username: string): Promise<ThrottleCheck> {
    if (this.ipBlockAfter <= 0 && this.userBlockAfter <= 0) return { blocked: false };
    const ipKey = this.#ipKey(ip);
    const userKey = this.#userKey(username);
    const [ipCount = 0, userCount = 0] = await this.store.counts(userKey === undefined ? [ipKey] : [ipKey, userKey], this.#now(), this.windowMs);
    const blocked = (this.ipBlockAfter > 0 && ipCount >= this.ipBlockAfter) || (this.userBlockAfter > 0 && userCount >= this.userBlockAfter);
    return userKey === undefined ? { blocked } : { blocked, userKey, userFailures: userCount };
  }

  async close(): Promise<void> {
    await this.store.close?.();
  }

  /** The counter key for an address (exposed for tests and a shared store's housekeeping). */
  ipKey(ip: string): string {
    return this.#ipKey(ip);
  }

  #delay(failures: number): number {
    const n = Math.max(1, failures);
    return Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** Math.min(n - 1, 52));
  }

  #keys(ip: string, username: string): string[] {
    const u = this.#userKey(username);
    return u === undefined ? [this.#ipKey(ip)] : [this.#ipKey(ip), u];
  }

  #ipKey(ip: string): string {
    return `ip:${normalizeAddress(ip, this.ipv6PrefixLength, this.ipv4PrefixLength)}`;
  }

  #userKey(username: string): string | undefined {
    if (username === '') return undefined;
    return `user:${compact(username.toLowerCase())}`;
  }
}

function compact(v: string): string {
  return v.length <= MAX_KEY_VALUE ? v : `#${createHash('sha256').update(v, 'utf8').digest('base64url')}`;
}

/**
 * The key a client address is counted under: IPv4 (and IPv4-mapped IPv6) as
 * the address, or `network/len` when `ipv4PrefixLength` < 32; other IPv6
 * reduced to `prefix/len` in canonical hex groups. Anything else is kept
 * (hashed when long).
 */
export function normalizeAddress(address: string, ipv6PrefixLength = 64, ipv4PrefixLength = 32): string {
  let a = address.trim();
  const pct = a.indexOf('%');
  if (pct >= 0) a = a.slice(0, pct);
  if (a.startsWith('[') && a.endsWith(']')) a = a.slice(1, -1);
  if (isIPv4(a)) return ipv4Key(a.split('.').map(Number), ipv4PrefixLength);
  if (!isIPv6(a)) return compact(a.toLowerCase());
  const groups = expandIPv6(a);
  if (groups === undefined) return compact(a.toLowerCase());
  // ::ffff:a.b.c.d
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    const hi = groups[6] ?? 0;
    const lo = groups[7] ?? 0;
    return ipv4Key([hi >> 8, hi & 255, lo >> 8, lo & 255], ipv4PrefixLength);
  }
  const masked = groups.map((g, i) => {
    const bitsBefore = i * 16;
    if (bitsBefore >= ipv6PrefixLength) return 0;
    const keep = Math.min(16, ipv6PrefixLength - bitsBefore);
    return keep === 16 ? g : g & ((0xffff << (16 - keep)) & 0xffff);
  });
  return `${masked.map((g) => g.toString(16)).join(':')}/${ipv6PrefixLength}`;
}

function ipv4Key(octets: number[], prefixLength: number): string {
  if (prefixLength >= 32) return octets.join('.');
  const n = octets.reduce((acc, o) => acc * 256 + o, 0);
  // Plain arithmetic: JavaScript's bitwise operators are signed 32-bit.
  const net = n - (n % 2 ** (32 - prefixLength));
  return `${[24, 16, 8, 0].map((shift) => Math.floor(net / 2 ** shift) % 256).join('.')}/${prefixLength}`;
}

function expandIPv6(a: string): number[] | undefined {
  let s = a.toLowerCase();
  // trailing dotted IPv4
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  if (tail.includes('.')) {
    if (!isIPv4(tail)) return undefined;
    const [p0 = 0, p1 = 0, p2 = 0, p3 = 0] = tail.split('.').map(Number);
    s = `${s.slice(0, lastColon + 1)}${((p0 << 8) | p1).toString(16)}:${((p2 << 8) | p3).toString(16)}`;
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const parse = (part: string | undefined): number[] => (part === undefined || part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const head = parse(halves[0]);
  const rest = parse(halves[1]);
  const fill = halves.length === 2 ? 8 - head.length - rest.length : 0;
  const groups = [...head, ...new Array<number>(Math.max(0, fill)).fill(0), ...rest];
  if (groups.length !== 8 || groups.some((g) => !Number.isInteger(g) || g < 0 || g > 0xffff)) return undefined;
  return groups;
}
