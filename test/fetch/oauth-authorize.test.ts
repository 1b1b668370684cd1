/**
 * OAuth 2.0 sign-in and refresh for `poplar fetch`, through the real CLI
 * against an OAuth server written here (node:http on 127.0.0.1, real HTTP)
 * and Poplar's own POP3 server, which accepts exactly the access tokens
 * that OAuth server has issued and not yet revoked:
 * the device flow with authorization_pending and slow_down, the browser
 * flow with PKCE and state checked, refresh-token rotation across fetches,
 * a revoked refresh token (exit 78), hostile token-endpoint answers, and
 * XOAUTH2 with a token longer than 4 KB sent without an initial response.
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Authenticator } from '../../src/auth/types.js';
import { Pop3Client } from '../../src/client/index.js';
import { authorizeAccount } from '../../src/fetch/authorize.js';
import { ConfigError } from '../../src/config/errors.js';
import { loadFetchConfig, resolveFetchConfig } from '../../src/fetch/config.js';
import { CredentialError, TokenSource } from '../../src/fetch/credentials.js';
import { classify } from '../../src/fetch/exit-status.js';
import { oauthEndpoints } from '../../src/fetch/oauth-presets.js';
import { OAuthGrantError, readTokenCache, requestToken, writeTokenCache } from '../../src/fetch/oauth-token.js';
import { poplarArgs, runPoplar } from '../helpers/cli.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { fetchOnce, seqCounts, seqMessage } from './helpers.js';

const CLIENT_ID = 'poplar-test-client';
const CLIENT_SECRET = 'not-so-secret-client-secret';
/** Longer than 4 KB: an AUTH line with it as the initial response would break RFC 5034's 255 octets many times over. */
const ACCESS_TOKEN_LENGTH = 6000;

/** b64token characters (RFC 6750), as a provider's tokens. */
function newToken(prefix: string, length: number): string {
  return (prefix + randomBytes(Math.ceil(length * 0.75)).toString('base64url')).slice(0, length);
}

interface DeviceGrant {
  polls: number[];
}

/** A small OAuth 2.0 authorization server: device, authorization code with PKCE, refresh with rotation. */
class OAuthServer {
  readonly server: http.Server;
  port = 0;
  readonly access = new Set<string>();
  readonly refresh = new Set<string>();
  /** Every refresh token presented to the refresh grant, in order. */
  readonly refreshesSeen: string[] = [];
  readonly scopes: string[] = [];
  readonly secretsSeen: (string | null)[] = [];
  readonly devices = new Map<string, DeviceGrant>();
  readonly codes = new Map<string, { challenge: string; method: string; redirect: string }>();
  /** PKCE challenges whose verifier was checked and matched. */
  readonly verified = new Set<string>();
  readonly deviceScopes: string[] = [];
  /** Answer for /token with this instead (hostile-answer tests). */
  override: ((res: http.ServerResponse) => void) | undefined;
  expiresIn = 30; // less than the refresh margin: every fetch refreshes

  constructor() {
    this.server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => this.#handle(req, res, Buffer.concat(chunks).toString()));
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  url(p: string): string {
    return `http://127.0.0.1:${this.port}${p}`;
  }

  #json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(JSON.stringify(body));
  }

  #issue(res: http.ServerResponse, rotateFrom?: string): void {
    if (rotateFrom !== undefined) this.refresh.delete(rotateFrom);
    const access_token = newToken('at.', ACCESS_TOKEN_LENGTH);
    const refresh_token = newToken('rt!', 80); // refresh tokens may hold any printable character
    this.access.add(access_token);
    this.refresh.add(refresh_token);
    this.#json(res, 200, { access_token, token_type: 'Bearer', expires_in: this.expiresIn, refresh_token });
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
    const u = new URL(req.url ?? '/', 'http://x');
    if (req.method === 'GET' && u.pathname === '/authorize') {
      // The consent page, approved at once: redirect to the client with a code bound to the PKCE challenge.
      const q = u.searchParams;
      if (q.get('client_id') !== CLIENT_ID || q.get('response_type') !== 'code') return void res.writeHead(400).end('bad request');
      const code = newToken('code-', 40);
      this.codes.set(code, { challenge: q.get('code_challenge') ?? '', method: q.get('code_challenge_method') ?? '', redirect: q.get('redirect_uri') ?? '' });
      this.scopes.push(q.get('scope') ?? '');
      const to = new URL(q.get('redirect_uri')!);
      to.searchParams.set('code', code);
      to.searchParams.set('state', q.get('state') ?? '');
      res.writeHead(302, { location: to.href }).end();
      return;
    }
    if (req.method !== 'POST') return void res.writeHead(405).end();
    const p = new URLSearchParams(body);
    if (p.get('client_id') !== CLIENT_ID) return this.#json(res, 401, { error: 'invalid_client' });
    this.secretsSeen.push(p.get('client_secret'));
    if (u.pathname === '/device') {
      this.deviceScopes.push(p.get('scope') ?? '');
      const device_code = newToken('dc-', 30);
      this.devices.set(device_code, { polls: [] });
      return this.#json(res, 200, { device_code, user_code: 'WDJB-MJHT', verification_uri: this.url('/activate'), expires_in: 600, interval: 1 });
    }
    if (u.pathname !== '/token') return void res.writeHead(404).end();
    if (this.override !== undefined) return this.override(res);
    const grant = p.get('grant_type');
    if (grant === 'urn:ietf:params:oauth:grant-type:device_code') {
      const d = this.devices.get(p.get('device_code') ?? '');
      if (d === undefined) return this.#json(res, 400, { error: 'invalid_grant' });
      d.polls.push(performance.now());
      if (d.polls.length === 1) return this.#json(res, 400, { error: 'authorization_pending' });
      if (d.polls.length === 2) return this.#json(res, 400, { error: 'slow_down' });
      this.devices.delete(p.get('device_code')!);
      this.devices.set(`done:${d.polls.length}`, d);
      return this.#issue(res);
    }
    if (grant === 'authorization_code') {
      const c = this.codes.get(p.get('code') ?? '');
      this.codes.delete(p.get('code') ?? '');
      const verifier = p.get('code_verifier') ?? '';
      // RFC 7636 §4.6: BASE64URL(SHA256(ASCII(code_verifier))) == code_challenge
      const ok = c !== undefined && c.method === 'S256' && c.redirect === p.get('redirect_uri') && createHash('sha256').update(verifier).digest('base64url') === c.challenge;
      if (!ok) return this.#json(res, 400, { error: 'invalid_grant', error_description: 'PKCE verification failed' });
      this.verified.add(c.challenge);
      return this.#issue(res);
    }
    if (grant === 'refresh_token') {
      const rt = p.get('refresh_token') ?? '';
      this.refreshesSeen.push(rt);
      this.scopes.push(p.get('scope') ?? '');
      if (!this.refresh.has(rt)) return this.#json(res, 400, { error: 'invalid_grant', error_description: 'AADSTS70000: the refresh token has been revoked' });
      return this.#issue(res, rt);
    }
    return this.#json(res, 400, { error: 'unsupported_grant_type' });
  }
}

let tmp: string;
let oauth: OAuthServer;
let pop: TestServer;
/** Bearer tokens the POP3 server was shown, valid or not. */
const bearerSeen: string[] = [];

beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-oauth-'));
  oauth = new OAuthServer();
  await oauth.start();
  const authenticator: Authenticator = {
    authenticate: async (c) => {
      if (c.kind !== 'bearer') return null;
      bearerSeen.push(c.token);
      return c.username === 'alice' && oauth.access.has(c.token) ? { username: 'alice' } : null;
    },
  };
  pop = await startTestServer({ authenticator, oauth: true });
});
afterAll(async () => {
  await pop?.stop();
  await new Promise<void>((r) => (oauth ? oauth.server.close(() => r()) : r()));
  await fs.rm(tmp, { recursive: true, force: true });
});

/** A config with one Microsoft-preset account whose endpoints point at the local server. */
async function writeConfig(name: string, extra = ''): Promise<{ file: string; dir: string; cache: string }> {
  const dir = path.join(tmp, name);
  await fs.mkdir(dir, { recursive: true });
  const file = path.join(dir, 'fetch.toml');
  await fs.writeFile(
    file,
    `[fetch]
state_dir = "${dir}/state"

[[account]]
name = "${name}"
host = "127.0.0.1"
port = ${pop.port}
tls = "none"
user = "alice"
sink = { type = "maildir", path = "${dir}/Maildir" }
[account.oauth2]
provider = "microsoft"
token_endpoint = "${oauth.url('/token')}"
authorization_endpoint = "${oauth.url('/authorize')}"
device_authorization_endpoint = "${oauth.url('/device')}"
redirect_host = "127.0.0.1"
client_id = "${CLIENT_ID}"
client_secret_env = "TEST_CLIENT_SECRET"
mechanism = "XOAUTH2"
${extra}`,
  );
  return { file, dir, cache: path.join(dir, 'state', `${name}.ledger.token`) };
}

const ENV = { TEST_CLIENT_SECRET: CLIENT_SECRET, DISPLAY: '', WAYLAND_DISPLAY: '' };

interface Running {
  stderr: () => string;
  stdout: () => string;
  waitFor: (re: RegExp) => Promise<RegExpExecArray>;
  done: Promise<number | null>;
}

/** The CLI as a child process whose output can be awaited as it comes. */
function startPoplar(args: string[]): Running {
  const child = spawn(process.execPath, poplarArgs(args), { env: { ...process.env, ...ENV }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters: (() => void)[] = [];
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
    for (const w of waiters.splice(0)) w();
  });
  const kill = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const done = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      clearTimeout(kill);
      for (const w of waiters.splice(0)) w();
      resolve(code);
    }),
  );
  let closed = false;
  void done.then(() => (closed = true));
  const waitFor = async (re: RegExp): Promise<RegExpExecArray> => {
    for (;;) {
      const m = re.exec(err);
      if (m !== null) return m;
      if (closed) throw new Error(`exited without ${String(re)}:\n${err}`);
      await new Promise<void>((r) => waiters.push(r));
    }
  };
  return { stderr: () => err, stdout: () => out, waitFor, done };
}

/** Every secret the test handed out, so outputs can be checked for leaks. */
function secrets(): string[] {
  return [...oauth.access, ...oauth.refresh, ...oauth.refreshesSeen, ...bearerSeen, CLIENT_SECRET];
}

function expectNoSecrets(...texts: string[]): void {
  for (const t of texts) for (const s of secrets()) if (t.includes(s)) throw new Error(`output carries a secret: ${s.slice(0, 12)}…`);
}

async function cacheOf(file: string): Promise<{ refresh_token?: string; access_token: string; mode: number }> {
  const st = await fs.stat(file);
  return { ...(JSON.parse(await fs.readFile(file, 'utf8')) as { refresh_token?: string; access_token: string }), mode: st.mode & 0o777 };
}

/** Sign in in process (the CLI's own runs are tested above), the test acting as the browser; `back` changes the redirect. */
async function signIn(file: string, name: string, back: (u: URL) => URL = (u) => u): Promise<void> {
  const env = { ...process.env, ...ENV };
  const acct = loadFetchConfig(file, tmp, env).accounts.find((a) => a.name === name)!;
  let gotUrl!: (u: URL) => void;
  const url = new Promise<URL>((r) => (gotUrl = r));
  const done = authorizeAccount(acct, {
    flow: 'browser',
    open: false,
    env,
    say: (line) => {
      const m = /^ {2}(http\S+)$/.exec(line);
      if (m !== null) gotUrl(new URL(m[1]!));
    },
  });
  done.catch(() => undefined);
  const consent = await fetch(await url, { redirect: 'manual' });
  await fetch(back(new URL(consent.headers.get('location')!)));
  await done;
}

// The CLI runs wait on child processes and timers; run side by side they take the time of the longest.
describe.concurrent('poplar fetch authorize and the fetches after it', () => {
  it('device flow: prints the URL and code, keeps polling through authorization_pending, slows down on slow_down, stores the refresh token (0600)', async ({ expect }) => {
    const cfg = await writeConfig('device');
    const run = startPoplar(['fetch', 'authorize', 'device', '--config', cfg.file, '--device']);
    await run.waitFor(/open (http:\/\/127\.0\.0\.1:\d+\/activate) and enter the code WDJB-MJHT/);
    expect(await run.done).toBe(0);
    const grant = [...oauth.devices.entries()].find(([k]) => k.startsWith('done:'))![1];
    expect(grant.polls.length).toBe(3);
    // Asked at the server's interval (1 s) until slow_down, then 5 s slower (RFC 8628 §3.5).
    expect(grant.polls[2]! - grant.polls[1]!).toBeGreaterThanOrEqual(5500);
    expect(run.stderr()).toMatch(/slower polling: every 6 s/);
    const cache = await cacheOf(cfg.cache);
    expect(cache.mode).toBe(0o600);
    expect(oauth.refresh.has(cache.refresh_token!)).toBe(true);
    // The Microsoft preset's scope, endpoints overridden; the client secret went along.
    expect(oauth.deviceScopes).toEqual(['https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/IMAP.AccessAsUser.All offline_access']);
    expect(oauth.secretsSeen).toContain(CLIENT_SECRET);
    expect(oauth.secretsSeen).not.toContain(null);
    expect(run.stdout()).toContain(cfg.cache);
    expectNoSecrets(run.stdout(), run.stderr());
  }, 60_000);

  it('browser flow: PKCE S256 verified by the server, a redirect with the wrong state refused, the right one accepted', async ({ expect }) => {
    const cfg = await writeConfig('browser');
    const run = startPoplar(['fetch', 'authorize', 'browser', '--config', cfg.file, '--browser', '--no-open']);
    const url = new URL((await run.waitFor(/^ {2}(http:\/\/127\.0\.0\.1:\d+\/authorize\?\S+)$/m))[1]!);
    const q = url.searchParams;
    expect(q.get('code_challenge_method')).toBe('S256');
    expect(q.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(q.get('redirect_uri')).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(q.get('state')!.length).toBeGreaterThanOrEqual(22);

    // The test is the browser: the provider's page redirects back to the loopback listener.
    const consent = await fetch(url, { redirect: 'manual' });
    expect(consent.status).toBe(302);
    const back = new URL(consent.headers.get('location')!);
    const forged = new URL(back);
    forged.searchParams.set('state', 'not-the-state-of-this-run');
    expect((await fetch(forged)).status).toBe(400);
    const noState = new URL(back);
    noState.searchParams.delete('state');
    expect((await fetch(noState)).status).toBe(400);
    const ok = await fetch(back);
    expect(ok.status).toBe(200);
    expect(await ok.text()).toMatch(/Signed in/);

    expect(await run.done).toBe(0);
    expect(oauth.verified.has(q.get('code_challenge')!)).toBe(true);
    const cache = await cacheOf(cfg.cache);
    expect(cache.mode).toBe(0o600);
    expect(oauth.refresh.has(cache.refresh_token!)).toBe(true);
    expectNoSecrets(run.stdout(), run.stderr());
  }, 60_000);

  it('rotation: each fetch refreshes with the refresh token the previous one stored; XOAUTH2 with a 6000-octet token; then a revoked token gives exit 78', async ({ expect }) => {
    const cfg = await writeConfig('rotate');
    await signIn(cfg.file, 'rotate');
    const first = (await cacheOf(cfg.cache)).refresh_token!;

    await pop.deliver('alice', seqMessage(1));
    const env = { ...process.env, ...ENV };
    const acct = loadFetchConfig(cfg.file, tmp, env).accounts[0]!;
    expect(await fetchOnce(acct, { env })).toMatchObject({ ok: true, delivered: 1 });
    expect(oauth.refreshesSeen).toEqual([first]);
    const second = (await cacheOf(cfg.cache)).refresh_token!;
    expect(second).not.toBe(first);
    expect(oauth.refresh.has(first)).toBe(false); // rotated away: using it again would fail

    await pop.deliver('alice', seqMessage(2));
    // A new process: it finds the rotated refresh token in the cache file.
    const b = await runPoplar(['fetch', '--config', cfg.file, '--once', '--json'], { env: ENV });
    expect(b.code).toBe(0);
    expect(oauth.refreshesSeen).toEqual([first, second]);
    expect(JSON.parse(b.stdout)).toMatchObject({ exitCode: 0 });
    expect([...(await seqCounts(path.join(cfg.dir, 'Maildir'))).keys()].sort()).toEqual([1, 2]);
    expect(bearerSeen.at(-1)!.length).toBe(ACCESS_TOKEN_LENGTH);
    expect(oauth.scopes.at(-1)).toMatch(/offline_access/); // Microsoft wants the scope with a refresh
    expectNoSecrets(b.stdout, b.stderr);

    oauth.refresh.delete((await cacheOf(cfg.cache)).refresh_token!); // revoked at the provider
    const c = await runPoplar(['fetch', '--config', cfg.file, '--once'], { env: ENV });
    expect(c.code).toBe(78);
    expect(c.stderr).toContain('the refresh token was revoked or expired (invalid_grant): run `poplar fetch authorize rotate`');
    expectNoSecrets(c.stdout, c.stderr);
    expect((await cacheOf(cfg.cache)).mode).toBe(0o600);
  }, 90_000);

  it('a sign-in the user declines in the browser: a permanent error with what the provider said, nothing stored', async ({ expect }) => {
    const cfg = await writeConfig('declined');
    const declined = (u: URL): URL => {
      u.searchParams.delete('code');
      u.searchParams.set('error', 'access_denied');
      u.searchParams.set('error_description', 'The user said no');
      return u;
    };
    const e = await signIn(cfg.file, 'declined', declined).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(CredentialError);
    expect(e).toMatchObject({ temporary: false, message: 'the sign-in failed: access_denied (The user said no)' });
    expect(classify(e).exitCode).toBe(78);
    await expect(fs.stat(cfg.cache)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('an account that never signed in: exit 78, told to run authorize', async ({ expect }) => {
    const cfg = await writeConfig('never');
    const acct = loadFetchConfig(cfg.file, tmp, { ...process.env, ...ENV }).accounts[0]!;
    const e = await fetchOnce(acct, { env: { ...process.env, ...ENV } }).catch((x: unknown) => x);
    expect((e as Error).message).toBe('no refresh token yet: run `poplar fetch authorize never`');
    expect(classify(e).exitCode).toBe(78);
  });
});

describe('token endpoint answers are hostile input', () => {
  const form = (): URLSearchParams => new URLSearchParams({ grant_type: 'refresh_token', refresh_token: 'x', client_id: CLIENT_ID });
  const answer = (status: number, body: string | Buffer, headers: Record<string, string> = { 'content-type': 'application/json' }) => (res: http.ServerResponse) => res.writeHead(status, headers).end(body);
  const attempt = async (how: (res: http.ServerResponse) => void): Promise<unknown> => {
    oauth.override = how;
    try {
      return await requestToken(oauth.url('/token'), form()).catch((e: unknown) => e);
    } finally {
      oauth.override = undefined;
    }
  };

  it('refuses bodies past the bound, non-JSON, wrong shapes, tokens a bearer cannot carry, and redirects', async () => {
    const big = await attempt(answer(200, Buffer.alloc(300 * 1024, 0x20)));
    expect(big).toBeInstanceOf(CredentialError);
    expect((big as Error).message).toMatch(/larger than 262144 bytes/);
    expect(((await attempt(answer(200, '<html>hello</html>'))) as Error).message).toMatch(/unusable answer/);
    expect(((await attempt(answer(200, JSON.stringify({ access_token: 'has space', expires_in: 60 })))) as Error).message).toMatch(/access_token/);
    expect(((await attempt(answer(200, JSON.stringify({ access_token: 'ok', token_type: 'mac' })))) as Error).message).toMatch(/token_type/);
    expect(((await attempt(answer(200, JSON.stringify({ access_token: 'a'.repeat(20_000) })))) as Error).message).toMatch(/access_token/);
    const moved = await attempt(answer(307, '', { location: 'http://127.0.0.1:1/steal' }));
    expect((moved as Error).message).toMatch(/HTTP 307/);
    const down = await attempt(answer(503, 'busy'));
    expect(down).toMatchObject({ temporary: true });
    const odd = (await attempt(answer(400, JSON.stringify({ error: 'invalid_request', error_description: 'bad\u0007\r\nthing' })))) as OAuthGrantError;
    expect(odd).toBeInstanceOf(OAuthGrantError);
    expect(odd.message).toBe('token endpoint refused: invalid_request (bad thing)');
    // A huge expires_in is clamped to a day.
    expect(await attempt(answer(200, JSON.stringify({ access_token: 'tok', expires_in: 1e12 })))).toMatchObject({ access_token: 'tok', expires_in: 86_400 });
  });

  it('plain http only to loopback addresses', async () => {
    await expect(requestToken('http://mail.example.org/token', form())).rejects.toThrow(/only https/);
  });
});

describe('XOAUTH2 with a long token, the way Microsoft 365 takes it', () => {
  it('AUTH XOAUTH2 without an initial response, the token on the line after a bare "+"', async () => {
    const token = newToken('ms.', 5000);
    const lines: string[] = [];
    const srv = net.createServer((s) => {
      let buf = '';
      s.write('+OK POP3 ready\r\n');
      s.on('data', (d: Buffer) => {
        buf += d.toString('latin1');
        let i: number;
        while ((i = buf.indexOf('\r\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 2);
          lines.push(line);
          if (line === 'CAPA') s.write('+OK\r\nUSER\r\nSASL XOAUTH2\r\n.\r\n');
          else if (line === 'AUTH XOAUTH2') s.write('+\r\n');
          else if (lines.at(-2) === 'AUTH XOAUTH2') {
            const ok = Buffer.from(line, 'base64').toString() === `user=alice@example.org\x01auth=Bearer ${token}\x01\x01`;
            s.write(ok ? '+OK authenticated\r\n' : '-ERR bad\r\n');
          } else if (line === 'QUIT') s.end('+OK bye\r\n');
          else s.write('-ERR unexpected\r\n');
        }
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const c = await Pop3Client.connect({ host: '127.0.0.1', port: (srv.address() as net.AddressInfo).port, tls: 'none' });
      expect(await c.loginOAuth2('alice@example.org', token, { mechanism: 'XOAUTH2' })).toBe('XOAUTH2');
      await c.quit();
      expect(lines.slice(0, 2)).toEqual(['CAPA', 'AUTH XOAUTH2']);
      expect(lines[2]!.length).toBeGreaterThan(4096);
    } finally {
      srv.close();
    }
  });

  it("Poplar's own server takes the two-step AUTH with a 6000-octet token (max_auth_line_length), and refuses an unknown one", async () => {
    const at = newToken('at.', ACCESS_TOKEN_LENGTH);
    oauth.access.add(at);
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: pop.port, tls: 'none' });
    expect(await c.loginOAuth2('alice', at, { mechanism: 'XOAUTH2' })).toBe('XOAUTH2');
    await c.quit();
    const d = await Pop3Client.connect({ host: '127.0.0.1', port: pop.port, tls: 'none' });
    await expect(d.loginOAuth2('alice', newToken('at.', ACCESS_TOKEN_LENGTH), { mechanism: 'XOAUTH2' })).rejects.toMatchObject({ name: 'Pop3ServerError' });
    d.close();
  });
});

describe('provider presets and the [oauth2] table', () => {
  const account = (oauth2: Record<string, unknown>): unknown =>
    resolveFetchConfig({ account: [{ name: 'a', host: 'h', user: 'u', sink: { type: 'maildir', path: 'm' }, oauth2 }] }, '/').accounts[0]!.oauth2;

  it('google and microsoft fill in endpoints and scopes; every value can be overridden', () => {
    expect(oauthEndpoints({ provider: 'google' })).toMatchObject({
      authorization_endpoint: 'https://accounts.google.com/o/oauth2/v2/auth',
      token_endpoint: 'https://oauth2.googleapis.com/token',
      device_authorization_endpoint: 'https://oauth2.googleapis.com/device/code',
      scope: 'https://mail.google.com/',
      refresh_scope: undefined,
      authorization_params: { access_type: 'offline', prompt: 'consent' },
      flow: 'browser',
    });
    const ms = oauthEndpoints({ provider: 'microsoft' });
    expect(ms).toMatchObject({
      authorization_endpoint: 'https://login.microsoftonline.com/common/oauth2/v2.0/authorize',
      token_endpoint: 'https://login.microsoftonline.com/common/oauth2/v2.0/token',
      device_authorization_endpoint: 'https://login.microsoftonline.com/common/oauth2/v2.0/devicecode',
      redirect_host: 'localhost',
    });
    expect(ms.scope).toBe('https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/IMAP.AccessAsUser.All offline_access');
    expect(ms.refresh_scope).toBe(ms.scope);
    expect(oauthEndpoints({ provider: 'microsoft', tenant: 'consumers' }).token_endpoint).toBe('https://login.microsoftonline.com/consumers/oauth2/v2.0/token');
    const over = oauthEndpoints({ provider: 'microsoft', scope: 'x offline_access', token_endpoint: 'https://t.example/token', redirect_host: '127.0.0.1', flow: 'browser' });
    expect(over).toMatchObject({ scope: 'x offline_access', refresh_scope: 'x offline_access', token_endpoint: 'https://t.example/token', redirect_host: '127.0.0.1', flow: 'browser' });
    expect(() => oauthEndpoints({})).toThrow(/no token endpoint/);
  });

  it('a provider needs no refresh token in the config (authorize stores it); mistakes are refused', () => {
    expect(account({ provider: 'google', client_id: 'c', client_secret_env: 'S' })).toMatchObject({ provider: 'google' });
    expect(() => account({ provider: 'google', token_command: 'x' })).toThrow(ConfigError);
    expect(() => account({ provider: 'google' })).toThrow(/client_id/);
    expect(() => account({ provider: 'google', client_id: 'c', tenant: 'common' })).toThrow(/tenant goes with provider = "microsoft"/);
    expect(() => account({ provider: 'microsoft', client_id: 'c', tenant: 'a/b' })).toThrow(/tenant/);
    expect(() => account({ provider: 'yahoo', client_id: 'c' })).toThrow(ConfigError);
    expect(() => account({ token_endpoint: 'https://t/', client_id: 'c', refresh_token: 'a', refresh_token_env: 'B' })).toThrow(/at most one/);
  });
});

describe('two processes sharing one token cache', () => {
  it('a fetch refreshes with the refresh token another one rotated to (the file wins over memory)', async () => {
    const cacheFile = path.join(tmp, 'shared', 'acct.ledger.token');
    oauth.refresh.add('rt-seed');
    await writeTokenCache(cacheFile, { access_token: 'expired', expires_at: 0, refresh_token: 'rt-seed' });
    const settings = { provider: 'microsoft' as const, token_endpoint: oauth.url('/token'), client_id: CLIENT_ID };
    const daemon = new TokenSource(settings, { cacheFile, account: 'acct' });
    const other = new TokenSource(settings, { cacheFile, account: 'acct' });
    const from = oauth.refreshesSeen.length;
    await daemon.get();
    await other.get(); // expires_in 30 s is inside the refresh margin: refreshes, rotating what the daemon used
    await daemon.get();
    const seen = oauth.refreshesSeen.slice(from);
    expect(seen[0]).toBe('rt-seed');
    expect(seen[1]).not.toBe('rt-seed');
    expect(seen[2]).not.toBe(seen[1]);
    expect(seen.every((rt, i) => i === 0 || !oauth.refresh.has(rt))).toBe(true);
    expect(oauth.refresh.has((await readTokenCache(cacheFile))!.refresh_token!)).toBe(true);
  });
});
