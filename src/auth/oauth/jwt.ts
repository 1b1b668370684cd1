/**
 * Local verification of JWT access tokens against a JWKS (URL or file).
 *
 * Errors are sorted into two kinds:
 * - the token is bad (signature, claims, unknown key, disallowed alg): `TokenRejected`
 * - the keys cannot be obtained (JWKS unreachable, timeout, non-200, malformed
 *   set, unreadable file): `BackendUnavailable`, which becomes SYS/TEMP.
 */
import { stat, readFile } from 'node:fs/promises';
import { createLocalJWKSet, createRemoteJWKSet, errors, jwtVerify } from 'jose';
import type { CompactJWSHeaderParameters, CryptoKey, FlattenedJWSInput, JWTPayload, JWTVerifyOptions } from 'jose';

/** The key source could not be used; the token has not been judged. */
export class BackendUnavailable extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'BackendUnavailable';
  }
}

type KeyResolver = (header: CompactJWSHeaderParameters, token: FlattenedJWSInput) => Promise<CryptoKey>;

/** Errors from a key lookup that are the token's fault, not the key source's. */
function isTokenKeyError(e: unknown): boolean {
  return e instanceof errors.JWKSNoMatchingKey || e instanceof errors.JWKSMultipleMatchingKeys || e instanceof errors.JOSENotSupported;
}

export interface RemoteJwksOptions {
  /** ms for one JWKS request */
  readonly timeoutMs: number;
  /** ms after a successful fetch during which an unknown `kid` does not trigger a refetch */
  readonly cooldownMs: number;
  /** ms after which the set is refetched even if every `kid` is known */
  readonly cacheMaxAgeMs: number;
}

export function remoteKeyResolver(url: string, options: RemoteJwksOptions): KeyResolver {
  const jwks = createRemoteJWKSet(new URL(url), {
    timeoutDuration: Math.max(1, Math.round(options.timeoutMs)),
    cooldownDuration: options.cooldownMs,
    cacheMaxAge: options.cacheMaxAgeMs,
  });
  return async (header, token) => {
    try {
      return await jwks(header, token);
    } catch (e) {
      if (isTokenKeyError(e)) throw e;
      throw new BackendUnavailable('JWKS endpoint unavailable', { cause: e });
    }
  };
}

/**
 * A JWKS file, re-read whenever its inode, size or mtime changes. A file that
 * becomes unreadable or invalid after a good read keeps the last good set
 * (and is reported once per version); one never read successfully is a
 * BackendUnavailable.
 */
export class JwksFile {
  readonly path: string;
  readonly #logger: ((message: string) => void) | undefined;
  #version: string | undefined;
  #badVersion: string | undefined;
  #local: ReturnType<typeof createLocalJWKSet> | undefined;
  #pending: Promise<void> | undefined;

  constructor(path: string, logger?: (message: string) => void) {
    this.path = path;
    this.#logger = logger;
  }

  readonly resolve: KeyResolver = async (header, token) => {
    await this.refresh();
    const local = this.#local;
    if (!local) throw new BackendUnavailable(`JWKS file ${this.path} could not be loaded`);
    return local(header, token);
  };

  /** Re-reads the file if it changed. Concurrent callers share one read. */
  refresh(): Promise<void> {
    this.#pending ??= this.#refresh().finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  async #refresh(): Promise<void> {
    let version: string;
    try {
      const st = await stat(this.path);
      version = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
    } catch (e) {
      this.#fail('unknown', e);
      return;
    }
    if (version === this.#version || version === this.#badVersion) return;
    try {
      const json: unknown = JSON.parse(await readFile(this.path, 'utf8'));
      this.#local = createLocalJWKSet(json as Parameters<typeof createLocalJWKSet>[0]);
      this.#version = version;
      this.#badVersion = undefined;
    } catch (e) {
      this.#fail(version, e);
    }
  }

  #fail(version: string, e: unknown): void {
    if (this.#local === undefined) throw new BackendUnavailable(`JWKS file ${this.path} could not be loaded`, { cause: e });
    if (version !== this.#badVersion) {
      this.#badVersion = version;
      this.#logger?.(`JWKS file ${this.path}: ${e instanceof Error ? e.message : String(e)}; keeping the previous keys`);
    }
  }
}

export interface JwtCheckOptions {
  readonly issuer: string | readonly string[];
  readonly audience: string | readonly string[];
  readonly algorithms: readonly string[];
  /** seconds */
  readonly clockTolerance: number;
  readonly now: () => number;
}

export type JwtVerdict = { readonly ok: true; readonly payload: JWTPayload } | { readonly ok: false; readonly reason: string };

/**
 * Verifies signature and claims (iss, aud, exp required; nbf when present).
 * Returns a verdict for token problems; throws BackendUnavailable when the
 * keys could not be obtained.
 */
export async function verifyJwt(token: string, resolve: KeyResolver, o: JwtCheckOptions): Promise<JwtVerdict> {
  const options: JWTVerifyOptions = {
    issuer: typeof o.issuer === 'string' ? o.issuer : [...o.issuer],
    audience: typeof o.audience === 'string' ? o.audience : [...o.audience],
    algorithms: [...o.algorithms],
    clockTolerance: o.clockTolerance,
    currentDate: new Date(o.now()),
    requiredClaims: ['exp'],
  };
  try {
    return { ok: true, payload: (await jwtVerify(token, resolve, options)).payload };
  } catch (e) {
    if (e instanceof BackendUnavailable) throw e;
    if (e instanceof errors.JWKSMultipleMatchingKeys) return tryEachKey(token, e, options);
    return { ok: false, reason: describe(e) };
  }
}

/** No `kid` and several keys of the right type (e.g. during a rotation): try each one. */
async function tryEachKey(token: string, candidates: errors.JWKSMultipleMatchingKeys, options: JWTVerifyOptions): Promise<JwtVerdict> {
  for await (const key of candidates as unknown as AsyncIterable<CryptoKey>) {
    try {
      return { ok: true, payload: (await jwtVerify(token, key, options)).payload };
    } catch (e) {
      if (e instanceof errors.JWSSignatureVerificationFailed) continue;
      return { ok: false, reason: describe(e) };
    }
  }
  return { ok: false, reason: 'signature verification failed' };
}

function describe(e: unknown): string {
  if (e instanceof errors.JOSEError) return e.code;
  return e instanceof Error ? e.name : 'error';
}
