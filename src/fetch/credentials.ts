/**
 * Where a fetch account's secrets come from: the config, an environment
 * variable, or a command's first line of output; OAuth 2.0 access tokens from
 * a command or from a refresh token at a token endpoint (RFC 6749 §6), cached
 * until shortly before they expire.
 */
import { spawn } from 'node:child_process';
import { CredentialError } from './credential-error.js';
import { oauthEndpoints, type OAuthEndpointSettings } from './oauth-presets.js';
import type { CachedToken, OAuthGrantError } from './oauth-token.js';

/** The token endpoint's HTTP code and its zod schemas, loaded only by an account that refreshes tokens (not at start). */
const oauthToken = (): Promise<typeof import('./oauth-token.js')> => import('./oauth-token.js');

export { CredentialError } from './credential-error.js';

export interface SecretSource {
  readonly value?: string | undefined;
  readonly env?: string | undefined;
  readonly command?: string | undefined;
}

/** Run `sh -c command` and return the first line of its standard output. */
export function commandOutput(command: string, what: string, signal?: AbortSignal, timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'], ...(signal ? { signal } : {}) });
    let out = '';
    let err = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new CredentialError(`${what} command failed: ${e.message}`, true, { cause: e }));
    });
    child.on('close', (code, sig) => {
      clearTimeout(timer);
      const line = out.split(/\r?\n/, 1)[0] ?? '';
      if (code !== 0) {
        const why = sig !== null ? `killed by ${sig}` : `exited with ${String(code)}`;
        const detail = err.trim().split('\n')[0];
        reject(new CredentialError(`${what} command ${why}${detail ? `: ${detail}` : ''}`, true));
      } else if (line === '') reject(new CredentialError(`${what} command printed nothing`, true));
      else resolve(line);
    });
  });
}

export async function readSecret(src: SecretSource, what: string, env: NodeJS.ProcessEnv, signal?: AbortSignal): Promise<string> {
  if (src.value !== undefined) return src.value;
  if (src.env !== undefined) {
    const v = env[src.env];
    if (v === undefined || v === '') throw new CredentialError(`${what}: environment variable ${src.env} is not set`, false);
    return v;
  }
  if (src.command !== undefined) return commandOutput(src.command, what, signal);
  throw new CredentialError(`${what}: no source configured`, false);
}

export interface OAuth2Settings extends OAuthEndpointSettings {
  readonly token_command?: string | undefined;
  readonly client_id?: string | undefined;
  readonly client_secret?: string | undefined;
  readonly client_secret_env?: string | undefined;
  readonly client_secret_command?: string | undefined;
  readonly refresh_token?: string | undefined;
  readonly refresh_token_env?: string | undefined;
  readonly refresh_token_command?: string | undefined;
}

/** The client secret, when one is configured (installed apps of some providers need one; it is not really secret). */
export async function clientSecret(o: OAuth2Settings, env: NodeJS.ProcessEnv, signal?: AbortSignal): Promise<string | undefined> {
  const hasSecret = o.client_secret !== undefined || o.client_secret_env !== undefined || o.client_secret_command !== undefined;
  return hasSecret ? readSecret({ value: o.client_secret, env: o.client_secret_env, command: o.client_secret_command }, 'client secret', env, signal) : undefined;
}

/** What to tell the user for an OAuth error of the token endpoint. */
export function grantErrorMessage(e: OAuthGrantError, account: string): string {
  switch (e.error) {
    case 'invalid_grant':
      return `the refresh token was revoked or expired (invalid_grant): run \`poplar fetch authorize ${account}\``;
    case 'invalid_client':
    case 'unauthorized_client':
      return `the provider refused the client (${e.error}): check client_id and client_secret`;
    case 'invalid_scope':
      return `the provider refused the scope (invalid_scope): check scope`;
    default:
      return e.message;
  }
}

/** Refresh this long before the stated expiry, so a token never dies mid-session. */
const EXPIRY_MARGIN_MS = 60_000;

/**
 * Access tokens for one account. With a token command the command is asked
 * every time (it keeps its own cache). With a token endpoint the token is
 * cached in memory and in `cacheFile` (mode 0600) until shortly before it
 * expires. The refresh token comes from that file when it holds one (put
 * there by `poplar fetch authorize`, or rotated by the endpoint), else from
 * the config.
 */
export class TokenSource {
  readonly #o: OAuth2Settings;
  readonly #cacheFile: string | undefined;
  readonly #env: NodeJS.ProcessEnv;
  readonly #now: () => number;
  readonly #account: string;
  #cached: CachedToken | undefined;
  /** Requests made to the token endpoint (for tests and the summary). */
  refreshes = 0;

  constructor(o: OAuth2Settings, opts: { cacheFile?: string; env?: NodeJS.ProcessEnv; now?: () => number; account?: string } = {}) {
    this.#o = o;
    this.#cacheFile = opts.cacheFile;
    this.#env = opts.env ?? process.env;
    this.#now = opts.now ?? Date.now;
    this.#account = opts.account ?? 'ACCOUNT';
  }

  /** A current access token. `fresh`: ignore the cache (the server refused the cached one). */
  async get(signal?: AbortSignal, fresh = false): Promise<{ token: string; cached: boolean }> {
    if (this.#o.token_command !== undefined) return { token: await commandOutput(this.#o.token_command, 'OAuth token', signal), cached: false };
    if (!fresh && this.#usable(this.#cached)) return { token: this.#cached!.access_token, cached: true };
    // The file may be newer than what this process holds: another fetch refreshed (and rotated the
    // refresh token, which made ours useless), or `poplar fetch authorize` signed in again.
    const disk = this.#cacheFile !== undefined ? await (await oauthToken()).readTokenCache(this.#cacheFile) : undefined;
    if (disk !== undefined) {
      if (!fresh && this.#usable(disk)) {
        this.#cached = disk;
        return { token: disk.access_token, cached: true };
      }
      if (disk.refresh_token !== undefined) this.#cached = { ...(this.#cached ?? disk), refresh_token: disk.refresh_token };
    }
    return { token: await this.#refresh(signal), cached: false };
  }

  #usable(t: CachedToken | undefined): boolean {
    return t !== undefined && t.access_token !== '' && t.expires_at - EXPIRY_MARGIN_MS > this.#now();
  }

  async #refresh(signal?: AbortSignal): Promise<string> {
    const o = this.#o;
    let ep;
    try {
      ep = oauthEndpoints(o);
    } catch (e) {
      throw new CredentialError((e as Error).message, false);
    }
    const configured = o.refresh_token !== undefined || o.refresh_token_env !== undefined || o.refresh_token_command !== undefined;
    let refreshToken = this.#cached?.refresh_token;
    if (refreshToken === undefined) {
      if (!configured) throw new CredentialError(`no refresh token yet: run \`poplar fetch authorize ${this.#account}\``, false);
      refreshToken = await readSecret({ value: o.refresh_token, env: o.refresh_token_env, command: o.refresh_token_command }, 'refresh token', this.#env, signal);
    }
    const body = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: o.client_id ?? '' });
    const secret = await clientSecret(o, this.#env, signal);
    if (secret !== undefined) body.set('client_secret', secret);
    if (ep.refresh_scope !== undefined) body.set('scope', ep.refresh_scope);
    this.refreshes++;
    const { OAuthGrantError, requestToken } = await oauthToken();
    let grant;
    try {
      grant = await requestToken(ep.token_endpoint, body, signal);
    } catch (e) {
      // RFC 6749 §5.2: invalid_grant etc. are permanent; 5xx is worth retrying.
      if (e instanceof OAuthGrantError) throw new CredentialError(grantErrorMessage(e, this.#account), e.temporary, { cause: e });
      throw e;
    }
    const next: CachedToken = { access_token: grant.access_token, expires_at: this.#now() + grant.expires_in * 1000 };
    const rotated = grant.refresh_token ?? this.#cached?.refresh_token;
    if (rotated !== undefined) next.refresh_token = rotated;
    this.#cached = next;
    await this.#save();
    return next.access_token;
  }

  async #save(): Promise<void> {
    if (this.#cacheFile === undefined || this.#cached === undefined) return;
    try {
      await (await oauthToken()).writeTokenCache(this.#cacheFile, this.#cached);
    } catch (e) {
      throw new CredentialError(`cannot write the token cache ${this.#cacheFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, true, { cause: e });
    }
  }
}
