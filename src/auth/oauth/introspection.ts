/**
 * RFC 7662 token introspection with a bounded in-memory cache.
 *
 * Positive answers are cached until the token's `exp` (never longer); answers
 * without `exp`, and negative answers, for `negativeTtlMs`. Cache keys are
 * SHA-256 digests, so raw tokens are not kept around. Concurrent lookups of
 * one token share one request.
 */
import { createHash } from 'node:crypto';
import { raceAbort } from './abort.js';

/** The introspection endpoint could not give an answer. */
export class IntrospectionUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'IntrospectionUnavailable';
  }
}

export type IntrospectionVerdict =
  | { readonly active: true; readonly claims: Readonly<Record<string, unknown>> }
  | { readonly active: false; readonly reason: string };

export interface IntrospectorOptions {
  readonly url: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly issuer: string | readonly string[];
  readonly audience: string | readonly string[];
  /** seconds of tolerance for exp / nbf */
  readonly clockTolerance: number;
  readonly timeoutMs: number;
  /** entries; 0 disables caching */
  readonly cacheSize: number;
  readonly negativeTtlMs: number;
  readonly now: () => number;
}

interface CacheEntry {
  readonly verdict: IntrospectionVerdict;
  readonly until: number;
}

/** RFC 6749 §2.3.1: client id and secret are form-encoded before Basic encoding. */
function basicAuth(id: string, secret: string): string {
  const enc = (s: string): string => new URLSearchParams({ v: s }).toString().slice(2);
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`, 'utf8').toString('base64')}`;
}

function asList(v: string | readonly string[]): readonly string[] {
  return typeof v === 'string' ? [v] : v;
}

export class Introspector {
  readonly #o: IntrospectorOptions;
  readonly #auth: string;
  readonly #cache = new Map<string, CacheEntry>();
  readonly #inflight = new Map<string, Promise<IntrospectionVerdict>>();
  /** Requests sent to the endpoint (for metrics and tests). */
  requests = 0;

  constructor(options: IntrospectorOptions) {
    this.#o = options;
    this.#auth = basicAuth(options.clientId, options.clientSecret);
  }

  get cacheEntries(): number {
    return this.#cache.size;
  }

  async introspect(token: string, signal?: AbortSignal): Promise<IntrospectionVerdict> {
    signal?.throwIfAborted();
    const key = createHash('sha256').update(token, 'utf8').digest('base64url');
    const now = this.#o.now();
    const hit = this.#cache.get(key);
    if (hit) {
      if (hit.until > now) {
        // refresh LRU position
        this.#cache.delete(key);
        this.#cache.set(key, hit);
        return this.#recheck(hit.verdict, now);
      }
      this.#cache.delete(key);
    }
    let pending = this.#inflight.get(key);
    if (!pending) {
      pending = this.#fetch(token).then(
        (v) => {
          this.#remember(key, v);
          return v;
        },
      ).finally(() => this.#inflight.delete(key));
      this.#inflight.set(key, pending);
    }
    return raceAbort(pending, signal);
  }

  /** A cached positive answer is re-validated against the clock (exp may have passed within the TTL granularity). */
  #recheck(v: IntrospectionVerdict, now: number): IntrospectionVerdict {
    return v.active ? this.#judge(v.claims, now) : v;
  }

  #remember(key: string, v: IntrospectionVerdict): void {
    if (this.#o.cacheSize <= 0) return;
    const now = this.#o.now();
    let until = now + this.#o.negativeTtlMs;
    if (v.active) {
      const exp = v.claims['exp'];
      if (typeof exp === 'number') until = exp * 1000;
    }
    if (until <= now) return;
    this.#cache.delete(key);
    this.#cache.set(key, { verdict: v, until });
    if (this.#cache.size > this.#o.cacheSize) {
      // drop expired entries first, then the least recently used
      for (const [k, e] of this.#cache) {
        if (e.until <= now) this.#cache.delete(k);
      }
      while (this.#cache.size > this.#o.cacheSize) {
        const oldest = this.#cache.keys().next();
        if (oldest.done) break;
        this.#cache.delete(oldest.value);
      }
    }
  }

  async #fetch(token: string): Promise<IntrospectionVerdict> {
    this.requests++;
    let res: Response;
    try {
      res = await fetch(this.#o.url, {
        method: 'POST',
        redirect: 'manual',
        headers: {
          authorization: this.#auth,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(),
        signal: AbortSignal.timeout(this.#o.timeoutMs),
      });
    } catch (e) {
      throw new IntrospectionUnavailable(
        (e as { name?: unknown } | null)?.name === 'TimeoutError' ? 'introspection request timed out' : 'introspection request failed',
        { cause: e },
      );
    }
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => undefined);
      throw new IntrospectionUnavailable(`introspection endpoint answered HTTP ${res.status}`);
    }
    let body: unknown;
    try {
      body = await res.json();
    } catch (e) {
      throw new IntrospectionUnavailable('introspection endpoint sent invalid JSON', { cause: e });
    }
    if (body === null || typeof body !== 'object' || Array.isArray(body) || typeof (body as Record<string, unknown>)['active'] !== 'boolean') {
      throw new IntrospectionUnavailable('introspection response lacks a boolean "active"');
    }
    const claims = body as Record<string, unknown>;
    if (claims['active'] !== true) return { active: false, reason: 'inactive' };
    return this.#judge(claims, this.#o.now());
  }

  /** Checks exp, nbf, iss and aud of an active token. iss and aud are checked when the endpoint returns them. */
  #judge(claims: Record<string, unknown>, now: number): IntrospectionVerdict {
    const tol = this.#o.clockTolerance * 1000;
    const exp = claims['exp'];
    if (exp !== undefined && (typeof exp !== 'number' || exp * 1000 <= now - tol)) return { active: false, reason: 'expired' };
    const nbf = claims['nbf'];
    if (nbf !== undefined && (typeof nbf !== 'number' || nbf * 1000 > now + tol)) return { active: false, reason: 'not yet valid' };
    const iss = claims['iss'];
    if (iss !== undefined && (typeof iss !== 'string' || !asList(this.#o.issuer).includes(iss))) return { active: false, reason: 'issuer' };
    const aud = claims['aud'];
    if (aud !== undefined) {
      const auds = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
      const wanted = asList(this.#o.audience);
      if (!auds.some((a) => typeof a === 'string' && wanted.includes(a))) return { active: false, reason: 'audience' };
    }
    return { active: true, claims };
  }
}
