import { utimes, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT, base64url, exportJWK, generateKeyPair } from 'jose';
import type { CryptoKey, JWK, JWTPayload } from 'jose';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { TemporaryFailure } from '../../errors.js';
import type { ConnectionInfo, Credentials } from '../types.js';
import { OAuthAuthenticator } from './authenticator.js';
import type { OAuthRuntimeOptions } from './authenticator.js';
import { OAuthConfigSchema } from './config.js';
import type { OAuthOptions } from './config.js';

// ---------------------------------------------------------------------------
// a local identity provider

interface FakeIdp {
  readonly url: string;
  /** keys served at /jwks */
  jwks: { keys: JWK[] };
  /** status for /jwks (200 = serve jwks) */
  jwksStatus: number;
  jwksRequests: number;
  /** answers of /introspect, by token; unknown tokens get {active:false} */
  readonly introspection: Map<string, Record<string, unknown>>;
  introspectionStatus: number;
  /** ms the introspection endpoint waits before answering */
  introspectionDelayMs: number;
  introspectionRequests: number;
  /** what the last introspection request carried */
  lastIntrospection: { authorization: string | undefined; form: URLSearchParams } | undefined;
  readonly client: { readonly id: string; readonly secret: string };
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function startFakeIdp(): Promise<FakeIdp> {
  const idp: Omit<FakeIdp, 'url' | 'close'> = {
    jwks: { keys: [] },
    jwksStatus: 200,
    jwksRequests: 0,
    introspection: new Map(),
    introspectionStatus: 200,
    introspectionDelayMs: 0,
    introspectionRequests: 0,
    lastIntrospection: undefined,
    client: { id: 'poplar client', secret: 's3cr:et' },
  };
  const send = (res: ServerResponse, status: number, body: unknown): void => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  const server: Server = createServer((req, res) => {
    void (async () => {
      if (req.url === '/jwks' && req.method === 'GET') {
        idp.jwksRequests++;
        if (idp.jwksStatus !== 200) return send(res, idp.jwksStatus, { error: 'down' });
        return send(res, 200, idp.jwks);
      }
      if (req.url === '/introspect' && req.method === 'POST') {
        idp.introspectionRequests++;
        const form = new URLSearchParams(await readBody(req));
        idp.lastIntrospection = { authorization: req.headers.authorization, form };
        if (idp.introspectionDelayMs > 0) await new Promise((r) => setTimeout(r, idp.introspectionDelayMs));
        if (res.destroyed) return;
        if (idp.introspectionStatus !== 200) return send(res, idp.introspectionStatus, { error: 'server_error' });
        const expected = `Basic ${Buffer.from(`poplar+client:s3cr%3Aet`).toString('base64')}`;
        if (req.headers.authorization !== expected) return send(res, 401, { error: 'invalid_client' });
        return send(res, 200, idp.introspection.get(form.get('token') ?? '') ?? { active: false });
      }
      send(res, 404, {});
    })();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(idp, {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}

// ---------------------------------------------------------------------------
// keys and tokens

const CONN: ConnectionInfo = { remoteAddress: '192.0.2.1', remotePort: 50000, localAddress: '192.0.2.2', localPort: 995, secure: true };
const ISS = 'https://idp.example';
const AUD = 'poplar';
const ALICE = 'alice@example.com';

interface TestKey {
  readonly kid: string;
  readonly alg: 'RS256' | 'ES256';
  readonly privateKey: CryptoKey;
  readonly jwk: JWK;
}

async function makeKey(kid: string, alg: 'RS256' | 'ES256'): Promise<TestKey> {
  const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, jwk };
}

const nowS = (): number => Math.floor(Date.now() / 1000);

async function sign(key: TestKey, claims: Record<string, unknown> = {}, header: { kid?: string | null } = {}): Promise<string> {
  const payload: JWTPayload = { iss: ISS, aud: AUD, email: ALICE, sub: 'u-1234', exp: nowS() + 3600, iat: nowS(), ...claims };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  const kid = header.kid === null ? undefined : (header.kid ?? key.kid);
  return new SignJWT(payload).setProtectedHeader(kid === undefined ? { alg: key.alg } : { alg: key.alg, kid }).sign(key.privateKey);
}

const bearer = (token: string, username = ALICE): Credentials => ({ kind: 'bearer', username, token });

let rsa: TestKey;
let ec: TestKey;
let other: TestKey;
beforeAll(async () => {
  [rsa, ec, other] = await Promise.all([makeKey('rsa-1', 'RS256'), makeKey('ec-1', 'ES256'), makeKey('rsa-1', 'RS256')]);
});

let idp: FakeIdp;
let logs: string[];
beforeEach(async () => {
  idp = await startFakeIdp();
  idp.jwks = { keys: [rsa.jwk, ec.jwk] };
  logs = [];
});
afterEach(async () => {
  await idp.close();
});

function jwtAuth(extra: Partial<OAuthOptions> = {}, runtime: OAuthRuntimeOptions = {}): OAuthAuthenticator {
  return new OAuthAuthenticator({ jwks_url: `${idp.url}/jwks`, issuer: ISS, audience: AUD, ...extra }, { logger: (m) => logs.push(m), ...runtime });
}

async function expectSysTemp(p: Promise<unknown>): Promise<void> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(TemporaryFailure);
}

// ---------------------------------------------------------------------------

describe('OAuthConfigSchema', () => {
  it('accepts each mode and refuses ambiguous or incomplete ones', () => {
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'https://idp.example/jwks', issuer: ISS, audience: [AUD, 'other'] }).success).toBe(true);
    expect(OAuthConfigSchema.safeParse({ jwks_file: '/etc/poplar/jwks.json', issuer: ISS, audience: AUD, user_claim: 'sub', algorithms: ['ES256'] }).success).toBe(true);
    expect(
      OAuthConfigSchema.safeParse({ introspection_url: 'https://idp.example/introspect', client_id: 'a', client_secret: 'b', issuer: ISS, audience: AUD }).success,
    ).toBe(true);
    expect(OAuthConfigSchema.safeParse({ issuer: ISS, audience: AUD }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'https://x/j', jwks_file: '/j', issuer: ISS, audience: AUD }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ introspection_url: 'https://x/i', issuer: ISS, audience: AUD }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'ftp://x/j', issuer: ISS, audience: AUD }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'https://x/j', issuer: ISS, audience: AUD, algorithms: ['HS256'] }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'https://x/j', issuer: ISS, audience: AUD, algorithms: ['none'] }).success).toBe(false);
    expect(OAuthConfigSchema.safeParse({ jwks_url: 'https://x/j', issuer: ISS, audience: AUD, bogus: 1 }).success).toBe(false);
    const parsed = OAuthConfigSchema.parse({ jwks_url: 'https://x/j', issuer: ISS, audience: AUD });
    const opts: OAuthOptions = parsed;
    expect(opts.jwks_url).toBe('https://x/j');
  });
});

describe('OAuthAuthenticator with a JWKS URL', () => {
  it('accepts valid RS256 and ES256 tokens and returns the claim value as the user name', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(rsa), 'Alice@Example.COM'), CONN)).toEqual({ username: ALICE });
    // OAUTHBEARER without authzid: the token names the user
    expect(await auth.authenticate(bearer(await sign(rsa), ''), CONN)).toEqual({ username: ALICE });
    expect(idp.jwksRequests).toBe(1);
  });

  it('accepts any configured issuer and audience', async () => {
    const auth = jwtAuth({ issuer: ['https://a.example', ISS], audience: ['mail', 'poplar'] });
    expect(await auth.authenticate(bearer(await sign(rsa, { aud: ['account', 'mail'] })), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(rsa, { iss: 'https://a.example' })), CONN)).toEqual({ username: ALICE });
  });

  it('rejects expired tokens, honouring clock_tolerance', async () => {
    const auth = jwtAuth({ clock_tolerance: 30 });
    expect(await auth.authenticate(bearer(await sign(rsa, { exp: nowS() - 120 })), CONN)).toBeNull();
    expect(logs.at(-1)).toContain('ERR_JWT_EXPIRED');
    expect(await auth.authenticate(bearer(await sign(rsa, { exp: nowS() - 10 })), CONN)).toEqual({ username: ALICE });
    const strict = jwtAuth({ clock_tolerance: 0 });
    expect(await strict.authenticate(bearer(await sign(rsa, { exp: nowS() - 10 })), CONN)).toBeNull();
  });

  it('rejects tokens without exp', async () => {
    expect(await jwtAuth().authenticate(bearer(await sign(rsa, { exp: undefined })), CONN)).toBeNull();
  });

  it('rejects tokens that are not yet valid', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa, { nbf: nowS() + 600 })), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(await sign(rsa, { nbf: nowS() - 5 })), CONN)).toEqual({ username: ALICE });
  });

  it('rejects wrong audience and wrong issuer', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa, { aud: 'someone-else' })), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(await sign(rsa, { aud: undefined })), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(await sign(rsa, { iss: 'https://evil.example' })), CONN)).toBeNull();
  });

  it('rejects a bad signature (another key with the same kid) and a tampered payload', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(other)), CONN)).toBeNull();
    expect(logs.at(-1)).toContain('ERR_JWS_SIGNATURE_VERIFICATION_FAILED');
    const [h, , s] = (await sign(rsa)).split('.');
    const forged = base64url.encode(JSON.stringify({ iss: ISS, aud: AUD, email: 'bob@example.com', exp: nowS() + 3600 }));
    expect(await auth.authenticate(bearer(`${h}.${forged}.${s}`, 'bob@example.com'), CONN)).toBeNull();
  });

  it('rejects tokens for another user or without the claim', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa), 'bob@example.com'), CONN)).toBeNull();
    expect(logs.at(-1)).toContain('names another user');
    expect(await auth.authenticate(bearer(await sign(rsa), 'alice'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(await sign(rsa, { email: undefined })), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(await sign(rsa, { email: 42 })), CONN)).toBeNull();
  });

  it('uses the configured user claim', async () => {
    const auth = jwtAuth({ user_claim: 'sub' });
    expect(await auth.authenticate(bearer(await sign(rsa), 'U-1234'), CONN)).toEqual({ username: 'u-1234' });
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toBeNull();
  });

  it('rejects alg "none", HS256 and algorithms that are not allowed', async () => {
    const auth = jwtAuth();
    const payload = base64url.encode(JSON.stringify({ iss: ISS, aud: AUD, email: ALICE, exp: nowS() + 3600 }));
    const none = `${base64url.encode(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${payload}.`;
    expect(await auth.authenticate(bearer(none), CONN)).toBeNull();
    expect(logs.at(-1)).toContain('ERR_JOSE_ALG_NOT_ALLOWED');
    const noneKid = `${base64url.encode(JSON.stringify({ alg: 'none', kid: 'rsa-1' }))}.${payload}.`;
    expect(await auth.authenticate(bearer(noneKid), CONN)).toBeNull();
    const hs = await new SignJWT({ iss: ISS, aud: AUD, email: ALICE, exp: nowS() + 3600 })
      .setProtectedHeader({ alg: 'HS256', kid: 'rsa-1' })
      .sign(new TextEncoder().encode(JSON.stringify(rsa.jwk)));
    expect(await auth.authenticate(bearer(hs), CONN)).toBeNull();
    const esOnly = jwtAuth({ algorithms: ['ES256'] });
    expect(await esOnly.authenticate(bearer(await sign(rsa)), CONN)).toBeNull();
    expect(await esOnly.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
  });

  it('rejects malformed tokens and password credentials without asking the JWKS', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer('not a token'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer(''), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('x'.repeat(20_000)), CONN)).toBeNull();
    expect(await auth.authenticate({ kind: 'password', username: ALICE, password: 'pencil' }, CONN)).toBeNull();
    expect(idp.jwksRequests).toBe(0);
  });

  it('verifies a token without kid against each key of the right type', async () => {
    const rsa2 = await makeKey('rsa-2', 'RS256');
    idp.jwks = { keys: [rsa.jwk, rsa2.jwk] };
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa2, {}, { kid: null })), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(other, {}, { kid: null })), CONN)).toBeNull();
  });

  it('picks up a rotated key (new kid) without a restart', async () => {
    const auth = jwtAuth({}, { jwksCooldownMs: 0 });
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
    expect(idp.jwksRequests).toBe(1);
    const rsa2 = await makeKey('rsa-2', 'RS256');
    idp.jwks = { keys: [rsa2.jwk] };
    expect(await auth.authenticate(bearer(await sign(rsa2)), CONN)).toEqual({ username: ALICE });
    expect(idp.jwksRequests).toBe(2);
    // known kids are served from the cache
    expect(await auth.authenticate(bearer(await sign(rsa2)), CONN)).toEqual({ username: ALICE });
    expect(idp.jwksRequests).toBe(2);
  });

  it('does not refetch for unknown kids during the cooldown', async () => {
    const auth = jwtAuth();
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
    const rogue = await makeKey('rogue', 'RS256');
    for (let i = 0; i < 5; i++) expect(await auth.authenticate(bearer(await sign(rogue)), CONN)).toBeNull();
    expect(logs.at(-1)).toContain('ERR_JWKS_NO_MATCHING_KEY');
    expect(idp.jwksRequests).toBe(1);
  });

  it('answers SYS/TEMP when the JWKS server is down or failing', async () => {
    const token = await sign(rsa);
    idp.jwksStatus = 503;
    await expectSysTemp(jwtAuth().authenticate(bearer(token), CONN));
    idp.jwksStatus = 200;
    idp.jwks = { keys: 'nope' } as unknown as { keys: JWK[] };
    await expectSysTemp(jwtAuth().authenticate(bearer(token), CONN));
    const url = idp.url;
    await idp.close();
    await expectSysTemp(new OAuthAuthenticator({ jwks_url: `${url}/jwks`, issuer: ISS, audience: AUD }).authenticate(bearer(token), CONN));
    expect(logs.join('\n')).not.toContain(token);
  });

  it('answers SYS/TEMP for a new kid when the JWKS cannot be refetched, but keeps serving cached keys', async () => {
    const auth = jwtAuth({}, { jwksCooldownMs: 0 });
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
    idp.jwksStatus = 500;
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
    const rsa2 = await makeKey('rsa-2', 'RS256');
    await expectSysTemp(auth.authenticate(bearer(await sign(rsa2)), CONN));
  });

  it('times out a JWKS endpoint that does not answer', async () => {
    const hang = createServer(() => undefined);
    await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
    try {
      const { port } = hang.address() as AddressInfo;
      const auth = new OAuthAuthenticator({ jwks_url: `http://127.0.0.1:${port}/jwks`, issuer: ISS, audience: AUD, timeout: 0.2 });
      const t0 = Date.now();
      await expectSysTemp(auth.authenticate(bearer(await sign(rsa)), CONN));
      expect(Date.now() - t0).toBeLessThan(5000);
    } finally {
      hang.closeAllConnections();
      await new Promise<void>((r) => hang.close(() => r()));
    }
  });

  it('never logs tokens', async () => {
    const auth = jwtAuth();
    const tokens = [await sign(other), await sign(rsa, { aud: 'x' }), await sign(rsa)];
    for (const t of tokens) await auth.authenticate(bearer(t, 'bob@example.com'), CONN);
    expect(logs.length).toBeGreaterThan(0);
    for (const t of tokens) {
      expect(logs.join('\n')).not.toContain(t);
      expect(logs.join('\n')).not.toContain(t.split('.')[2]);
    }
  });
});

describe('OAuthAuthenticator with a JWKS file', () => {
  let dir: string;
  let file: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'poplar-jwks-'));
    file = join(dir, 'jwks.json');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function writeJwks(content: string, mtimeS: number): Promise<void> {
    await writeFile(file, content);
    await utimes(file, mtimeS, mtimeS);
  }

  it('verifies against the file and re-reads it when it changes', async () => {
    await writeJwks(JSON.stringify({ keys: [rsa.jwk] }), 1_000_000);
    const auth = new OAuthAuthenticator({ jwks_file: file, issuer: ISS, audience: AUD }, { logger: (m) => logs.push(m) });
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toBeNull();

    await writeJwks(JSON.stringify({ keys: [ec.jwk] }), 1_000_100);
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toBeNull();

    // a broken update keeps the last good keys and is reported once
    await writeJwks('{"keys": [', 1_000_200);
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer(await sign(ec)), CONN)).toEqual({ username: ALICE });
    expect(logs.filter((l) => l.includes('keeping the previous keys'))).toHaveLength(1);
  });

  it('answers SYS/TEMP while the file has never been readable', async () => {
    const auth = new OAuthAuthenticator({ jwks_file: file, issuer: ISS, audience: AUD });
    await expectSysTemp(auth.authenticate(bearer(await sign(rsa)), CONN));
    await writeJwks('not json', 1_000_000);
    await expectSysTemp(auth.authenticate(bearer(await sign(rsa)), CONN));
    await writeJwks(JSON.stringify({ keys: [rsa.jwk] }), 1_000_100);
    expect(await auth.authenticate(bearer(await sign(rsa)), CONN)).toEqual({ username: ALICE });
  });
});

describe('OAuthAuthenticator with introspection', () => {
  let clock: number;
  function introAuth(extra: Partial<OAuthOptions> = {}, runtime: OAuthRuntimeOptions = {}): OAuthAuthenticator {
    return new OAuthAuthenticator(
      {
        introspection_url: `${idp.url}/introspect`,
        client_id: idp.client.id,
        client_secret: idp.client.secret,
        issuer: ISS,
        audience: AUD,
        clock_tolerance: 0,
        ...extra,
      },
      { logger: (m) => logs.push(m), now: () => clock, ...runtime },
    );
  }
  beforeEach(() => {
    clock = Date.now();
  });
  const active = (user: string, expS: number, more: Record<string, unknown> = {}): Record<string, unknown> => ({
    active: true,
    username: user,
    exp: expS,
    iss: ISS,
    aud: AUD,
    token_type: 'Bearer',
    ...more,
  });

  it('accepts an active token for the user and sends RFC 7662 requests', async () => {
    idp.introspection.set('tok-a', active(ALICE, clock / 1000 + 3600));
    const auth = introAuth();
    expect(await auth.authenticate(bearer('tok-a', 'ALICE@example.com'), CONN)).toEqual({ username: ALICE });
    expect(idp.lastIntrospection?.form.get('token')).toBe('tok-a');
    expect(idp.lastIntrospection?.form.get('token_type_hint')).toBe('access_token');
    expect(idp.lastIntrospection?.authorization).toMatch(/^Basic /);
  });

  it('rejects inactive and unknown tokens', async () => {
    idp.introspection.set('tok-i', { active: false });
    const auth = introAuth();
    expect(await auth.authenticate(bearer('tok-i'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-unknown'), CONN)).toBeNull();
  });

  it('rejects a token for another user, a foreign audience or issuer, and an expired one', async () => {
    idp.introspection.set('tok-a', active(ALICE, clock / 1000 + 3600));
    idp.introspection.set('tok-aud', active(ALICE, clock / 1000 + 3600, { aud: ['other'] }));
    idp.introspection.set('tok-iss', active(ALICE, clock / 1000 + 3600, { iss: 'https://evil.example' }));
    idp.introspection.set('tok-exp', active(ALICE, clock / 1000 - 60));
    idp.introspection.set('tok-noname', { active: true, exp: clock / 1000 + 3600 });
    const auth = introAuth();
    expect(await auth.authenticate(bearer('tok-a', 'bob@example.com'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-aud'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-iss'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-exp'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-noname'), CONN)).toBeNull();
  });

  it('caches answers: one request per token, also for the wrong user', async () => {
    idp.introspection.set('tok-a', active(ALICE, clock / 1000 + 3600));
    const auth = introAuth();
    for (let i = 0; i < 3; i++) expect(await auth.authenticate(bearer('tok-a'), CONN)).toEqual({ username: ALICE });
    expect(await auth.authenticate(bearer('tok-a', 'bob@example.com'), CONN)).toBeNull();
    expect(idp.introspectionRequests).toBe(1);
    expect(auth.introspectionRequests).toBe(1);
  });

  it('shares one request between concurrent lookups of a token', async () => {
    idp.introspection.set('tok-a', active(ALICE, clock / 1000 + 3600));
    idp.introspectionDelayMs = 50;
    const auth = introAuth();
    const results = await Promise.all([1, 2, 3].map(() => auth.authenticate(bearer('tok-a'), CONN)));
    expect(results).toEqual([{ username: ALICE }, { username: ALICE }, { username: ALICE }]);
    expect(idp.introspectionRequests).toBe(1);
  });

  it('keeps a positive answer no longer than exp', async () => {
    const exp = Math.floor(clock / 1000) + 60;
    idp.introspection.set('tok-a', active(ALICE, exp));
    const auth = introAuth();
    expect(await auth.authenticate(bearer('tok-a'), CONN)).toEqual({ username: ALICE });
    clock = exp * 1000 - 1;
    expect(await auth.authenticate(bearer('tok-a'), CONN)).toEqual({ username: ALICE });
    expect(idp.introspectionRequests).toBe(1);
    clock = exp * 1000;
    expect(await auth.authenticate(bearer('tok-a'), CONN)).toBeNull();
    expect(idp.introspectionRequests).toBe(2);
  });

  it('caches negative answers briefly', async () => {
    const auth = introAuth();
    expect(await auth.authenticate(bearer('tok-x'), CONN)).toBeNull();
    expect(await auth.authenticate(bearer('tok-x'), CONN)).toBeNull();
    expect(idp.introspectionRequests).toBe(1);
    idp.introspection.set('tok-x', active(ALICE, clock / 1000 + 3600));
    clock += 29_000;
    expect(await auth.authenticate(bearer('tok-x'), CONN)).toBeNull();
    expect(idp.introspectionRequests).toBe(1);
    clock += 2_000;
    expect(await auth.authenticate(bearer('tok-x'), CONN)).toEqual({ username: ALICE });
    expect(idp.introspectionRequests).toBe(2);
  });

  it('bounds the cache', async () => {
    for (const t of ['t1', 't2', 't3']) idp.introspection.set(t, active(ALICE, clock / 1000 + 3600));
    const auth = introAuth({ cache_size: 2 });
    for (const t of ['t1', 't2', 't3', 't1']) expect(await auth.authenticate(bearer(t), CONN)).toEqual({ username: ALICE });
    expect(idp.introspectionRequests).toBe(4);
    expect(await auth.authenticate(bearer('t3'), CONN)).toEqual({ username: ALICE });
    expect(idp.introspectionRequests).toBe(4);
  });

  it('answers SYS/TEMP on 5xx, bad client credentials, timeouts and a dead endpoint, and does not cache failures', async () => {
    idp.introspection.set('tok-a', active(ALICE, clock / 1000 + 3600));
    idp.introspectionStatus = 500;
    const auth = introAuth({ timeout: 0.2 });
    await expectSysTemp(auth.authenticate(bearer('tok-a'), CONN));
    idp.introspectionStatus = 200;
    expect(await auth.authenticate(bearer('tok-a'), CONN)).toEqual({ username: ALICE });

    await expectSysTemp(introAuth({ client_secret: 'wrong' }).authenticate(bearer('tok-a'), CONN));

    idp.introspectionDelayMs = 2_000;
    await expectSysTemp(introAuth({ timeout: 0.2 }).authenticate(bearer('tok-a'), CONN));
    idp.introspectionDelayMs = 0;

    const url = idp.url;
    await idp.close();
    const dead = new OAuthAuthenticator({ introspection_url: `${url}/introspect`, client_id: 'a', client_secret: 'b', issuer: ISS, audience: AUD });
    await expectSysTemp(dead.authenticate(bearer('tok-a'), CONN));
    expect(logs.join('\n')).not.toContain('tok-a');
  });
});

