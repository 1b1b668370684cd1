/**
 * The HTTP half of OAuth 2.0 for fetching: form POSTs to a provider's token
 * and device endpoints (RFC 6749 §4.1.3, §5, §6; RFC 8628 §3.1, §3.4), and
 * the account's token cache file. A provider's answers are hostile input:
 * the body is bounded, redirects are refused, the JSON is checked against a
 * schema and tokens must be printable ASCII of a bounded length. Nothing
 * here puts a token or a secret into a message.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { CredentialError } from './credential-error.js';

/** Largest response body read from an endpoint (tokens of several KB fit many times over). */
export const MAX_RESPONSE_BYTES = 256 * 1024;
/** Longest access or refresh token accepted (POP3 servers take AUTH lines of some 16 KB at most). */
export const MAX_TOKEN_LENGTH = 12 * 1024;
const REQUEST_TIMEOUT_MS = 30_000;
/** A token that says it lives longer than this is refreshed after this anyway. */
const MAX_EXPIRES_IN = 24 * 3600;

const token = z
  .string()
  .min(1)
  .max(MAX_TOKEN_LENGTH)
  .regex(/^[\x21-\x7e]+$/, 'not printable ASCII');
const seconds = z.union([z.number().finite().nonnegative(), z.string().regex(/^\d{1,9}$/).transform(Number)]);

/** RFC 6750 §2.1 b64token: what a bearer token may hold, and what XOAUTH2 and OAUTHBEARER can carry. */
const accessToken = token.regex(/^[A-Za-z0-9\-._~+/]+=*$/, 'not a bearer token (RFC 6750 b64token)');

const TokenSuccessSchema = z.object({
  access_token: accessToken,
  token_type: z
    .string()
    .regex(/^bearer$/i, 'not Bearer')
    .optional(),
  expires_in: seconds.optional(),
  refresh_token: token.optional(),
  scope: z.string().max(8192).optional(),
});

const ErrorSchema = z.object({
  error: z
    .string()
    .min(1)
    .max(100)
    .regex(/^[\x20-\x21\x23-\x5b\x5d-\x7e]+$/),
  error_description: z.string().optional(),
});

export interface TokenGrant {
  readonly access_token: string;
  /** Seconds, clamped to a day; 3600 when the endpoint did not say. */
  readonly expires_in: number;
  readonly refresh_token?: string | undefined;
}

/** The endpoint answered with an OAuth error (RFC 6749 §5.2, RFC 8628 §3.5). */
export class OAuthGrantError extends CredentialError {
  override name = 'OAuthGrantError';
  readonly error: string;
  readonly status: number;
  constructor(message: string, error: string, status: number) {
    super(message, status >= 500 || status === 429);
    this.error = error;
    this.status = status;
  }
}

/** Plain http only to the machine itself: anything else would send secrets in the clear. */
export function checkEndpointUrl(url: string, what: string): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new CredentialError(`${what} is not a URL`, false);
  }
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  const loopback = host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
  if (u.protocol === 'https:' || (u.protocol === 'http:' && loopback)) return u;
  throw new CredentialError(`${what} ${u.origin}: only https:// (http:// only on this machine's loopback address)`, false);
}

/** A short, printable rendering of text the provider chose (its error description). */
function printable(s: string, max = 300): string {
  const clean = s.replace(/[^\x20-\x7e]+/g, ' ').trim();
  return clean.length > max ? `${clean.slice(0, max)}…` : clean;
}

async function readBounded(res: Response, what: string): Promise<string> {
  const declared = Number(res.headers.get('content-length') ?? '0');
  if (declared > MAX_RESPONSE_BYTES) {
    await res.body?.cancel().catch(() => undefined);
    throw new CredentialError(`${what}: response larger than ${MAX_RESPONSE_BYTES} bytes`, true);
  }
  if (res.body === null) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let n = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.length;
    if (n > MAX_RESPONSE_BYTES) {
      await reader.cancel().catch(() => undefined);
      throw new CredentialError(`${what}: response larger than ${MAX_RESPONSE_BYTES} bytes`, true);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** POST a form; resolves with the status and the parsed JSON body (undefined when it is not JSON). */
export async function postForm(url: string, form: URLSearchParams, what: string, signal?: AbortSignal): Promise<{ status: number; json: unknown }> {
  const u = checkEndpointUrl(url, what);
  const timeout = AbortSignal.timeout(REQUEST_TIMEOUT_MS);
  let res: Response;
  try {
    res = await fetch(u, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: form,
      redirect: 'manual', // a redirect would carry the form (secrets included) somewhere else
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  } catch (e) {
    throw new CredentialError(`${what} ${u.origin}: ${(e as Error).message}`, true, { cause: e });
  }
  const text = await readBounded(res, `${what} ${u.origin}`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json };
}

/** An OAuth error from a parsed response, or undefined. */
export function oauthError(json: unknown): { error: string; description: string | undefined } | undefined {
  const e = ErrorSchema.safeParse(json);
  if (!e.success) return undefined;
  return { error: e.data.error, description: e.data.error_description !== undefined ? printable(e.data.error_description) : undefined };
}

/**
 * A token request (any grant). Rejects with OAuthGrantError when the
 * endpoint answers with an OAuth error, CredentialError otherwise.
 */
export async function requestToken(url: string, form: URLSearchParams, signal?: AbortSignal): Promise<TokenGrant> {
  const what = 'token endpoint';
  const { status, json } = await postForm(url, form, what, signal);
  if (status === 200) {
    const ok = TokenSuccessSchema.safeParse(json);
    if (!ok.success) {
      const issue = ok.error.issues[0];
      throw new CredentialError(`${what}: unusable answer (${issue ? `${issue.path.join('.') || 'body'}: ${issue.message}` : 'not JSON'})`, false);
    }
    const d = ok.data;
    return { access_token: d.access_token, expires_in: Math.min(d.expires_in ?? 3600, MAX_EXPIRES_IN), refresh_token: d.refresh_token };
  }
  const err = oauthError(json);
  if (err !== undefined) {
    throw new OAuthGrantError(`${what} refused: ${err.error}${err.description !== undefined ? ` (${err.description})` : ''}`, err.error, status);
  }
  const temporary = status >= 500 || status === 429 || (status >= 300 && status < 400);
  throw new CredentialError(`${what} answered HTTP ${status}${json === undefined ? ' without JSON' : ''}`, temporary);
}

// ---------------------------------------------------------------------------
// The token cache: `<ledger>.token`, mode 0600.

export interface CachedToken {
  access_token: string;
  /** ms since the epoch */
  expires_at: number;
  /** The refresh token in use: from sign-in (`poplar fetch authorize`) or one the endpoint rotated to. */
  refresh_token?: string;
}

const CacheSchema = z.object({ access_token: z.string(), expires_at: z.number(), refresh_token: token.optional() });

/** The cache file's contents; undefined when it is missing or unreadable (the next refresh rewrites it). */
export async function readTokenCache(file: string): Promise<CachedToken | undefined> {
  let text: string;
  try {
    const h = await fs.open(file, 'r');
    try {
      if ((await h.stat()).size > MAX_RESPONSE_BYTES) return undefined;
      text = await h.readFile('utf8');
    } finally {
      await h.close();
    }
  } catch {
    return undefined;
  }
  try {
    const r = CacheSchema.safeParse(JSON.parse(text));
    if (!r.success) return undefined;
    return { access_token: r.data.access_token, expires_at: r.data.expires_at, ...(r.data.refresh_token !== undefined ? { refresh_token: r.data.refresh_token } : {}) };
  } catch {
    return undefined;
  }
}

/**
 * Replace the cache file atomically: a new file (mode 0600) written and
 * synced, renamed over the old one, the directory synced. A crash leaves the
 * old refresh token or the new one, never half of one; a rotated refresh
 * token that was lost would lock the account out.
 */
export async function writeTokenCache(file: string, value: CachedToken): Promise<void> {
  const dir = path.dirname(file);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = `${file}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const h = await fs.open(tmp, 'wx', 0o600);
  try {
    await h.writeFile(JSON.stringify(value));
    await h.sync();
  } catch (e) {
    await h.close();
    await fs.rm(tmp, { force: true });
    throw e;
  }
  await h.close();
  try {
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
  const d = await fs.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
