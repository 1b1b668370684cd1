/**
 * The `[oauth2]` table of a fetch account, and of an IMAP sink: where its
 * OAuth 2.0 access tokens come from (credentials.ts gets them).
 */
import { z } from 'zod';

const nonEmpty = z.string().min(1);

export const OAuth2Schema = z
  .object({
    /** A command that prints a current access token (first line of stdout). */
    token_command: nonEmpty.optional(),
    /** Built-in endpoints and scopes (oauth-presets.ts); every one can be overridden below. */
    provider: z.enum(['google', 'microsoft']).optional(),
    /** Microsoft: the directory (tenant) in the endpoints; default `common`. */
    tenant: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,128}$/, 'a tenant name or ID such as "common", "consumers" or "contoso.onmicrosoft.com"')
      .optional(),
    /** Token endpoint for the refresh-token grant (RFC 6749 §6) and for sign-in. */
    token_endpoint: z.url({ protocol: /^https?$/ }).optional(),
    /** Sign-in (`poplar fetch authorize`): the authorization endpoint (browser flow) and the device authorization endpoint (RFC 8628). */
    authorization_endpoint: z.url({ protocol: /^https?$/ }).optional(),
    device_authorization_endpoint: z.url({ protocol: /^https?$/ }).optional(),
    /** Sign-in flow when neither --device nor --browser is given. */
    flow: z.enum(['device', 'browser']).optional(),
    /** Host name of the loopback redirect URI (`http://HOST:PORT/`) the app registration expects. */
    redirect_host: z.enum(['127.0.0.1', 'localhost']).optional(),
    client_id: nonEmpty.optional(),
    client_secret: nonEmpty.optional(),
    client_secret_env: nonEmpty.optional(),
    client_secret_command: nonEmpty.optional(),
    refresh_token: nonEmpty.optional(),
    refresh_token_env: nonEmpty.optional(),
    refresh_token_command: nonEmpty.optional(),
    scope: nonEmpty.optional(),
    /** Default: OAUTHBEARER when the server offers it, else XOAUTH2. */
    mechanism: z.enum(['XOAUTH2', 'OAUTHBEARER']).optional(),
  })
  .strict()
  .superRefine((o, ctx) => {
    const viaEndpoint = o.token_endpoint !== undefined || o.provider !== undefined;
    if ((o.token_command !== undefined) === viaEndpoint) ctx.addIssue({ code: 'custom', message: 'set exactly one of token_command and token_endpoint (or provider)' });
    if (viaEndpoint) {
      if (o.client_id === undefined) ctx.addIssue({ code: 'custom', message: 'token_endpoint needs client_id' });
      // None: the refresh token comes from `poplar fetch authorize`, kept in the token cache.
      const n = ['refresh_token', 'refresh_token_env', 'refresh_token_command'].filter((k) => (o as Record<string, unknown>)[k] !== undefined).length;
      if (n > 1) ctx.addIssue({ code: 'custom', message: 'set at most one of refresh_token, refresh_token_env, refresh_token_command' });
    }
    if (o.tenant !== undefined && o.provider !== 'microsoft') ctx.addIssue({ code: 'custom', message: 'tenant goes with provider = "microsoft"' });
  });
