/**
 * Authentication interop: real clients (mpop, curl, fetchmail, Python's
 * poplib) log in to Poplar with every mechanism it offers, and each run
 * retrieves the maildrop. The server's own log (a capturing logger) says which
 * mechanism the client actually used. OAuth tokens are JWTs verified against a
 * real JWKS served over HTTP on 127.0.0.1.
 *
 * Users: alice is stored as {PLAIN} (serves every mechanism), sam as
 * {SCRAM-SHA-256} and carl as {CRAM-MD5} (each serves only its own mechanism
 * besides the password-based ones); the stored secrets come from Dovecot's
 * `doveadm pw`, so every test here needs doveadm besides its own client.
 *
 * Client quirks found on the way are noted where they matter.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ChainAuthenticator } from '../../src/auth/chain.js';
import { OAuthAuthenticator } from '../../src/auth/oauth/index.js';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { Pop3Client } from '../../src/client/index.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';
import { AUDIENCE, ISSUER, startJwks, type JwksServer } from './auth-jwks.js';
import { lacks } from '../helpers/peers.js';
import { capturingLogger, run, type LogRecord, type RunResult } from './run.js';

const execFileP = promisify(execFile);
const CLIENT_TIMEOUT_MS = 20_000;

/** name → password, the stored scheme, and the messages delivered to it. */
const USERS = {
  alice: { password: 'secret', scheme: 'PLAIN' },
  sam: { password: 'pencil-sam', scheme: 'SCRAM-SHA-256' },
  carl: { password: 'carl-pw', scheme: 'CRAM-MD5' },
} as const;
type UserName = keyof typeof USERS;

const MECHS = ['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-1-PLUS', 'SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'OAUTHBEARER', 'XOAUTH2', 'PLAIN', 'LOGIN'];

let srv: TestServer;
let noApop: TestServer;
let jwks: JwksServer;
let records: LogRecord[];
let tmp: string;
/** What each user's maildrop holds, in order. */
const delivered = new Map<UserName, string[]>();
/** Every test here logs in with secrets Dovecot made. */
const NO_DOVEADM = lacks('doveadm');

/** `{SCHEME}...` as Dovecot's `doveadm pw` encodes it. */
async function storedSecret(password: string, scheme: 'PLAIN' | 'SCRAM-SHA-256' | 'CRAM-MD5'): Promise<string> {
  if (scheme === 'PLAIN') return `{PLAIN}${password}`;
  const { stdout } = await execFileP('doveadm', ['pw', '-s', scheme, '-p', password]);
  return stdout.trim();
}

beforeAll(async () => {
  if (NO_DOVEADM) return; // every test is skipped (or, with CI=true, the run fails on the missing peer)
  const cap = capturingLogger();
  records = cap.records;
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-auth-interop-'));
  jwks = await startJwks();

  const lines: string[] = [];
  for (const [name, u] of Object.entries(USERS) as [UserName, (typeof USERS)[UserName]][]) {
    const secret = await storedSecret(u.password, u.scheme);
    expect(secret.startsWith(`{${u.scheme}}`), secret).toBe(true);
    lines.push(`${name}:${secret}::::::`);
  }
  const usersFile = path.join(tmp, 'users');
  await fs.writeFile(usersFile, lines.join('\n') + '\n', { mode: 0o600 });
  const passwd = new PasswdFileAuthenticator(usersFile, { checkIntervalMs: 0 });
  const oauth = new OAuthAuthenticator({ jwks_url: jwks.url, issuer: ISSUER, audience: AUDIENCE, timeout: 2 });
  srv = await startTestServer({
    logger: cap.logger,
    oauth: true,
    authenticator: new ChainAuthenticator([
      { authenticator: passwd, kinds: ['password'], name: 'passwd-file' },
      { authenticator: oauth, kinds: ['bearer'], name: 'oauth' },
    ]),
    settings: { sasl_mechanisms: MECHS, apop: true, max_bad_commands: 1000 },
  });
  for (const name of Object.keys(USERS) as UserName[]) {
    const msgs = [1, 2].map((i) => `From: test@example.org\r\nSubject: ${name} message ${i}\r\n\r\nbody of ${name} ${i}\r\n.dot line\r\n`);
    for (const m of msgs) await srv.deliver(name, m);
    delivered.set(name, msgs);
  }
  noApop = await startTestServer({ users: [{ name: 'alice', password: 'secret' }] });
}, 60_000);

afterAll(async () => {
  await srv?.stop();
  await noApop?.stop();
  await jwks?.close();
  if (tmp) await fs.rm(tmp, { recursive: true, force: true });
});

function cleanEnv(home: string): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: home, LC_ALL: 'C', TZ: 'UTC' };
}

async function workdir(name: string): Promise<string> {
  return fs.mkdtemp(path.join(tmp, `${name}-`));
}

/**
 * The logins the server logged since `mark`, once the sessions that logged in
 * (and the failed ones) have ended.
 */
async function loginsSince(mark: number): Promise<{ logins: LogRecord[]; failures: LogRecord[]; ends: LogRecord[] }> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const recent = records.slice(mark);
    const logins = recent.filter((r) => r.msg === 'login');
    const failures = recent.filter((r) => r.event === 'auth-failed');
    const ends = recent.filter((r) => r.event === 'logout');
    if ((ends.length >= 1 && ends.filter((e) => e.user !== undefined).length >= logins.length) || Date.now() > deadline) return { logins, failures, ends };
    await sleep(20);
  }
}

/** Exactly one login, as `user` with `mech`, that RETRieved `retr` messages and ended with QUIT. */
async function expectLogin(mark: number, want: { user: string; mech: string; tls: boolean; retr: number }, r?: RunResult): Promise<void> {
  const { logins, ends, failures } = await loginsSince(mark);
  const why = `server log:\n${JSON.stringify(records.slice(mark), null, 1).slice(0, 3000)}\n${r?.describe ?? ''}`;
  expect(failures, why).toEqual([]);
  expect(
    logins.map((l) => ({ user: l.user, mech: l.mech, tls: l.tls })),
    why,
  ).toEqual([{ user: want.user, mech: want.mech, tls: want.tls }]);
  const mine = ends.filter((e) => e.user === want.user);
  expect(mine.map((e) => [e.reason, e.retr]), why).toEqual([['QUIT', want.retr]]);
}

/** Files in a Maildir's new/, in name order, as text. */
async function maildirMessages(md: string): Promise<string[]> {
  const names = (await fs.readdir(path.join(md, 'new'))).sort();
  return Promise.all(names.map((n) => fs.readFile(path.join(md, 'new', n), 'latin1')));
}

/** mpop -d writes its session transcript (`<--` / `-->` lines) to stdout. */
function transcript(r: RunResult): string {
  return r.stdout.toString('latin1');
}

/** A client hands on the message with its line ends as it likes; compare on LF. */
const lf = (s: string): string => s.replace(/\r\n/g, '\n');

// ---------------------------------------------------------------------------

describe.skipIf(lacks('mpop') || NO_DOVEADM)('mpop', () => {
  interface MpopCase {
    auth: string;
    user: UserName;
    /** What mpop is given as the password: the user's password, or an OAuth token. */
    secret?: 'password' | 'token';
    transport: 'plain' | 'stls' | 'implicit';
    /** The mechanism the server must see. */
    mech: string;
  }
  const cases: MpopCase[] = [
    // mpop's `auth on` skips cleartext methods while TLS is off; naming the method makes it use it (loopback is allowed here).
    { auth: 'user', user: 'alice', transport: 'plain', mech: 'USER' },
    { auth: 'plain', user: 'alice', transport: 'plain', mech: 'PLAIN' },
    { auth: 'login', user: 'alice', transport: 'plain', mech: 'LOGIN' },
    { auth: 'cram-md5', user: 'alice', transport: 'plain', mech: 'CRAM-MD5' },
    { auth: 'cram-md5', user: 'carl', transport: 'plain', mech: 'CRAM-MD5' },
    { auth: 'scram-sha-1', user: 'alice', transport: 'plain', mech: 'SCRAM-SHA-1' },
    { auth: 'scram-sha-256', user: 'alice', transport: 'plain', mech: 'SCRAM-SHA-256' },
    { auth: 'scram-sha-256', user: 'sam', transport: 'plain', mech: 'SCRAM-SHA-256' },
    // Under TLS the server also offers SCRAM-SHA-256-PLUS; mpop (GNU SASL) has no -PLUS and must not be taken for a downgrade.
    { auth: 'scram-sha-256', user: 'sam', transport: 'implicit', mech: 'SCRAM-SHA-256' },
    { auth: 'scram-sha-1', user: 'alice', transport: 'stls', mech: 'SCRAM-SHA-1' },
    { auth: 'apop', user: 'alice', transport: 'plain', mech: 'APOP' },
    // mpop takes the access token as the password for the bearer mechanisms.
    { auth: 'oauthbearer', user: 'alice', secret: 'token', transport: 'implicit', mech: 'OAUTHBEARER' },
    { auth: 'xoauth2', user: 'alice', secret: 'token', transport: 'stls', mech: 'XOAUTH2' },
  ];

  const gs2Seen = new Set<string>();
  afterAll(() => {
    // Neither 'y' (which would be taken for a downgrade while -PLUS is offered) nor 'p': mpop never does channel binding.
    expect([...gs2Seen].sort()).toEqual(['implicit: n,', 'plain: n,', 'stls: n,']);
  });

  function transportConf(t: MpopCase['transport']): string[] {
    if (t === 'plain') return ['host 127.0.0.1', `port ${srv.port}`, 'tls off'];
    const trust = `tls_trust_file ${srv.certFile}`;
    if (t === 'stls') return ['host localhost', `port ${srv.port}`, 'tls on', 'tls_starttls on', trust];
    return ['host localhost', `port ${srv.tlsPort}`, 'tls on', 'tls_starttls off', trust];
  }

  async function mpop(c: MpopCase, password: string): Promise<{ r: RunResult; md: string; mark: number }> {
    const dir = await workdir(`mpop-${c.auth}`);
    const md = path.join(dir, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(md, sub), { recursive: true });
    const conf = path.join(dir, 'mpoprc');
    // mpop refuses configuration lines over 500 characters, and an RS256 JWT is longer: hand it over through passwordeval.
    const secretFile = path.join(dir, 'secret');
    await fs.writeFile(secretFile, password, { mode: 0o600 });
    await fs.writeFile(
      conf,
      [
        'account test',
        ...transportConf(c.transport),
        'timeout 15',
        `auth ${c.auth}`,
        `user ${c.user}`,
        `passwordeval "cat ${secretFile}"`,
        `delivery maildir ${md}`,
        `uidls_file ${path.join(dir, 'uidls')}`,
        'keep on',
        'only_new off',
        'received_header off',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const mark = records.length;
    const r = await run('mpop', ['-C', conf, '-a', '-d'], { env: cleanEnv(dir), timeoutMs: CLIENT_TIMEOUT_MS });
    return { r, md, mark };
  }

  for (const c of cases) {
    it(`auth ${c.auth} as ${c.user} ({${USERS[c.user].scheme}}) over ${c.transport}: retrieves the maildrop`, async () => {
      const secret = c.secret === 'token' ? await jwks.token(c.user) : USERS[c.user].password;
      const { r, md, mark } = await mpop(c, secret);
      expect(r.code, r.describe).toBe(0);
      const got = await maildirMessages(md);
      expect(got.map(lf), r.describe).toEqual(delivered.get(c.user)!.map(lf));
      await expectLogin(mark, { user: c.user, mech: c.mech, tls: c.transport !== 'plain', retr: 2 }, r);
      if (c.mech.startsWith('SCRAM')) {
        // The server's v= went out as a challenge and mpop answered it with an empty line (RFC 5034 §4).
        expect(transcript(r), r.describe).toMatch(/<-- \+ dj[0-9A-Za-z+/=]+\r?\n--> \r?\n<-- \+OK/);
        // GNU SASL sends no initial response: AUTH, the empty challenge `+ `, then client-first. Its gs2 flag:
        const first = /--> AUTH SCRAM-[A-Z0-9-]+\r?\n<-- \+ \r?\n--> ([A-Za-z0-9+/=]+)/.exec(transcript(r));
        expect(first, r.describe).not.toBeNull();
        gs2Seen.add(`${c.transport}: ${Buffer.from(first![1]!, 'base64').toString('latin1').slice(0, 2)}`);
      }
    });
  }

  it('a {SCRAM-SHA-256} user cannot log in with SCRAM-SHA-1: -ERR [AUTH], no login, nothing retrieved', async () => {
    const { r, md, mark } = await mpop({ auth: 'scram-sha-1', user: 'sam', transport: 'plain', mech: '' }, USERS.sam.password);
    expect(r.code, r.describe).not.toBe(0);
    expect(transcript(r), r.describe).toMatch(/<-- -ERR \[AUTH\]/);
    expect(await maildirMessages(md)).toEqual([]);
    const { logins, failures } = await loginsSince(mark);
    expect(logins).toEqual([]);
    expect(failures.map((f) => [f.user, f.mech])).toEqual([['sam', 'SCRAM-SHA-1']]);
  });

  it('an expired token is refused: mpop sees the error challenge, answers it, gets -ERR [AUTH]', async () => {
    const token = await jwks.token('alice', { expiresIn: -3600 });
    const { r, md, mark } = await mpop({ auth: 'oauthbearer', user: 'alice', secret: 'token', transport: 'implicit', mech: '' }, token);
    expect(r.code, r.describe).not.toBe(0);
    // The JSON error challenge, mpop's answer, then -ERR. Quirk: mpop 1.4.18 answers with an empty line where
    // RFC 7628 §3.2.3 wants a single 0x01 (AQ==); the server ends the exchange with -ERR either way.
    expect(transcript(r), r.describe).toMatch(/<-- \+ eyJ[A-Za-z0-9+/=]*\r?\n--> \r?\n<-- -ERR \[AUTH\]/);
    expect(await maildirMessages(md)).toEqual([]);
    const { logins, failures } = await loginsSince(mark);
    expect(logins).toEqual([]);
    expect(failures.map((f) => f.mech)).toEqual(['OAUTHBEARER']);
  });
});

// ---------------------------------------------------------------------------

describe.skipIf(lacks('curl') || NO_DOVEADM)('curl', () => {
  async function curl(user: UserName, extra: string[], creds?: string, messages = [1, 2]): Promise<{ r: RunResult; dir: string; mark: number }> {
    const dir = await workdir('curl');
    const args = ['-q', '-sS', '-v', '--max-time', '15', '-u', creds ?? `${user}:${USERS[user].password}`, ...extra];
    // One invocation, one connection for all URLs while it works (after a failed login curl connects again for the next URL).
    for (const n of messages) args.push(`pop3://127.0.0.1:${srv.port}/${n}`, '-o', path.join(dir, `m${n}`));
    const mark = records.length;
    const r = await run('curl', args, { env: cleanEnv(dir), timeoutMs: CLIENT_TIMEOUT_MS });
    return { r, dir, mark };
  }

  async function expectRetrieved(dir: string, user: UserName, r: RunResult): Promise<void> {
    const got = await Promise.all([1, 2].map((n) => fs.readFile(path.join(dir, `m${n}`), 'latin1')));
    expect(got, r.describe).toEqual(delivered.get(user));
  }

  const cases: { opt: string; user: UserName; mech: string }[] = [
    { opt: 'AUTH=PLAIN', user: 'alice', mech: 'PLAIN' },
    { opt: 'AUTH=LOGIN', user: 'alice', mech: 'LOGIN' },
    { opt: 'AUTH=CRAM-MD5', user: 'alice', mech: 'CRAM-MD5' },
    { opt: 'AUTH=CRAM-MD5', user: 'carl', mech: 'CRAM-MD5' },
  ];
  for (const c of cases) {
    it(`--login-options ${c.opt} as ${c.user} ({${USERS[c.user].scheme}}): RETR 1 and 2`, async () => {
      const { r, dir, mark } = await curl(c.user, ['--login-options', c.opt]);
      expect(r.code, r.describe).toBe(0);
      expect(r.stderr, r.describe).toMatch(new RegExp(`^> AUTH ${c.mech}`, 'm'));
      await expectRetrieved(dir, c.user, r);
      await expectLogin(mark, { user: c.user, mech: c.mech, tls: false, retr: 2 }, r);
    });
  }

  it('--oauth2-bearer: curl picks a bearer mechanism from CAPA and logs in', async () => {
    const token = await jwks.token('alice');
    const { r, dir, mark } = await curl('alice', ['--oauth2-bearer', token], 'alice:');
    expect(r.code, r.describe).toBe(0);
    const used = /^> AUTH ([A-Z0-9-]+)/m.exec(r.stderr)?.[1];
    // curl 7.88 prefers OAUTHBEARER when both are offered.
    expect(['OAUTHBEARER', 'XOAUTH2'], r.describe).toContain(used);
    expect(used, r.describe).toBe('OAUTHBEARER');
    await expectRetrieved(dir, 'alice', r);
    await expectLogin(mark, { user: 'alice', mech: used!, tls: false, retr: 2 }, r);
  });

  it('--oauth2-bearer with a token for another user: refused, curl exits with a login error', async () => {
    const token = await jwks.token('bob');
    const { r, mark } = await curl('alice', ['--oauth2-bearer', token], 'alice:', [1]);
    expect(r.code, r.describe).toBe(67); // CURLE_LOGIN_DENIED
    expect(r.stderr, r.describe).toMatch(/^< -ERR \[AUTH\]/m);
    const { logins, failures } = await loginsSince(mark);
    expect(logins).toEqual([]);
    expect(failures.map((f) => [f.user, f.mech])).toEqual([['alice', 'OAUTHBEARER']]);
  });
});

// ---------------------------------------------------------------------------

describe.skipIf(lacks('fetchmail') || NO_DOVEADM)('fetchmail', () => {
  for (const user of ['alice', 'carl'] as const) {
    it(`auth cram-md5 as ${user} ({${USERS[user].scheme}}): fetches every message`, async () => {
      const dir = await workdir('fetchmail');
      const out = path.join(dir, 'out');
      await fs.mkdir(out);
      const mda = path.join(dir, 'mda.sh');
      // fetchmail runs one MDA per message, one after the other.
      await fs.writeFile(mda, '#!/bin/sh\nn=$(ls "$1" | wc -l)\nexec cat > "$1/$(printf %05d "$n")"\n', { mode: 0o755 });
      const rc = path.join(dir, 'fetchmailrc');
      await fs.writeFile(
        rc,
        [
          'set no syslog',
          'set invisible',
          // sslproto '': without it fetchmail 6.4 upgrades with STLS on its own and then fails its certificate check.
          `poll 127.0.0.1 port ${srv.port} protocol pop3 auth cram-md5 timeout 15`,
          `  user "${user}" password "${USERS[user].password}" is "${user}" here`,
          `  sslproto ''`,
          '  options keep no rewrite no stripcr',
          `  mda "${mda} ${out}"`,
          '',
        ].join('\n'),
        { mode: 0o600 },
      );
      const mark = records.length;
      const r = await run('fetchmail', ['-f', rc, '-v', '--nosyslog', '--nodetach', '--fetchall', '--pidfile', path.join(dir, 'pid'), '-i', path.join(dir, 'ids')], {
        env: cleanEnv(dir),
        timeoutMs: CLIENT_TIMEOUT_MS,
      });
      expect(r.code, r.describe).toBe(0);
      const text = `${r.stdout.toString('latin1')}${r.stderr}`;
      expect(text, r.describe).toMatch(/POP3> AUTH CRAM-MD5/);
      const names = (await fs.readdir(out)).sort();
      const got = await Promise.all(names.map((n) => fs.readFile(path.join(out, n), 'latin1')));
      expect(got.map(lf), r.describe).toEqual(delivered.get(user)!.map(lf));
      await expectLogin(mark, { user, mech: 'CRAM-MD5', tls: false, retr: 2 }, r);
    });
  }
});

// ---------------------------------------------------------------------------

const POPLIB_APOP = `
import json, poplib, sys
host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = poplib.POP3(host, port, timeout=15)
out = {'welcome': c.getwelcome().decode('latin1')}
try:
    out['apop'] = c.apop(user, password).decode('latin1')
except poplib.error_proto as e:
    a = e.args[0] if e.args else e
    out['apop_error'] = a.decode('latin1') if isinstance(a, bytes) else str(a)
    out['quit'] = c.quit().decode('latin1')
    print(json.dumps(out)); sys.exit(0)
out['stat'] = list(c.stat())
out['retr'] = [b'\\r\\n'.join(c.retr(n)[1]).decode('latin1') + '\\r\\n' for n in (1, 2)]
out['quit'] = c.quit().decode('latin1')
print(json.dumps(out))
`;

describe.skipIf(lacks('python3') || NO_DOVEADM)('Python poplib APOP', () => {
  interface ApopOut {
    welcome: string;
    apop?: string;
    apop_error?: string;
    stat?: [number, number];
    retr?: string[];
    quit: string;
  }
  async function poplib(port: number, user: string, password: string): Promise<{ out: ApopOut; r: RunResult }> {
    const r = await run('python3', ['-c', POPLIB_APOP, '127.0.0.1', String(port), user, password], { env: cleanEnv(tmp), timeoutMs: CLIENT_TIMEOUT_MS });
    expect(r.code, r.describe).toBe(0);
    return { out: JSON.parse(r.stdout.toString('utf8')) as ApopOut, r };
  }

  it('apop() with the greeting timestamp logs in and retrieves the maildrop', async () => {
    const mark = records.length;
    const { out, r } = await poplib(srv.port, 'alice', USERS.alice.password);
    expect(out.welcome).toMatch(/^\+OK Poplar ready\. <[^<>@\s]+@[^<>@\s]+>$/);
    expect(out.apop).toMatch(/^\+OK/);
    expect(out.retr).toEqual(delivered.get('alice'));
    expect(out.quit).toMatch(/^\+OK/);
    await expectLogin(mark, { user: 'alice', mech: 'APOP', tls: false, retr: 2 }, r);
  });

  it('every connection gets a fresh timestamp; an old digest (replay) is refused with [AUTH]', async () => {
    const a = await Wire.connect(srv.port);
    const b = await Wire.connect(srv.port);
    const ta = /<[^>]+>/.exec(await a.line())![0];
    const tb = /<[^>]+>/.exec(await b.line())![0];
    expect(ta).not.toBe(tb);
    const { createHash } = await import('node:crypto');
    const digestA = createHash('md5').update(ta + USERS.alice.password).digest('hex');
    expect(await b.cmd(`APOP alice ${digestA}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await a.cmd(`APOP alice ${digestA}`)).toBe('+OK Logged in.');
    for (const w of [a, b]) {
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      await w.closed();
    }
  });

  it('a user whose secret cannot serve APOP ({SCRAM-SHA-256}) is refused like a wrong password', async () => {
    const { out } = await poplib(srv.port, 'sam', USERS.sam.password);
    expect(out.apop_error).toBe('-ERR [AUTH] Authentication failed.');
  });

  it('without `apop` the greeting has no timestamp, poplib refuses on its own, and APOP is -ERR', async () => {
    const { out } = await poplib(noApop.port, 'alice', 'secret');
    expect(out.welcome).toBe('+OK Poplar ready.');
    expect(out.apop_error).toBe('-ERR APOP not supported by server'); // poplib's own message: it never sent APOP
    const w = await Wire.connect(noApop.port);
    expect(await w.line()).toBe('+OK Poplar ready.');
    const reply = await w.cmd('APOP alice c4c9334bac560ecc979e58001b3e22fb');
    expect(reply).toMatch(/^-ERR /);
    expect(reply).not.toMatch(/\[AUTH\]/);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });
});

// ---------------------------------------------------------------------------

describe.skipIf(NO_DOVEADM)('SCRAM-*-PLUS with Poplar’s own client (no installed client speaks -PLUS: mpop lists no -PLUS method)', () => {
  const cases = [
    { user: 'alice' as const, mech: 'SCRAM-SHA-256-PLUS', tls: 'implicit' as const },
    { user: 'alice' as const, mech: 'SCRAM-SHA-1-PLUS', tls: 'starttls' as const },
    { user: 'sam' as const, mech: 'SCRAM-SHA-256-PLUS', tls: 'starttls' as const },
  ];
  for (const c of cases) {
    it(`${c.mech} as ${c.user} ({${USERS[c.user].scheme}}) over ${c.tls} TLS`, async () => {
      const mark = records.length;
      const client = await Pop3Client.connect({
        host: 'localhost',
        port: c.tls === 'implicit' ? srv.tlsPort : srv.port,
        tls: c.tls,
        ca: srv.cert,
      });
      expect(client.tlsProtocol).toBe('TLSv1.3'); // so the binding is tls-exporter (RFC 9266)
      expect((await client.capa()).get('SASL')).toEqual(MECHS);
      // Without a mechanism the client picks the strongest: -PLUS.
      const used = await client.login(c.user, USERS[c.user].password, c.mech === 'SCRAM-SHA-256-PLUS' ? {} : { mechanism: c.mech });
      expect(used).toBe(c.mech);
      const msgs = await Promise.all([1, 2].map((n) => client.retrBuffer(n)));
      expect(msgs.map((m) => m.toString('latin1'))).toEqual(delivered.get(c.user));
      await client.quit();
      await expectLogin(mark, { user: c.user, mech: c.mech, tls: true, retr: 2 });
    });
  }

  it('the -PLUS mechanisms are offered only under TLS', async () => {
    const w = await Wire.connect(srv.port);
    await w.line();
    const { lines } = await w.cmdLines('CAPA');
    const sasl = lines.find((l) => l.startsWith('SASL '))!.split(' ').slice(1);
    expect(sasl).toEqual(MECHS.filter((m) => !m.endsWith('-PLUS')));
    expect(await w.cmd('AUTH SCRAM-SHA-256-PLUS')).toMatch(/^-ERR /);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });
});

// ---------------------------------------------------------------------------

describe.skipIf(NO_DOVEADM)('OAuth bearer tokens against the JWKS: refusals on the wire', () => {
  const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  const xoauth2 = (user: string, token: string): string => b64(`user=${user}\x01auth=Bearer ${token}\x01\x01`);
  const oauthbearer = (user: string, token: string): string => b64(`n,a=${user},\x01host=localhost\x01port=${srv.port}\x01auth=Bearer ${token}\x01\x01`);

  async function connect(port = srv.port): Promise<Wire> {
    const w = await Wire.connect(port);
    expect(await w.line()).toMatch(/^\+OK Poplar ready/);
    return w;
  }

  /** One refused attempt per mechanism: the JSON error challenge, the client's answer, then -ERR [AUTH]; the session goes on. */
  async function expectRefused(token: string, user = 'alice'): Promise<void> {
    const w = await connect();
    w.send(`AUTH XOAUTH2 ${xoauth2(user, token)}`);
    const c1 = await w.line();
    expect(c1).toMatch(/^\+ [A-Za-z0-9+/=]+$/);
    expect(JSON.parse(Buffer.from(c1.slice(2), 'base64').toString('utf8'))).toEqual({ status: '401', schemes: 'bearer' });
    expect(await w.cmd('')).toBe('-ERR [AUTH] Authentication failed.');

    w.send(`AUTH OAUTHBEARER ${oauthbearer(user, token)}`);
    const c2 = await w.line();
    expect(c2).toMatch(/^\+ [A-Za-z0-9+/=]+$/);
    expect(JSON.parse(Buffer.from(c2.slice(2), 'base64').toString('utf8'))).toMatchObject({ status: 'invalid_token' });
    expect(await w.cmd('AQ==')).toBe('-ERR [AUTH] Authentication failed.');

    // Still in AUTHORIZATION: a good token works on the same connection.
    expect(await w.cmd(`AUTH XOAUTH2 ${xoauth2('alice', await jwks.token('alice'))}`)).toBe('+OK Logged in.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
  }

  it('a valid token works with both mechanisms, with the initial response and after an empty challenge', async () => {
    const token = await jwks.token('alice');
    const w = await connect();
    expect(await w.cmd('AUTH OAUTHBEARER')).toBe('+ ');
    expect(await w.cmd(oauthbearer('alice', token))).toBe('+OK Logged in.');
    expect(await w.cmd('STAT')).toMatch(/^\+OK 2 /);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    const w2 = await connect();
    expect(await w2.cmd('AUTH XOAUTH2')).toBe('+ ');
    expect(await w2.cmd(xoauth2('ALICE', token))).toBe('+OK Logged in.'); // the claim is matched case-insensitively
    expect(await w2.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('expired', async () => expectRefused(await jwks.token('alice', { expiresIn: -3600 })));
  it('wrong audience', async () => expectRefused(await jwks.token('alice', { audience: 'someone-else' })));
  it('wrong issuer', async () => expectRefused(await jwks.token('alice', { issuer: 'https://evil.example' })));
  it('bad signature (a key the JWKS does not hold, same kid)', async () => expectRefused(await jwks.token('alice', { foreignKey: true })));
  it('a tampered payload', async () => {
    const [h, , s] = (await jwks.token('alice')).split('.');
    const forged = Buffer.from(JSON.stringify({ email: 'alice', iss: ISSUER, aud: AUDIENCE, exp: 4102444800 })).toString('base64url');
    await expectRefused(`${h}.${forged}.${s}`);
  });
  it('a token for another user', async () => expectRefused(await jwks.token('bob')));
  it('not a JWT at all', async () => expectRefused('not-a-jwt'));

  it('a bearer token is not a password: PASS and PLAIN with a valid token fail', async () => {
    const token = await jwks.token('alice');
    const w = await connect();
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd(`PASS ${token}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd(`AUTH PLAIN ${b64(`\0alice\0${token}`)}`)).toBe('-ERR [AUTH] Authentication failed.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('JWKS endpoint down → -ERR [SYS/TEMP], no error challenge; passwords still work', async () => {
    const dead = await startJwks();
    const url = dead.url;
    await dead.close(); // nothing listens there now
    const { logger, records: recs } = capturingLogger();
    const down = await startTestServer({
      logger,
      oauth: true,
      authenticator: new ChainAuthenticator([
        { authenticator: new PasswdFileAuthenticator(path.join(tmp, 'users'), { checkIntervalMs: 0 }), kinds: ['password'] },
        { authenticator: new OAuthAuthenticator({ jwks_url: url, issuer: ISSUER, audience: AUDIENCE, timeout: 2 }), kinds: ['bearer'] },
      ]),
    });
    try {
      const w = await connect(down.port);
      const token = await jwks.token('alice');
      expect(await w.cmd(`AUTH XOAUTH2 ${xoauth2('alice', token)}`)).toBe('-ERR [SYS/TEMP] Authentication is temporarily unavailable.');
      expect(await w.cmd(`AUTH OAUTHBEARER ${oauthbearer('alice', token)}`)).toBe('-ERR [SYS/TEMP] Authentication is temporarily unavailable.');
      expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      // Not counted as a failed login (no fail2ban line for an outage).
      expect(recs.filter((r) => r.event === 'auth-failed')).toEqual([]);
    } finally {
      await down.stop();
    }
  });
});

describe.skipIf(NO_DOVEADM)('the server log', () => {
  it('has no error lines: every refusal above was a failure, not a fault', () => {
    expect(records.filter((r) => Number(r.level) >= 50)).toEqual([]);
  });
});
