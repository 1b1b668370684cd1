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
    /** Token endpoint for the refresh-token grant (RFC 6749 §6). */
    token_endpoint: z.url({ protocol: /^https?$/ }).optional(),
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
    const viaEndpoint = o.token_endpoint !== undefined;
    if ((o.token_command !== undefined) === viaEndpoint) ctx.addIssue({ code: 'custom', message: 'set exactly one of token_command and token_endpoint' });
    if (viaEndpoint) {
      if (o.client_id === undefined) ctx.addIssue({ code: 'custom', message: 'token_endpoint needs client_id' });
      const n = ['refresh_token', 'refresh_token_env', 'refresh_token_command'].filter((k) => (o as Record<string, unknown>)[k] !== undefined).length;
      if (n !== 1) ctx.addIssue({ code: 'custom', message: 'token_endpoint needs exactly one of refresh_token, refresh_token_env, refresh_token_command' });
    }
  });
