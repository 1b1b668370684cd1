/**
 * `poplar fetch authorize ACCOUNT`: sign in once and keep the refresh token
 * in the account's token cache (mode 0600), from where every later fetch
 * refreshes its access tokens. Two flows:
 *
 * - device (RFC 8628): print a URL and a code, poll the token endpoint while
 *   the user signs in anywhere, slowing down when told to;
 * - browser (RFC 6749 §4.1 with PKCE, RFC 7636, and a loopback redirect,
 *   RFC 8252 §7.3): listen on 127.0.0.1 at a port the system picks, print
 *   the authorization URL (and open it when there is a desktop), take the
 *   code from the redirect only with the state this run made up, and redeem
 *   it with the code verifier.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { z } from 'zod';
import { ConfigError } from '../config/errors.js';
import type { ResolvedAccount, ResolvedFetchConfig } from './config.js';
import { tokenCacheFile } from './connect.js';
import { CredentialError } from './credential-error.js';
import { clientSecret, grantErrorMessage, type OAuth2Settings } from './credentials.js';
import { oauthEndpoints, type AuthorizeFlow, type OAuthEndpoints } from './oauth-presets.js';
import { ImapSinkSchema } from './sinks/schema.js';
import { imapTokenCacheFile } from './sinks/index.js';
import { checkEndpointUrl, OAuthGrantError, oauthError, postForm, requestToken, writeTokenCache, type TokenGrant } from './oauth-token.js';

export interface AuthorizeOptions {
  /** Default: the provider's preference, else `browser` with a desktop and `device` without. */
  readonly flow?: AuthorizeFlow | undefined;
  /** Try to open the URL with xdg-open (browser flow, only with a desktop). */
  readonly open?: boolean | undefined;
  /** Give up after this many seconds without a sign-in (default 600). */
  readonly waitSeconds?: number | undefined;
  readonly env?: NodeJS.ProcessEnv | undefined;
  /** Where instructions for the user go (a line at a time). */
  readonly say: (text: string) => void;
  readonly signal?: AbortSignal | undefined;
  readonly now?: (() => number) | undefined;
}

export interface AuthorizeResult {
  readonly flow: AuthorizeFlow;
  /** The token caches the refresh token was stored in. */
  readonly cacheFiles: readonly string[];
}

const DEFAULT_WAIT_S = 600;
const printable = /^[\x21-\x7e]+$/;
const seconds = z.union([z.number().finite().nonnegative(), z.string().regex(/^\d{1,9}$/).transform(Number)]);
const httpUrl = z.url({ protocol: /^https?$/ }).max(2048);

/** RFC 8628 §3.2, plus `verification_url`, which Google sends instead of `verification_uri`. */
const DeviceAuthorizationSchema = z
  .object({
    device_code: z.string().min(1).max(8192).regex(printable),
    user_code: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[\x21-\x7e]+( [\x21-\x7e]+)*$/),
    verification_uri: httpUrl.optional(),
    verification_url: httpUrl.optional(),
    verification_uri_complete: httpUrl.optional(),
    expires_in: seconds,
    interval: seconds.optional(),
  })
  .refine((d) => d.verification_uri !== undefined || d.verification_url !== undefined, 'verification_uri is missing');

export function hasDesktop(env: NodeJS.ProcessEnv): boolean {
  return process.platform === 'darwin' || process.platform === 'win32' || !!env['DISPLAY'] || !!env['WAYLAND_DISPLAY'];
}

/** Sign in for `acct` and store the refresh token. Rejects with ConfigError or CredentialError. */
export async function authorizeAccount(acct: ResolvedAccount, opts: AuthorizeOptions): Promise<AuthorizeResult> {
  return signIn({ who: `account ${acct.name}`, table: '[account.oauth2]', rerun: acct.name }, acct.oauth2, [path.resolve(tokenCacheFile(acct))], opts);
}

/**
 * Sign in for the IMAP sinks `account` delivers into (its sink and its
 * rules' sinks) that log in with OAuth 2.0 through a token endpoint, one
 * sign-in per mailbox (user at host). The refresh token is stored in the
 * sink's token cache of every account of `cfg` that delivers into that same
 * mailbox, so several POP3 accounts flowing into one Gmail need one sign-in.
 */
export async function authorizeImapSinks(cfg: ResolvedFetchConfig, account: string, opts: AuthorizeOptions): Promise<AuthorizeResult[]> {
  const acct = cfg.accounts.find((a) => a.name === account);
  if (acct === undefined) throw new ConfigError(`no account named ${account}`);
  const mine = oauthImapSinks(acct);
  if (mine.size === 0) {
    throw new ConfigError(`account ${account}: it delivers into no IMAP sink with an [oauth2] table that has a provider or token_endpoint (a token_command needs no sign-in)`);
  }
  const results: AuthorizeResult[] = [];
  for (const [key, sink] of mine) {
    const caches = cfg.accounts.filter((a) => oauthImapSinks(a).has(key)).map((a) => path.resolve(imapTokenCacheFile(a.state, sink.user, sink.host)));
    if (mine.size > 1) opts.say(`Signing in for the IMAP mailbox ${key}:`);
    results.push(await signIn({ who: `IMAP sink ${key}`, table: 'the sink\'s [oauth2]', rerun: `${account} --sink` }, sink.oauth2, caches, opts));
  }
  return results;
}

/** The IMAP sinks of `acct` that sign in through a token endpoint, by mailbox (`user@host`). */
function oauthImapSinks(acct: ResolvedAccount): Map<string, { user: string; host: string; oauth2: OAuth2Settings }> {
  const found = new Map<string, { user: string; host: string; oauth2: OAuth2Settings }>();
  for (const spec of [acct.sink, ...acct.rule.map((r) => r.sink)]) {
    const p = spec === undefined ? undefined : ImapSinkSchema.safeParse(spec);
    if (p === undefined || !p.success || p.data.oauth2 === undefined || p.data.oauth2.token_command !== undefined) continue;
    found.set(`${p.data.user}@${p.data.host}`, { user: p.data.user, host: p.data.host, oauth2: p.data.oauth2 });
  }
  return found;
}

/**
 * The sign-in itself; the grant goes into every one of `cacheFiles`. For
 * messages: `who` signs in, with the settings of `table`, and
 * `poplar fetch authorize <rerun>` signs in again.
 */
async function signIn(
  { who, table, rerun }: { who: string; table: string; rerun: string },
  o: OAuth2Settings | undefined,
  cacheFiles: string[],
  opts: AuthorizeOptions,
): Promise<AuthorizeResult> {
  if (o === undefined || o.token_command !== undefined) {
    throw new ConfigError(`${who}: authorize needs an ${table} table with provider or token_endpoint (not token_command)`);
  }
  if (o.client_id === undefined) throw new ConfigError(`${who}: ${table} needs client_id`);
  let ep: OAuthEndpoints;
  try {
    ep = oauthEndpoints(o);
  } catch (e) {
    throw new ConfigError(`${who}: ${(e as Error).message}`);
  }
  const env = opts.env ?? process.env;
  const flow = chooseFlow(who, ep, opts.flow, env);
  const secret = await clientSecret(o, env, opts.signal);
  const now = opts.now ?? Date.now;
  const client = { id: o.client_id, secret };
  const waitMs = (opts.waitSeconds ?? DEFAULT_WAIT_S) * 1000;
  const grant = flow === 'device' ? await deviceFlow(rerun, ep, client, opts, waitMs, now) : await browserFlow(ep, client, opts, waitMs, env);
  if (grant.refresh_token === undefined) {
    const hint = ep.provider === 'microsoft' ? ' (the scope needs offline_access)' : ep.provider === 'google' ? ' (the request needs access_type=offline)' : '';
    throw new CredentialError(`the provider signed you in but sent no refresh token${hint}`, false);
  }
  for (const cacheFile of cacheFiles) {
    try {
      await writeTokenCache(cacheFile, { access_token: grant.access_token, expires_at: now() + grant.expires_in * 1000, refresh_token: grant.refresh_token });
    } catch (e) {
      throw new CredentialError(`cannot write the token cache ${cacheFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, false, { cause: e });
    }
  }
  return { flow, cacheFiles };
}

function chooseFlow(who: string, ep: OAuthEndpoints, asked: AuthorizeFlow | undefined, env: NodeJS.ProcessEnv): AuthorizeFlow {
  const can = { device: ep.device_authorization_endpoint !== undefined, browser: ep.authorization_endpoint !== undefined };
  if (asked !== undefined) {
    if (!can[asked]) throw new ConfigError(`${who}: the ${asked} flow needs ${asked === 'device' ? 'device_authorization_endpoint' : 'authorization_endpoint'} (or a provider)`);
    return asked;
  }
  const preferred: AuthorizeFlow = ep.flow ?? (hasDesktop(env) ? 'browser' : 'device');
  if (can[preferred]) return preferred;
  const other: AuthorizeFlow = preferred === 'device' ? 'browser' : 'device';
  if (can[other]) return other;
  throw new ConfigError(`${who}: set authorization_endpoint or device_authorization_endpoint (or a provider) to sign in`);
}

interface Client {
  readonly id: string;
  readonly secret: string | undefined;
}

function clientForm(client: Client, fields: Record<string, string>): URLSearchParams {
  const form = new URLSearchParams({ ...fields, client_id: client.id });
  if (client.secret !== undefined) form.set('client_secret', client.secret);
  return form;
}

// ---------------------------------------------------------------------------
// Device authorization grant (RFC 8628)

async function deviceFlow(rerun: string, ep: OAuthEndpoints, client: Client, opts: AuthorizeOptions, waitMs: number, now: () => number): Promise<TokenGrant> {
  const start = clientForm(client, ep.scope !== undefined ? { scope: ep.scope } : {});
  const what = 'device authorization endpoint';
  const { status, json } = await postForm(ep.device_authorization_endpoint!, start, what, opts.signal);
  if (status !== 200) {
    const err = oauthError(json);
    if (err !== undefined) throw new CredentialError(`${what} refused: ${err.error}${err.description !== undefined ? ` (${err.description})` : ''}`, false);
    throw new CredentialError(`${what} answered HTTP ${status}`, status >= 500);
  }
  const parsed = DeviceAuthorizationSchema.safeParse(json);
  if (!parsed.success) throw new CredentialError(`${what}: unusable answer (${parsed.error.issues[0]?.message ?? 'not JSON'})`, false);
  const d = parsed.data;
  const uri = new URL((d.verification_uri ?? d.verification_url)!).href;
  opts.say(`To sign in, open ${uri} and enter the code ${d.user_code}`);
  if (d.verification_uri_complete !== undefined) opts.say(`(or open ${new URL(d.verification_uri_complete).href}, which carries the code)`);
  opts.say('Waiting for the sign-in to finish…');

  // RFC 8628 §3.5: 5 s unless told otherwise; slow_down adds 5 s for good.
  let interval = Math.min(Math.max(d.interval ?? 5, 1), 60);
  const deadline = now() + Math.min(d.expires_in * 1000, waitMs);
  const poll = clientForm(client, { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code: d.device_code });
  for (;;) {
    await pause(interval * 1000, opts.signal);
    if (now() > deadline) throw new CredentialError('the code expired before the sign-in finished: run the command again', true);
    try {
      return await requestToken(ep.token_endpoint, poll, opts.signal);
    } catch (e) {
      if (e instanceof OAuthGrantError) {
        if (e.error === 'authorization_pending') continue;
        if (e.error === 'slow_down') {
          interval += 5;
          opts.say(`The provider asked for slower polling: every ${interval} s`);
          continue;
        }
        if (e.error === 'access_denied') throw new CredentialError('the sign-in was declined', false);
        if (e.error === 'expired_token') throw new CredentialError('the code expired before the sign-in finished: run the command again', true);
        throw new CredentialError(grantErrorMessage(e, rerun), e.temporary, { cause: e });
      }
      // Unreachable for a moment: back off, as RFC 8628 §3.5 asks, until the code expires.
      if (e instanceof CredentialError && e.temporary) {
        interval = Math.min(interval * 2, 60);
        continue;
      }
      throw e;
    }
  }
}

async function pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await sleep(ms, undefined, signal ? { signal } : {});
  } catch {
    throw new CredentialError('sign-in interrupted', true);
  }
}

// ---------------------------------------------------------------------------
// Authorization code with PKCE and a loopback redirect (RFC 7636, RFC 8252)

async function browserFlow(ep: OAuthEndpoints, client: Client, opts: AuthorizeOptions, waitMs: number, env: NodeJS.ProcessEnv): Promise<TokenGrant> {
  const authUrl = checkEndpointUrl(ep.authorization_endpoint!, 'authorization endpoint');
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier, 'ascii').digest('base64url');
  const state = randomBytes(24).toString('base64url');
  const redirect = await loopbackListener(state, ep.redirect_host);
  try {
    const url = new URL(authUrl);
    const q = url.searchParams;
    q.set('response_type', 'code');
    q.set('client_id', client.id);
    q.set('redirect_uri', redirect.uri);
    if (ep.scope !== undefined) q.set('scope', ep.scope);
    q.set('state', state);
    q.set('code_challenge', challenge);
    q.set('code_challenge_method', 'S256');
    for (const [k, v] of Object.entries(ep.authorization_params)) q.set(k, v);
    opts.say('Open this address in a browser on this machine and sign in:');
    opts.say('');
    opts.say(`  ${url.href}`);
    opts.say('');
    opts.say(`Waiting for the browser to come back to ${redirect.uri} …`);
    if (opts.open !== false && hasDesktop(env)) openInBrowser(url.href, env);

    const code = await redirect.code(waitMs, opts.signal);
    const form = clientForm(client, { grant_type: 'authorization_code', code, redirect_uri: redirect.uri, code_verifier: verifier });
    try {
      return await requestToken(ep.token_endpoint, form, opts.signal);
    } catch (e) {
      if (e instanceof OAuthGrantError) throw new CredentialError(`the token endpoint refused the sign-in code: ${e.message.replace(/^token endpoint refused: /, '')}`, e.temporary, { cause: e });
      throw e;
    }
  } finally {
    redirect.close();
  }
}

interface Loopback {
  readonly uri: string;
  code(waitMs: number, signal: AbortSignal | undefined): Promise<string>;
  close(): void;
}

const PAGE = (title: string, text: string): string =>
  `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title></head><body><h1>${title}</h1><p>${text}</p></body></html>\n`;

function sameText(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/**
 * An HTTP listener on 127.0.0.1 (and ::1 when the redirect names
 * `localhost`) at a port the system picks. It answers only GET / with this
 * run's `state`; anything else is refused and the wait goes on.
 */
async function loopbackListener(state: string, host: '127.0.0.1' | 'localhost'): Promise<Loopback> {
  let settle: { resolve: (code: string) => void; reject: (e: Error) => void } | undefined;
  let outcome: { code: string } | { error: Error } | undefined;
  const finish = (r: { code: string } | { error: Error }): void => {
    if (outcome !== undefined) return;
    outcome = r;
    if (settle !== undefined) ('code' in r ? settle.resolve(r.code) : settle.reject(r.error));
  };
  const handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    res.setHeader('connection', 'close');
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.setHeader('cache-control', 'no-store');
    const u = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (req.method !== 'GET' || u.pathname !== '/') {
      res.writeHead(404).end(PAGE('Not found', 'Nothing here.'));
      return;
    }
    const q = u.searchParams;
    if (!sameText(q.get('state') ?? '', state)) {
      res.writeHead(400).end(PAGE('Refused', 'This answer does not belong to the sign-in that is waiting (wrong state).'));
      return;
    }
    if (outcome !== undefined) {
      res.writeHead(409).end(PAGE('Already done', 'This sign-in has already finished.'));
      return;
    }
    const error = q.get('error');
    if (error !== null) {
      const clean = (s: string): string => s.replace(/[^\x20-\x7e]+/g, ' ').slice(0, 300);
      const desc = q.get('error_description');
      res.writeHead(200).end(PAGE('Sign-in failed', 'Go back to the terminal.'));
      finish({ error: new CredentialError(`the sign-in failed: ${clean(error)}${desc !== null ? ` (${clean(desc)})` : ''}`, false) });
      return;
    }
    const code = q.get('code');
    if (code === null || code.length > 8192 || !printable.test(code)) {
      res.writeHead(400).end(PAGE('Refused', 'No usable authorization code.'));
      return;
    }
    res.writeHead(200).end(PAGE('Signed in', 'You can close this tab and go back to the terminal.'));
    finish({ code });
  };
  const servers: http.Server[] = [];
  const listen = (s: http.Server, addr: string, port: number): Promise<void> =>
    new Promise((resolve, reject) => {
      s.once('error', reject);
      s.listen({ host: addr, port, exclusive: true }, () => {
        s.off('error', reject);
        resolve();
      });
    });
  const v4 = http.createServer({ maxHeaderSize: 16 * 1024 }, handler);
  await listen(v4, '127.0.0.1', 0);
  servers.push(v4);
  const port = (v4.address() as AddressInfo).port;
  if (host === 'localhost') {
    // A browser may resolve localhost to ::1 first; listen there too when the system has IPv6.
    const v6 = http.createServer({ maxHeaderSize: 16 * 1024 }, handler);
    try {
      await listen(v6, '::1', port);
      servers.push(v6);
    } catch {
      // no IPv6 loopback: 127.0.0.1 alone
    }
  }
  for (const s of servers) s.requestTimeout = 10_000;
  return {
    uri: `http://${host}:${port}`, // no path: what Google and Microsoft document for loopback redirects
    code: (waitMs, signal) =>
      new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => finish({ error: new CredentialError(`no sign-in within ${Math.round(waitMs / 1000)} s`, true) }), waitMs);
        const onAbort = (): void => finish({ error: new CredentialError('sign-in interrupted', true) });
        signal?.addEventListener('abort', onAbort, { once: true });
        const done = (): void => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', onAbort);
        };
        settle = {
          resolve: (c) => {
            done();
            resolve(c);
          },
          reject: (e) => {
            done();
            reject(e);
          },
        };
        if (signal?.aborted) onAbort();
        if (outcome !== undefined) ('code' in outcome ? settle.resolve(outcome.code) : settle.reject(outcome.error));
      }),
    close: () => {
      for (const s of servers) {
        s.close();
        s.closeAllConnections();
      }
    },
  };
}

/** xdg-open when it is on PATH; failing to open is fine, the URL is printed. */
function openInBrowser(url: string, env: NodeJS.ProcessEnv): void {
  const cmd = process.platform === 'darwin' ? 'open' : 'xdg-open';
  const found = (env['PATH'] ?? '').split(path.delimiter).some((d) => {
    try {
      accessSync(path.join(d, cmd), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
  if (!found) return;
  try {
    const child = spawn(cmd, [url], { detached: true, stdio: 'ignore', env });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // printed above
  }
}
