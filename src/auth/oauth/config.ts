import { z } from 'zod';

/**
 * JWS algorithms a token may be signed with. Only asymmetric algorithms: a
 * JWKS holds public keys, and HS* with a published key would be forgeable.
 */
export const OAUTH_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;
export type OAuthAlgorithm = (typeof OAUTH_ALGORITHMS)[number];

const stringOrList = z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]);
const httpUrl = z.url({ protocol: /^https?$/, error: 'expected an http:// or https:// URL' });

/**
 * The `[auth.oauth]` section. Exactly one of `jwks_url`, `jwks_file` and
 * `introspection_url` selects the verification mode. Durations are seconds.
 */
export const OAuthConfigSchema = z
  .object({
    /** Local JWT verification with keys fetched from this JWKS URL (refetched on an unknown `kid`). */
    jwks_url: httpUrl.optional(),
    /** Local JWT verification with keys from this JWKS file (re-read when it changes). */
    jwks_file: z.string().min(1).optional(),
    /** Expected `iss`; a token must match one of them. */
    issuer: stringOrList,
    /** Expected `aud`; a token must contain one of them. */
    audience: stringOrList,
    /** Claim that names the user; default `email` for JWTs and `username` for introspection. */
    user_claim: z.string().min(1).optional(),
    /** Allowed JWS algorithms (JWT mode); default: all of OAUTH_ALGORITHMS. */
    algorithms: z.array(z.enum(OAUTH_ALGORITHMS)).min(1).optional(),
    /** Seconds of clock skew tolerated for exp/nbf/iat; default 30. */
    clock_tolerance: z.number().nonnegative().max(600).optional(),
    /** RFC 7662 introspection endpoint. */
    introspection_url: httpUrl.optional(),
    client_id: z.string().min(1).optional(),
    client_secret: z.string().min(1).optional(),
    /** Introspection results kept in memory; default 10000. */
    cache_size: z.number().int().nonnegative().max(10_000_000).optional(),
    /** Seconds allowed for one HTTP request to the JWKS or introspection endpoint; default 5. */
    timeout: z.number().positive().max(300).optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    const modes = [c.jwks_url, c.jwks_file, c.introspection_url].filter((m) => m !== undefined).length;
    if (modes !== 1) {
      ctx.addIssue({ code: 'custom', message: 'set exactly one of jwks_url, jwks_file and introspection_url' });
    }
    if (c.introspection_url !== undefined) {
      if (c.client_id === undefined) ctx.addIssue({ code: 'custom', path: ['client_id'], message: 'introspection needs client_id' });
      if (c.client_secret === undefined) ctx.addIssue({ code: 'custom', path: ['client_secret'], message: 'introspection needs client_secret' });
      if (c.algorithms !== undefined) ctx.addIssue({ code: 'custom', path: ['algorithms'], message: 'algorithms only applies to jwks_url / jwks_file' });
    }
  });

/**
 * The options OAuthAuthenticator takes: the parsed `[auth.oauth]` section
 * (`z.output<typeof OAuthConfigSchema>` is assignable to it).
 */
export interface OAuthOptions {
  readonly jwks_url?: string | undefined;
  readonly jwks_file?: string | undefined;
  readonly issuer: string | readonly string[];
  readonly audience: string | readonly string[];
  readonly user_claim?: string | undefined;
  readonly algorithms?: readonly string[] | undefined;
  readonly clock_tolerance?: number | undefined;
  readonly introspection_url?: string | undefined;
  readonly client_id?: string | undefined;
  readonly client_secret?: string | undefined;
  readonly cache_size?: number | undefined;
  readonly timeout?: number | undefined;
}

export type OAuthConfig = z.output<typeof OAuthConfigSchema>;

export const OAUTH_DEFAULTS = Object.freeze({
  jwtUserClaim: 'email',
  introspectionUserClaim: 'username',
  clockTolerance: 30,
  cacheSize: 10_000,
  timeout: 5,
});
