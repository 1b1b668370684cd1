/**
 * Step 1 of a fetch: read the account's secrets, connect (TLS as
 * configured) and log in. Secrets come first: a missing one is a
 * configuration problem, found before any connection.
 */
import { readFile } from 'node:fs/promises';
import { Pop3ServerError } from '../client/errors.js';
import { Pop3Client } from '../client/pop3-client.js';
import type { ResolvedAccount } from './config.js';
import { CredentialError, readSecret, TokenSource } from './credentials.js';

export interface ConnectDeps {
  env?: NodeJS.ProcessEnv;
  /** Hard stop: drop the connection. */
  signal?: AbortSignal;
  /** Token sources by account name, kept across fetches; created on first use. */
  tokenSources?: Map<string, TokenSource>;
}

/** The account's OAuth token cache: beside its ledger. `poplar fetch authorize` writes the first refresh token there. */
export function tokenCacheFile(acct: { readonly state: string }): string {
  return `${acct.state}.token`;
}

/** A client logged in to the account's server; the caller closes it. */
export async function connectAndLogin(acct: ResolvedAccount, deps: ConnectDeps): Promise<Pop3Client> {
  const env = deps.env ?? process.env;
  const password = acct.oauth2 === undefined ? await readSecret({ value: acct.password, env: acct.password_env, command: acct.password_command }, 'password', env, deps.signal) : undefined;
  const ca = acct.ca !== undefined ? await readFile(acct.ca).catch((e: NodeJS.ErrnoException) => Promise.reject(new CredentialError(`cannot read CA file ${acct.ca!}: ${e.code ?? e.message}`, false))) : undefined;

  const client = await Pop3Client.connect({
    host: acct.host,
    port: acct.port,
    tls: acct.tls,
    ca,
    fingerprint: acct.fingerprint,
    insecure: acct.insecure,
    servername: acct.servername,
    timeoutMs: acct.timeout * 1000,
    deadlineMs: acct.message_timeout * 1000, // every reply, from the greeting on: a server trickling a line a byte at a time is cut off too
    signal: deps.signal,
    allowPlaintextPassword: acct.allow_plaintext_password,
  });
  try {
    if (password !== undefined) {
      await client.login(acct.user, password, { mechanism: acct.auth });
    } else {
      let tokens = deps.tokenSources?.get(acct.name);
      if (tokens === undefined) {
        tokens = new TokenSource(acct.oauth2!, { env, cacheFile: tokenCacheFile(acct), account: acct.name });
        deps.tokenSources?.set(acct.name, tokens);
      }
      const mechanism = acct.oauth2!.mechanism ?? (acct.auth === 'XOAUTH2' || acct.auth === 'OAUTHBEARER' ? acct.auth : undefined);
      const first = await tokens.get(deps.signal);
      try {
        await client.loginOAuth2(acct.user, first.token, { mechanism });
      } catch (e) {
        // A cached token the server refuses (revoked early): one fresh one.
        if (!(e instanceof Pop3ServerError) || !first.cached) throw e;
        await client.loginOAuth2(acct.user, (await tokens.get(deps.signal, true)).token, { mechanism });
      }
    }
  } catch (e) {
    client.close();
    throw e;
  }
  return client;
}
