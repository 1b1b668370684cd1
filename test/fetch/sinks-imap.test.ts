/**
 * The IMAP sink against a real IMAP server: Dovecot's imapd on loopback,
 * with implicit TLS, STARTTLS and (loopback only) no TLS, a password or an
 * OAuth 2.0 token (Dovecot's oauth2 passdb asks an introspection endpoint
 * this test runs). What was appended is read back over IMAP and compared
 * octet for octet; the crash probe is asked about messages that are there,
 * twice over, and not there.
 */
import { promises as fs } from 'node:fs';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { ImapFlow } from 'imapflow';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveFetchConfig } from '../../src/fetch/config.js';
import { fetchAccount, newReport } from '../../src/fetch/session.js';
import { createSink, type SinkSpecInput } from '../../src/fetch/sinks/index.js';
import { ImapSink, type ImapSinkOptions } from '../../src/fetch/sinks/imap.js';
import { bufferSource, SinkError } from '../../src/fetch/sinks/util.js';
import { runPoplar } from '../helpers/cli.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { fillMaildrop } from './crash-helpers.js';
import { seqMessage } from './helpers.js';

let root: string;
let dc: DovecotHandle;
let dcXoauth: DovecotHandle | undefined;
let caPem: Buffer;
let introspection: http.Server;
/** Tokens the introspection endpoint calls active, and the user each stands for. */
const tokens = new Map<string, string>([['good-token', 'oauthbox']]);
const introspected: string[] = [];

const info = (uidl: string) => ({ account: 'test', uidl, size: 0 });

/** Refresh tokens the sign-in endpoints issued, and the access tokens they gave out (for user `signin`). */
const issuedRefresh = new Set<string>();
const issuedAccess: string[] = [];

/**
 * A device authorization endpoint and a token endpoint (RFC 8628, RFC 6749 §6)
 * beside the introspection endpoint: the sign-in is approved at the first
 * poll, and every access token issued is one Dovecot will accept for `signin`.
 */
function signInEndpoints(url: string, p: URLSearchParams, res: http.ServerResponse): void {
  const json = (status: number, body: unknown): void => void res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  if (p.get('client_id') !== 'poplar-imap-test') return json(401, { error: 'invalid_client' });
  if (url === '/device') return json(200, { device_code: 'dc-imap', user_code: 'IMAP-SINK', verification_uri: 'http://127.0.0.1/activate', expires_in: 600, interval: 1 });
  const grant = p.get('grant_type');
  const ok = grant === 'urn:ietf:params:oauth:grant-type:device_code' ? p.get('device_code') === 'dc-imap' : grant === 'refresh_token' && issuedRefresh.delete(p.get('refresh_token') ?? '');
  if (!ok) return json(400, { error: 'invalid_grant' });
  const access_token = `at-${randomBytes(16).toString('hex')}`;
  const refresh_token = `rt-${randomBytes(16).toString('hex')}`;
  tokens.set(access_token, 'signin');
  issuedAccess.push(access_token);
  issuedRefresh.add(refresh_token);
  json(200, { access_token, token_type: 'Bearer', expires_in: 3600, refresh_token });
}

function msg(subject: string, extra = ''): Buffer {
  return Buffer.from(`From: a@example.org\r\nTo: b@example.org\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@example.org>\r\nDate: Tue, 1 Jul 2025 10:00:00 +0000\r\n\r\nbody of ${subject}\r\n${extra}`, 'latin1');
}

/** Every message in `folder` of `user`'s mailbox, as stored (BODY[]), in UID order. */
async function stored(user: string, folder = 'INBOX', port = dc.imapPort): Promise<Buffer[]> {
  const c = new ImapFlow({ host: '127.0.0.1', port, secure: false, doSTARTTLS: false, auth: { user, pass: 'pw' }, logger: false });
  c.on('error', () => undefined);
  await c.connect();
  const out: Buffer[] = [];
  try {
    const box = await c.mailboxOpen(folder, { readOnly: true }).catch(() => undefined);
    if (box !== undefined && box.exists > 0) for await (const m of c.fetch('1:*', { source: true })) out.push(m.source!);
  } finally {
    await c.logout();
  }
  return out;
}

function sinkDefaults(): Omit<ImapSinkOptions, 'user'> {
  return {
    host: '127.0.0.1',
    port: dc.imapsPort,
    tls: 'implicit',
    ca: caPem,
    servername: 'localhost',
    credentials: { kind: 'password', get: () => Promise.resolve('pw') },
    timeoutMs: 20_000,
  };
}

function sink(over: Partial<ImapSinkOptions> & { user: string }): ImapSink {
  return new ImapSink({ ...sinkDefaults(), ...over });
}

describe.skipIf(lacks('dovecot') || lacks('dovecot-imapd'))('IMAP sink against Dovecot imapd', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-imap-sink-'));
    introspection = http.createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        if (req.url === '/device' || req.url === '/token') return signInEndpoints(req.url, new URLSearchParams(body), res);
        const token = new URLSearchParams(body).get('token') ?? /^Bearer (.*)$/.exec(req.headers.authorization ?? '')?.[1] ?? '';
        introspected.push(token);
        const user = tokens.get(token);
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(user !== undefined ? { active: true, username: user } : { active: false }));
      });
    });
    await new Promise<void>((r) => introspection.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(introspection.address() as AddressInfo).port}/introspect`;
    const mail = path.join(root, 'mail');
    await fillMaildrop(mail, 'popsrc', 30);
    await fillMaildrop(mail, 'popsrc3', 5);
    const users = ['box', 'tls', 'starttls', 'probe', 'oauthbox', 'dst', 'hostile', 'popsrc', 'popsrc2', 'popsrc3', 'signin'].map((name) => ({ name, password: 'pw' }));
    await fillMaildrop(mail, 'popsrc2', 12);
    dc = await startDovecot({ maildirRoot: mail, users, imap: true, oauth2IntrospectionUrl: url, extraConf: 'auth_failure_delay = 0' });
    caPem = await fs.readFile(dc.certFile);
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await dcXoauth?.stop();
    introspection?.close();
    await fs.rm(root, { recursive: true, force: true });
  });

  it('implicit TLS, verified against the server certificate: messages stored octet for octet, with their UIDs', async () => {
    const s = sink({ user: 'tls' });
    const a = msg('first one');
    const b = Buffer.concat([msg('second, 8-bit \xe9 and long', 'x'.repeat(300_000) + '\r\n'), Buffer.from('\r\n.\r\n..dots\r\n', 'latin1')]);
    await s.deliverBuffer(a, info('u1'));
    const uid1 = s.lastUid;
    await s.deliver(Readable.from([b.subarray(0, 1000), b.subarray(1000)]), info('u2'));
    await s.close();
    expect(await stored('tls')).toEqual([a, b]);
    expect(s.connections).toBe(1);
    expect(uid1).toBe(1);
    expect(s.lastUid).toBe(2); // APPENDUID (UIDPLUS)
  });

  it('messages handed over together are appended over up to four connections at once, each exactly once', async () => {
    const s = sink({ user: 'box', folder: 'Together', create: true });
    const many = Array.from({ length: 12 }, (_, i) => msg(`together ${i}`));
    await Promise.all(many.map((m, i) => s.deliverBuffer(m, info(`t${i}`))));
    await s.close();
    expect(s.connections).toBeGreaterThan(1);
    expect(s.connections).toBeLessThanOrEqual(4);
    expect((await stored('box', 'Together')).sort(Buffer.compare)).toEqual([...many].sort(Buffer.compare));
    const one = sink({ user: 'box', folder: 'Together', connections: 1 });
    expect(one.concurrentDeliveries).toBe(false);
    await Promise.all([one.deliverBuffer(msg('one a'), info('o1')), one.deliverBuffer(msg('one b'), info('o2'))]);
    await one.close();
    expect(one.connections).toBe(1);
    expect((await stored('box', 'Together')).slice(-2)).toEqual([msg('one a'), msg('one b')]);
  });

  it('STARTTLS, and plain IMAP to loopback; plain IMAP to another host is refused before connecting', async () => {
    const st = sink({ user: 'starttls', port: dc.imapPort, tls: 'starttls' });
    await st.deliverBuffer(msg('over starttls'), info('s1'));
    await st.close();
    const plain = sink({ user: 'starttls', port: dc.imapPort, tls: 'none' });
    await plain.deliverBuffer(msg('in the clear on loopback'), info('s2'));
    await plain.close();
    expect(await stored('starttls')).toEqual([msg('over starttls'), msg('in the clear on loopback')]);

    const far = sink({ user: 'starttls', host: '192.0.2.1', port: 143, tls: 'none' });
    const e = await far.deliverBuffer(msg('never'), info('s3')).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(SinkError);
    expect((e as SinkError).message).toMatch(/without TLS/);
    expect(far.connections).toBe(0);
  });

  it('a certificate the CA does not vouch for, a wrong password and a missing folder: typed errors, nothing stored', async () => {
    const { ca: _ca, ...noCa } = { ...sinkDefaults(), user: 'box' };
    const untrusted = new ImapSink(noCa);
    const e1 = (await untrusted.deliverBuffer(msg('no'), info('b1')).catch((x: unknown) => x)) as SinkError;
    expect(e1).toBeInstanceOf(SinkError);
    expect(e1.temporary).toBe(true);
    expect(e1.message).toMatch(/certificate/i);

    const badpw = sink({ user: 'box', credentials: { kind: 'password', get: () => Promise.resolve('wrong') } });
    const e2 = (await badpw.deliverBuffer(msg('no'), info('b2')).catch((x: unknown) => x)) as SinkError;
    expect(e2).toBeInstanceOf(SinkError);
    expect(e2.temporary).toBe(false);
    expect(e2.message).toMatch(/login refused/);

    const nofolder = sink({ user: 'box', folder: 'Missing' });
    const e3 = (await nofolder.deliverBuffer(msg('no'), info('b3')).catch((x: unknown) => x)) as SinkError;
    expect(e3).toBeInstanceOf(SinkError);
    expect(e3.message).toMatch(/TRYCREATE/);
    await nofolder.close();
    expect(await stored('box')).toEqual([]);

    const create = sink({ user: 'box', folder: 'Archive', create: true });
    await create.deliverBuffer(msg('made the folder'), info('b4'));
    await create.close();
    expect(await stored('box', 'Archive')).toEqual([msg('made the folder')]);
  });

  it('the crash probe finds what is there (identical copies count once each), by Message-ID or by size and content', async () => {
    const s = sink({ user: 'probe' });
    const here = msg('delivered');
    const noId = Buffer.from('From: a@example.org\r\nSubject: no message-id\r\n\r\nhello\r\n', 'latin1');
    const sameSizeOther = Buffer.from('From: a@example.org\r\nSubject: no message-id\r\n\r\nHELLO\r\n', 'latin1');
    const absent = msg('never delivered');
    const sameIdOtherBody = Buffer.from(here.toString('latin1').replace('body of', 'BODY OF'), 'latin1');
    await s.deliverBuffer(here, info('p1'));
    await s.deliverBuffer(noId, info('p2'));
    await s.deliverBuffer(msg('unrelated'), info('p3'));
    const since = Date.now();
    const found = await s.findDelivered([
      { uidl: 'A', since, folders: [undefined], content: bufferSource(here) },
      { uidl: 'A-again', since, folders: [undefined], content: bufferSource(here) },
      { uidl: 'B', since, folders: [undefined], content: bufferSource(noId) },
      { uidl: 'C', since, folders: [undefined], content: bufferSource(absent) },
      { uidl: 'D', since, folders: [undefined], content: bufferSource(sameSizeOther) },
      { uidl: 'E', since, folders: [undefined], content: bufferSource(sameIdOtherBody) },
    ]);
    expect([...found].sort()).toEqual(['A', 'B']);
    // The probe leaves the folder as it was.
    expect(await stored('probe')).toHaveLength(3);
    await s.close();
    // A folder that does not exist holds nothing.
    const none = sink({ user: 'probe', folder: 'Nowhere' });
    expect(await none.findDelivered([{ uidl: 'A', since, folders: [undefined], content: bufferSource(here) }])).toEqual(new Set());
    await none.close();
  });

  it('OAuth 2.0: OAUTHBEARER to Dovecot, which checks the token at the introspection endpoint; a refused token is a login error', async () => {
    const tokenSink = (token: string): ImapSink =>
      sink({ user: 'oauthbox', credentials: { kind: 'oauth2', get: () => Promise.resolve({ token, cached: false }) } });
    const s = tokenSink('good-token');
    await s.deliverBuffer(msg('with a bearer token'), info('o1'));
    await s.close();
    expect(introspected).toContain('good-token');
    expect(await stored('oauthbox')).toEqual([msg('with a bearer token')]);
    const log = await fs.readFile(path.join(dc.dir, 'dovecot.log'), 'utf8');
    expect(log).toMatch(/imap-login: Info: Login: user=<oauthbox>, method=OAUTHBEARER/);

    const bad = tokenSink('revoked-token');
    const e = (await bad.deliverBuffer(msg('no'), info('o2')).catch((x: unknown) => x)) as SinkError;
    expect(e).toBeInstanceOf(SinkError);
    expect(e.temporary).toBe(false);
    expect(e.message).toMatch(/login refused/);
  });

  it('OAuth 2.0: XOAUTH2 when the server offers only that (a second Dovecot); a refused cached token is replaced by a fresh one', async () => {
    const url = `http://127.0.0.1:${(introspection.address() as AddressInfo).port}/introspect`;
    dcXoauth = await startDovecot({ maildirRoot: path.join(root, 'mail2'), users: [{ name: 'oauthbox', password: 'pw' }], imap: true, oauth2IntrospectionUrl: url, extraConf: 'auth_mechanisms = plain login xoauth2\nauth_failure_delay = 0' });
    const asked: boolean[] = [];
    const s = new ImapSink({
      host: '127.0.0.1',
      port: dcXoauth.imapsPort,
      ca: await fs.readFile(dcXoauth.certFile),
      servername: 'localhost',
      user: 'oauthbox',
      credentials: {
        kind: 'oauth2',
        get: (_signal, fresh) => {
          asked.push(fresh);
          return Promise.resolve(fresh ? { token: 'good-token', cached: false } : { token: 'stale-token', cached: true });
        },
      },
    });
    await s.deliverBuffer(msg('xoauth2'), info('x1'));
    await s.close();
    expect(asked).toEqual([false, true]);
    expect(await stored('oauthbox', 'INBOX', dcXoauth.imapPort)).toEqual([msg('xoauth2')]);
    expect(await fs.readFile(path.join(dcXoauth.dir, 'dovecot.log'), 'utf8')).toMatch(/Login: user=<oauthbox>, method=XOAUTH2/);
  }, 30_000);

  it('poplar fetch: a POP3 account into an IMAP folder of another mailbox; a second fetch appends nothing', async () => {
    const cfg = resolveFetchConfig(
      {
        sinks: { gmail: { type: 'imap', host: '127.0.0.1', port: dc.imapsPort, ca: dc.certFile, servername: 'localhost', user: 'dst', password_env: 'IMAP_PW', folder: 'POP', create: true } },
        account: [{ name: 'src', host: '127.0.0.1', port: dc.port, tls: 'none', user: 'popsrc', password: 'pw', sink: 'gmail', state: path.join(root, 'src.ledger') }],
      },
      root,
    );
    const acct = cfg.accounts[0]!;
    const deps = {
      createSink: (spec: Record<string, unknown>) => createSink(spec as SinkSpecInput, { env: { IMAP_PW: 'pw' }, stateFile: acct.state }),
      now: Date.now,
      fsync: false,
    };
    const r1 = await fetchAccount(acct, deps, newReport('src'));
    expect(r1.delivered).toBe(30);
    const r2 = await fetchAccount(acct, deps, newReport('src'));
    expect(r2.delivered).toBe(0);
    // Appended over several connections at once: in any order, each exactly once and octet for octet.
    const all = await stored('dst', 'POP');
    const got = all.map((b) => Number(/^X-Seq: (\d+)\r$/m.exec(b.toString('latin1'))![1]));
    expect(got.sort((x, y) => x - y)).toEqual(Array.from({ length: 30 }, (_, i) => i));
    for (const b of all) expect(b.toString('latin1')).toBe(seqMessage(Number(/^X-Seq: (\d+)\r$/m.exec(b.toString('latin1'))![1]), 120));
  });
  it('poplar fetch authorize --sink: one sign-in serves every account delivering into that mailbox; the fetch then logs in to IMAP with the stored token', async () => {
    const dir = path.join(root, 'signin');
    await fs.mkdir(dir, { recursive: true });
    const base = `http://127.0.0.1:${(introspection.address() as AddressInfo).port}`;
    const account = (name: string, sink: string): string => `[[account]]\nname = "${name}"\nhost = "127.0.0.1"\nport = ${dc.port}\ntls = "none"\nuser = "popsrc3"\npassword = "pw"\nsink = ${sink}\n`;
    const file = path.join(dir, 'fetch.toml');
    await fs.writeFile(
      file,
      [
        `[fetch]\nstate_dir = "${dir}/state"\n`,
        `[sinks.gmail]\ntype = "imap"\nhost = "127.0.0.1"\nport = ${dc.imapsPort}\nca = "${dc.certFile}"\nservername = "localhost"\nuser = "signin"\nconnections = 1`,
        `[sinks.gmail.oauth2]\ntoken_endpoint = "${base}/token"\ndevice_authorization_endpoint = "${base}/device"\nclient_id = "poplar-imap-test"\n`,
        account('a1', '"gmail"'),
        account('a2', '"gmail"'),
        account('local', `{ type = "maildir", path = "${dir}/Maildir" }`),
      ].join('\n'),
    );
    const cache = (name: string): string => path.join(dir, 'state', `${name}.ledger.imap-signin@127.0.0.1.token`);

    const r = await runPoplar(['fetch', 'authorize', 'a1', '--sink', '--device', '--config', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/enter the code IMAP-SINK/);
    expect(r.stdout).toContain(cache('a1'));
    expect(r.stdout).toContain(cache('a2'));
    for (const name of ['a1', 'a2']) {
      expect((await fs.stat(cache(name))).mode & 0o777).toBe(0o600);
      expect(issuedRefresh.has((JSON.parse(await fs.readFile(cache(name), 'utf8')) as { refresh_token: string }).refresh_token)).toBe(true);
    }
    // The POP3 account's own cache is another thing: nothing was written there.
    await expect(fs.stat(path.join(dir, 'state', 'a1.ledger.token'))).rejects.toMatchObject({ code: 'ENOENT' });
    // An account that delivers into no such sink is told so.
    const none = await runPoplar(['fetch', 'authorize', 'local', '--sink', '--device', '--config', file]);
    expect(none.code).toBe(78);
    expect(none.stderr).toMatch(/delivers into no IMAP sink with an \[oauth2\] table/);

    const f = await runPoplar(['fetch', '--once', '--quiet', '--config', file, '--account', 'a1']);
    expect(f.code, f.stderr).toBe(0);
    expect((await stored('signin')).length).toBe(5);
    expect(introspected).toContain(issuedAccess[0]);
    expect(await fs.readFile(path.join(dc.dir, 'dovecot.log'), 'utf8')).toMatch(/Login: user=<signin>, method=OAUTHBEARER/);
    for (const t of [...issuedAccess, ...issuedRefresh]) expect(f.stdout + f.stderr + r.stdout + r.stderr).not.toContain(t);

    // The refresh token revoked and the access token expired: exit 78, told how to sign the sink in again.
    const c = JSON.parse(await fs.readFile(cache('a2'), 'utf8')) as Record<string, unknown>;
    await fs.writeFile(cache('a2'), JSON.stringify({ ...c, expires_at: 0 }), { mode: 0o600 });
    issuedRefresh.clear();
    const revoked = await runPoplar(['fetch', '--once', '--quiet', '--config', file, '--account', 'a2']);
    expect(revoked.code).toBe(78);
    expect(revoked.stderr).toContain('run `poplar fetch authorize a2 --sink`');
  }, 60_000);
});
