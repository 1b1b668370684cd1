import { TemporaryFailure } from '../../errors.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal } from '../types.js';
import { raceAbort } from './abort.js';
import { OAUTH_ALGORITHMS, OAUTH_DEFAULTS } from './config.js';
import type { OAuthOptions } from './config.js';
import { IntrospectionUnavailable, Introspector } from './introspection.js';
import { BackendUnavailable, JwksFile, remoteKeyResolver, verifyJwt } from './jwt.js';
import type { JwtCheckOptions } from './jwt.js';

/** Knobs that are not part of the config file. */
export interface OAuthRuntimeOptions {
  /** Receives one line per rejected token (the reason, never the token) and per backend problem. */
  readonly logger?: ((message: string) => void) | undefined;
  /** Clock in ms since the epoch, for exp/nbf and the introspection cache. Default Date.now. */
  readonly now?: (() => number) | undefined;
  /** JWKS URL: ms after a fetch during which an unknown `kid` does not cause a refetch. Default 30000. */
  readonly jwksCooldownMs?: number | undefined;
  /** JWKS URL: ms after which the key set is refetched anyway. Default 600000. */
  readonly jwksCacheMaxAgeMs?: number | undefined;
  /** Introspection: how long inactive answers (and active ones without `exp`) are cached. Default 30000. */
  readonly negativeCacheTtlMs?: number | undefined;
  /** Longer tokens are refused without looking at them. Default 16384 characters. */
  readonly maxTokenLength?: number | undefined;
}

type Mode =
  | { readonly kind: 'jwt'; readonly resolve: Parameters<typeof verifyJwt>[1]; readonly check: JwtCheckOptions }
  | { readonly kind: 'introspection'; readonly introspector: Introspector };

const TOKEN_RE = /^[\x21-\x7e]+$/;

/**
 * Bearer-token authentication (XOAUTH2 / OAUTHBEARER).
 *
 * The token must name the user in `user_claim`; the comparison with the login
 * name is case-insensitive and covers the whole value. The principal's name is
 * the claim value as issued, so every spelling of a login name reaches the same
 * mailbox. An empty login name (OAUTHBEARER without authzid) takes the claim.
 *
 * - Bad, expired, foreign or mismatched tokens → null.
 * - JWKS or introspection endpoint unavailable → TemporaryFailure.
 * - Password credentials → null (this backend knows no passwords).
 */
export class OAuthAuthenticator implements Authenticator {
  readonly mode: 'jwt' | 'introspection';
  readonly #mode: Mode;
  readonly #userClaim: string;
  readonly #logger: ((message: string) => void) | undefined;
  readonly #maxTokenLength: number;
  readonly #introspector: Introspector | undefined;

  constructor(options: OAuthOptions, runtime: OAuthRuntimeOptions = {}) {
    const now = runtime.now ?? Date.now;
    const timeoutMs = (options.timeout ?? OAUTH_DEFAULTS.timeout) * 1000;
    const clockTolerance = options.clock_tolerance ?? OAUTH_DEFAULTS.clockTolerance;
    this.#logger = runtime.logger;
    this.#maxTokenLength = runtime.maxTokenLength ?? 16_384;
    const modes = [options.jwks_url, options.jwks_file, options.introspection_url].filter((m) => m !== undefined);
    if (modes.length !== 1) throw new TypeError('OAuth: set exactly one of jwks_url, jwks_file and introspection_url');

    if (options.introspection_url !== undefined) {
      if (options.client_id === undefined || options.client_secret === undefined) {
        throw new TypeError('OAuth introspection needs client_id and client_secret');
      }
      this.#introspector = new Introspector({
        url: options.introspection_url,
        clientId: options.client_id,
        clientSecret: options.client_secret,
        issuer: options.issuer,
        audience: options.audience,
        clockTolerance,
        timeoutMs,
        cacheSize: options.cache_size ?? OAUTH_DEFAULTS.cacheSize,
        negativeTtlMs: runtime.negativeCacheTtlMs ?? 30_000,
        now,
      });
      this.#mode = { kind: 'introspection', introspector: this.#introspector };
      this.#userClaim = options.user_claim ?? OAUTH_DEFAULTS.introspectionUserClaim;
    } else {
      const algorithms = options.algorithms ?? OAUTH_ALGORITHMS;
      for (const a of algorithms) {
        if (!(OAUTH_ALGORITHMS as readonly string[]).includes(a)) throw new TypeError(`OAuth: algorithm ${a} is not allowed`);
      }
      const resolve =
        options.jwks_url !== undefined
          ? remoteKeyResolver(options.jwks_url, {
              timeoutMs,
              cooldownMs: runtime.jwksCooldownMs ?? 30_000,
              cacheMaxAgeMs: runtime.jwksCacheMaxAgeMs ?? 600_000,
            })
          : new JwksFile(options.jwks_file ?? '', runtime.logger).resolve;
      this.#mode = {
        kind: 'jwt',
        resolve,
        check: { issuer: options.issuer, audience: options.audience, algorithms, clockTolerance, now },
      };
      this.#userClaim = options.user_claim ?? OAUTH_DEFAULTS.jwtUserClaim;
    }
    this.mode = this.#mode.kind;
  }

  /** Requests sent to the introspection endpoint so far (0 in JWT mode). */
  get introspectionRequests(): number {
    return this.#introspector?.requests ?? 0;
  }

  async authenticate(c: Credentials, _conn: ConnectionInfo, signal?: AbortSignal): Promise<Principal | null> {
    signal?.throwIfAborted();
    if (c.kind !== 'bearer') return null;
    const { token, username } = c;
    if (token.length === 0 || token.length > this.#maxTokenLength || !TOKEN_RE.test(token)) return this.#reject(username, 'malformed token');
    if (/[\r\n\0]/.test(username)) return null;

    let claims: Readonly<Record<string, unknown>>;
    const mode = this.#mode;
    if (mode.kind === 'jwt') {
      let verdict;
      try {
        verdict = await raceAbort(verifyJwt(token, mode.resolve, mode.check), signal);
      } catch (e) {
        throw this.#backendError(e, signal);
      }
      if (!verdict.ok) return this.#reject(username, verdict.reason);
      claims = verdict.payload;
    } else {
      let verdict;
      try {
        verdict = await mode.introspector.introspect(token, signal);
      } catch (e) {
        throw this.#backendError(e, signal);
      }
      if (!verdict.active) return this.#reject(username, verdict.reason);
      claims = verdict.claims;
    }

    const named = claims[this.#userClaim];
    if (typeof named !== 'string' || named === '') return this.#reject(username, `no "${this.#userClaim}" claim`);
    if (username !== '' && named.toLowerCase() !== username.toLowerCase()) return this.#reject(username, `"${this.#userClaim}" names another user`);
    return { username: named };
  }

  async close(): Promise<void> {
    // nothing held open: fetch keeps no connection we own
  }

  #reject(username: string, reason: string): null {
    this.#logger?.(`oauth: token for ${JSON.stringify(username)} rejected: ${reason}`);
    return null;
  }

  #backendError(e: unknown, signal: AbortSignal | undefined): unknown {
    if (signal?.aborted) return signal.reason;
    if (e instanceof BackendUnavailable || e instanceof IntrospectionUnavailable) {
      const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
      this.#logger?.(`oauth: ${e.message}${cause}`);
      return new TemporaryFailure('authentication backend unavailable', { cause: e });
    }
    this.#logger?.(`oauth: unexpected error: ${e instanceof Error ? e.message : String(e)}`);
    return new TemporaryFailure('authentication backend unavailable', { cause: e });
  }
}
