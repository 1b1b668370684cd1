/**
 * Where a fetch account's secrets come from: the config, an environment
 * variable, or a command's first line of output; OAuth 2.0 access tokens from
 * a command or from a refresh token at a token endpoint (RFC 6749 §6), cached
 * until shortly before they expire.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** A secret could not be obtained. `temporary`: a command failed or the endpoint was unreachable. */
export class CredentialError extends Error {
  override name = 'CredentialError';
  readonly temporary: boolean;
  constructor(message: string, temporary: boolean, options?: ErrorOptions) {
    super(message, options);
    this.temporary = temporary;
  }
}

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

export interface OAuth2Settings {
  readonly token_command?: string | undefined;
  readonly token_endpoint?: string | undefined;
  readonly client_id?: string | undefined;
  readonly client_secret?: string | undefined;
  readonly client_secret_env?: string | undefined;
  readonly client_secret_command?: string | undefined;
  readonly refresh_token?: string | undefined;
  readonly refresh_token_env?: string | undefined;
  readonly refresh_token_command?: string | undefined;
  readonly scope?: string | undefined;
}

interface CachedToken {
  access_token: string;
  /** ms since the epoch */
  expires_at: number;
  /** A refresh token the endpoint rotated to; it replaces the configured one. */
  refresh_token?: string;
}

/** Refresh this long before the stated expiry, so a token never dies mid-session. */
const EXPIRY_MARGIN_MS = 60_000;

/**
 * Access tokens for one account. With a token command the command is asked
 * every time (it keeps its own cache). With a token endpoint the token is
 * cached in memory and in `cacheFile` (mode 0600) until shortly before it
 * expires; a refresh token the endpoint rotates is kept there too.
 */
export class TokenSource {
  readonly #o: OAuth2Settings;
  readonly #cacheFile: string | undefined;
  readonly #env: NodeJS.ProcessEnv;
  readonly #now: () => number;
  #cached: CachedToken | undefined;
  #loaded = false;
  /** Requests made to the token endpoint (for tests and the summary). */
  refreshes = 0;

  constructor(o: OAuth2Settings, opts: { cacheFile?: string; env?: NodeJS.ProcessEnv; now?: () => number } = {}) {
    this.#o = o;
    this.#cacheFile = opts.cacheFile;
    this.#env = opts.env ?? process.env;
    this.#now = opts.now ?? Date.now;
  }

  /** A current access token. `fresh`: ignore the cache (the server refused the cached one). */
  async get(signal?: AbortSignal, fresh = false): Promise<{ token: string; cached: boolean }> {
    if (this.#o.token_command !== undefined) return { token: await commandOutput(this.#o.token_command, 'OAuth token', signal), cached: false };
    await this.#load();
    if (!fresh && this.#cached !== undefined && this.#cached.expires_at - EXPIRY_MARGIN_MS > this.#now()) return { token: this.#cached.access_token, cached: true };
    return { token: await this.#refresh(signal), cached: false };
  }

  async #refresh(signal?: AbortSignal): Promise<string> {
    const o = this.#o;
    const refreshToken =
      this.#cached?.refresh_token ?? (await readSecret({ value: o.refresh_token, env: o.refresh_token_env, command: o.refresh_token_command }, 'refresh token', this.#env, signal));
    const hasSecret = o.client_secret !== undefined || o.client_secret_env !== undefined || o.client_secret_command !== undefined;
    const body = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: refreshToken, client_id: o.client_id ?? '' });
    if (hasSecret) body.set('client_secret', await readSecret({ value: o.client_secret, env: o.client_secret_env, command: o.client_secret_command }, 'client secret', this.#env, signal));
    if (o.scope !== undefined) body.set('scope', o.scope);
    this.refreshes++;
    let res: Response;
    try {
      res = await fetch(o.token_endpoint!, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body,
        signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(30_000)]) : AbortSignal.timeout(30_000),
      });
    } catch (e) {
      throw new CredentialError(`token endpoint ${o.token_endpoint!}: ${(e as Error).message}`, true, { cause: e });
    }
    const text = await res.text();
    let json: Record<string, unknown> = {};
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      // reported below
    }
    if (!res.ok || typeof json['access_token'] !== 'string' || json['access_token'] === '') {
      // RFC 6749 §5.2: invalid_grant etc. are permanent; 5xx is worth retrying.
      const why = typeof json['error'] === 'string' ? json['error'] : `HTTP ${res.status}`;
      throw new CredentialError(`token endpoint refused the refresh: ${why}`, res.status >= 500);
    }
    const expiresIn = typeof json['expires_in'] === 'number' ? json['expires_in'] : Number(json['expires_in'] ?? 3600);
    const next: CachedToken = { access_token: json['access_token'], expires_at: this.#now() + (Number.isFinite(expiresIn) ? expiresIn : 3600) * 1000 };
    const rotated = typeof json['refresh_token'] === 'string' ? json['refresh_token'] : this.#cached?.refresh_token;
    if (rotated !== undefined) next.refresh_token = rotated;
    this.#cached = next;
    await this.#save();
    return next.access_token;
  }

  async #load(): Promise<void> {
    if (this.#loaded || this.#cacheFile === undefined) return;
    this.#loaded = true;
    try {
      const j = JSON.parse(await fs.readFile(this.#cacheFile, 'utf8')) as Partial<CachedToken>;
      if (typeof j.access_token === 'string' && typeof j.expires_at === 'number') {
        this.#cached = { access_token: j.access_token, expires_at: j.expires_at, ...(typeof j.refresh_token === 'string' ? { refresh_token: j.refresh_token } : {}) };
      }
    } catch {
      // no cache yet, or unreadable: refresh
    }
  }

  async #save(): Promise<void> {
    if (this.#cacheFile === undefined || this.#cached === undefined) return;
    await fs.mkdir(path.dirname(this.#cacheFile), { recursive: true, mode: 0o700 });
    const tmp = `${this.#cacheFile}.tmp${process.pid}`;
    await fs.writeFile(tmp, JSON.stringify(this.#cached), { mode: 0o600 });
    await fs.rename(tmp, this.#cacheFile);
  }
}
