/**
 * Authentication through real sockets: PostgreSQL users (in process and
 * through the real `poplar serve` with a TOML config), brute-force
 * resistance (growing delays, address blocks, resets), mechanisms a stored
 * secret cannot serve, the RFC 5034 wire rules of the challenge-response
 * mechanisms, and SASL EXTERNAL with TLS client
 * certificates.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { PostgresAuthenticator, addUser, createPostgresPool, setEnabled } from '../../src/auth/postgres/index.js';
import { hashPassword } from '../../src/auth/schemes.js';
import { Pop3Client, Pop3ServerError } from '../../src/client/index.js';
import { readTlsFiles } from '../../src/config/tls-material.js';
import { CramMd5Client, ScramClient, apopDigest, type ChannelBindingType } from '../../src/protocol/sasl/index.js';
import { Pop3Server } from '../../src/server/server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { putMessage, startTestServer, testCertificate, testSettings, type TestServer } from '../helpers/server.js';
import { POSTGRES_CONNECTION, lacks, lacksPostgres } from '../helpers/peers.js';
import { capturingLogger, type LogRecord } from '../interop/run.js';
import { LineClient, TcpRelay, b64, makeClientPki, unb64, type ClientPki } from './auth-helpers.js';

const AUTH_FAILED = '-ERR [AUTH] Authentication failed.';
const SYS_TEMP = '-ERR [SYS/TEMP] Authentication is temporarily unavailable.';
const ALL_PASSWORD_MECHS = ['SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'PLAIN', 'LOGIN'];

const PG = POSTGRES_CONNECTION;
const pgUrl = (port = PG.port): string => `postgres://${PG.user}@${PG.host}:${port}/${PG.database}`;
const PG_DOWN = await lacksPostgres();

const tmpDirs: string[] = [];
async function tmpdir(prefix: string): Promise<string> {
  const d = await fs.mkdtemp(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}
afterAll(async () => {
  for (const d of tmpDirs) await fs.rm(d, { recursive: true, force: true });
});

async function greet(c: LineClient): Promise<LineClient> {
  expect(await c.line()).toMatch(/^\+OK Poplar ready\./);
  return c;
}
const connect = async (port: number, localAddress?: string): Promise<LineClient> =>
  greet(await LineClient.connect(port, localAddress !== undefined ? { localAddress } : {}));

async function userPass(c: LineClient, user: string, password: string): Promise<string> {
  expect(await c.cmd(`USER ${user}`)).toBe('+OK');
  return c.cmd(`PASS ${password}`);
}

interface ScramRun {
  /** The server's first challenge (decoded), or the reply that ended the exchange early. */
  serverFirst?: string;
  /** The final challenge line as sent (`+ base64`) when there was one. */
  finalLine?: string;
  /** The line that ended the exchange. */
  result: string;
  client: ScramClient;
}

/**
 * A SCRAM exchange by hand on the wire: AUTH with the client-first as initial
 * response, client-final, then `answer` to the server's `v=` challenge (default:
 * the empty line RFC 5034 §4 asks for).
 */
async function scram(
  c: LineClient,
  o: {
    mech?: string;
    user: string;
    password: string;
    plus?: boolean;
    channelBinding?: { type: ChannelBindingType; data: Buffer };
    answer?: string;
    /** Replace the client-final with this line. */
    finalOverride?: string;
  },
): Promise<ScramRun> {
  const client = new ScramClient({
    algorithm: (o.mech ?? 'SCRAM-SHA-256').includes('SHA-1') ? 'SHA-1' : 'SHA-256',
    plus: o.plus ?? false,
    username: o.user,
    password: o.password,
    ...(o.channelBinding !== undefined ? { channelBinding: o.channelBinding } : {}),
  });
  const first = await c.cmd(`AUTH ${o.mech ?? client.name} ${b64(client.initial())}`);
  if (!first.startsWith('+ ')) return { result: first, client };
  const serverFirst = unb64(first.slice(2));
  const final = await c.cmd(o.finalOverride ?? b64(client.respond(Buffer.from(serverFirst, 'utf8'))));
  if (!final.startsWith('+ ')) return { serverFirst, result: final, client };
  client.respond(Buffer.from(final.slice(2), 'base64')); // checks the server signature
  return { serverFirst, finalLine: final, result: await c.cmd(o.answer ?? ''), client };
}

async function expectNotLoggedIn(c: LineClient): Promise<void> {
  expect(await c.cmd('STAT')).toBe('-ERR Not logged in.');
}

// ---------------------------------------------------------------------------

describe.skipIf(PG_DOWN)('PostgreSQL users (in process)', () => {
  const schema = `poplar_auth_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Pool({ ...PG, max: 2 });
  let auth: PostgresAuthenticator;
  let srv: TestServer;
  let records: LogRecord[];
  const customMaildir = path.join(os.tmpdir(), `poplar-auth-custom-${randomBytes(4).toString('hex')}`);

  beforeAll(async () => {
    await admin.query(`CREATE SCHEMA ${schema}`);
    auth = await PostgresAuthenticator.open({ url: pgUrl(), schema, pool_size: 4, connect_timeout: 2, query_timeout: 2 });
    await addUser(auth.pool, { username: 'pgscram', password: await hashPassword('scram-pw', 'SCRAM-SHA-256') });
    await addUser(auth.pool, { username: 'pgplain', password: await hashPassword('plain-pw', 'PLAIN') });
    await addUser(auth.pool, { username: 'pgoff', password: '{PLAIN}off-pw', enabled: false });
    await addUser(auth.pool, { username: 'pgmd', password: '{PLAIN}md-pw', maildir: customMaildir });
    const cap = capturingLogger();
    records = cap.records;
    srv = await startTestServer({ authenticator: auth, logger: cap.logger, settings: { sasl_mechanisms: ALL_PASSWORD_MECHS, max_bad_commands: 1000, auth_failure_delay: 0.01, auth_failure_max_delay: 0.02 } });
    for (const u of ['pgscram', 'pgplain', 'pgoff']) await srv.deliver(u, `Subject: for ${u}\r\n\r\nhi\r\n`);
    await putMessage(path.dirname(customMaildir), path.basename(customMaildir), 'custom-1', 'Subject: custom\r\n\r\nin the maildir column\r\n');
  });
  afterAll(async () => {
    await srv?.stop();
    await auth?.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    await fs.rm(customMaildir, { recursive: true, force: true });
  });

  it('USER/PASS for a {PLAIN} and a {SCRAM-SHA-256} user', async () => {
    for (const [u, p] of [
      ['pgplain', 'plain-pw'],
      ['pgscram', 'scram-pw'],
    ] as const) {
      const c = await connect(srv.port);
      expect(await userPass(c, u, p)).toBe('+OK Logged in.');
      expect(await c.cmd('STAT')).toMatch(/^\+OK 1 \d+$/);
      await c.quit();
    }
  });

  it('SCRAM-SHA-256 for both (stored SCRAM secret and {PLAIN}); SCRAM-SHA-1 only for {PLAIN}', async () => {
    for (const [u, p, mech, ok] of [
      ['pgscram', 'scram-pw', 'SCRAM-SHA-256', true],
      ['pgplain', 'plain-pw', 'SCRAM-SHA-256', true],
      ['pgplain', 'plain-pw', 'SCRAM-SHA-1', true],
      ['pgscram', 'scram-pw', 'SCRAM-SHA-1', false],
    ] as const) {
      const c = await connect(srv.port);
      const r = await scram(c, { mech, user: u, password: p });
      if (ok) {
        expect(r.result, `${u} ${mech}`).toBe('+OK Logged in.');
        expect(r.client.verified).toBe(true);
        expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
      } else {
        expect(r.result, `${u} ${mech}`).toBe(AUTH_FAILED);
        await expectNotLoggedIn(c);
      }
      await c.quit();
    }
    const logins = records.filter((r) => r.msg === 'login' && String(r.mech).startsWith('SCRAM'));
    expect(logins.map((l) => `${l.user} ${l.mech}`)).toEqual(['pgscram SCRAM-SHA-256', 'pgplain SCRAM-SHA-256', 'pgplain SCRAM-SHA-1']);
  });

  it('CRAM-MD5 with the {PLAIN} user (Pop3Client); the SCRAM-stored user cannot, and gets [AUTH]', async () => {
    const client = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    expect(await client.login('pgplain', 'plain-pw', { mechanism: 'CRAM-MD5' })).toBe('CRAM-MD5');
    expect((await client.stat()).count).toBe(1);
    await client.quit();
    const c2 = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    const e = await c2.login('pgscram', 'scram-pw', { mechanism: 'CRAM-MD5' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Pop3ServerError);
    expect((e as Pop3ServerError).message).toMatch(/\[AUTH\]|AUTH/);
    // The session is still usable: the same user logs in with SCRAM.
    expect(await c2.login('pgscram', 'scram-pw', { mechanism: 'SCRAM-SHA-256' })).toBe('SCRAM-SHA-256');
    await c2.quit();
  });

  it('a disabled user is refused by every mechanism exactly like an unknown one, and works once enabled', async () => {
    const c = await connect(srv.port);
    for (const user of ['pgoff', 'nosuchuser']) {
      expect(await userPass(c, user, 'off-pw'), user).toBe(AUTH_FAILED);
      expect(await c.cmd(`AUTH PLAIN ${b64(`\0${user}\0off-pw`)}`), user).toBe(AUTH_FAILED);
      expect((await scram(c, { user, password: 'off-pw' })).result, user).toBe(AUTH_FAILED);
      expect(await c.cmd('AUTH CRAM-MD5'), user).toMatch(/^\+ /);
      expect(await c.cmd(b64(`${user} ${'0'.repeat(32)}`)), user).toBe(AUTH_FAILED);
    }
    await setEnabled(auth.pool, 'pgoff', true);
    try {
      expect(await userPass(c, 'pgoff', 'off-pw')).toBe('+OK Logged in.');
      await c.quit();
    } finally {
      await setEnabled(auth.pool, 'pgoff', false);
    }
  });

  // BUG (reported): CRAM-MD5, SCRAM, APOP and EXTERNAL verify the user themselves and then open the maildrop
  // of a bare `{ username }` principal (Session.loginVerified), so the user database's `maildir` (and `home`)
  // is ignored and the user lands in <maildir_root>/<name>: a different, here empty, maildrop than after
  // USER/PASS. Fixing it needs a principal lookup in the Authenticator interface (src/auth/types.ts).
  // Flip to `it` when fixed.
  it('the `maildir` column applies to every mechanism (SCRAM opens the same maildrop as USER/PASS)', async () => {
    const c = await connect(srv.port);
    expect(await userPass(c, 'pgmd', 'md-pw')).toBe('+OK Logged in.');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
    await c.quit();
    const s = await connect(srv.port);
    expect((await scram(s, { user: 'pgmd', password: 'md-pw' })).result).toBe('+OK Logged in.');
    expect(await s.cmd('STAT')).toMatch(/^\+OK 1 /);
    await s.quit();
  });

  it('PostgreSQL unreachable (a pool on 127.0.0.1:1): [SYS/TEMP] for every mechanism, not counted as a failed login', async () => {
    const cap = capturingLogger();
    const down = new PostgresAuthenticator(createPostgresPool({ url: pgUrl(1), connect_timeout: 1, query_timeout: 1 }), { ownsPool: true });
    const dsrv = await startTestServer({ authenticator: down, logger: cap.logger, settings: { sasl_mechanisms: ALL_PASSWORD_MECHS } });
    try {
      const c = await connect(dsrv.port);
      expect(await userPass(c, 'pgplain', 'plain-pw')).toBe(SYS_TEMP);
      expect(await c.cmd(`AUTH PLAIN ${b64('\0pgplain\0plain-pw')}`)).toBe(SYS_TEMP);
      expect(await c.cmd(`AUTH LOGIN ${b64('pgplain')}`)).toMatch(/^\+ /);
      expect(await c.cmd(b64('plain-pw'))).toBe(SYS_TEMP);
      // SCRAM and CRAM-MD5 look the secret up themselves: after client-first / after the response.
      expect((await scram(c, { user: 'pgplain', password: 'plain-pw' })).result).toBe(SYS_TEMP);
      expect(await c.cmd('AUTH CRAM-MD5')).toMatch(/^\+ /);
      expect(await c.cmd(b64(`pgplain ${'0'.repeat(32)}`))).toBe(SYS_TEMP);
      await expectNotLoggedIn(c);
      await c.quit();
      expect(cap.records.filter((r) => r.event === 'auth-failed')).toEqual([]);
    } finally {
      await dsrv.stop();
      await down.close();
    }
  });
});

// ---------------------------------------------------------------------------

describe.skipIf(PG_DOWN)('poplar serve with a TOML config and PostgreSQL users', () => {
  const schema = `poplar_serve_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Pool({ ...PG, max: 2 });
  const relay = new TcpRelay(PG.port);
  let dir: string;
  let serve: ServeProcess;

  function toml(dbPort: number): string {
    return [
      `data_dir = "${dir}/data"`,
      'log_level = "info"',
      'log_format = "json"',
      '[server]',
      'listen = ["127.0.0.1:0"]',
      'listen_tls = []',
      'auth_failure_delay = 0.05',
      'auth_failure_max_delay = 0.1',
      `sasl_mechanisms = [${ALL_PASSWORD_MECHS.map((m) => `"${m}"`).join(', ')}]`,
      '[auth]',
      'type = "postgres"',
      '[auth.postgres]',
      `url = "${pgUrl(dbPort)}"`,
      `schema = "${schema}"`,
      'pool_size = 2',
      'connect_timeout = 1',
      'query_timeout = 2',
      '',
    ].join('\n');
  }

  beforeAll(async () => {
    dir = await tmpdir('poplar-auth-serve-');
    await admin.query(`CREATE SCHEMA ${schema}`);
    await relay.start();
    const file = path.join(dir, 'poplar.toml');
    await fs.writeFile(file, toml(relay.port));
    serve = await startServe(['--config', file], { expectListeners: 1 });
    // The server migrated the schema at startup; add users the way `poplar user --db` would.
    const pool = createPostgresPool({ url: pgUrl(), schema });
    try {
      await addUser(pool, { username: 'sv', password: await hashPassword('sv-pw', 'SCRAM-SHA-256') });
    } finally {
      await pool.end();
    }
    await putMessage(path.join(dir, 'data', 'mail'), 'sv', 'm1', 'Subject: serve\r\n\r\nvia poplar serve\r\n');
  }, 60_000);
  afterAll(async () => {
    await serve?.stop();
    await relay.cut();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
  });

  it('logs in with USER/PASS and SCRAM-SHA-256; [SYS/TEMP] while the database is unreachable; recovers', async () => {
    const c = await connect(serve.plainPort);
    expect(await c.saslMechanisms()).toEqual(ALL_PASSWORD_MECHS);
    expect(await userPass(c, 'sv', 'sv-pw')).toBe('+OK Logged in.');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
    await c.quit();
    const s = await connect(serve.plainPort);
    expect((await scram(s, { user: 'sv', password: 'sv-pw' })).result).toBe('+OK Logged in.');
    await s.quit();

    await relay.cut();
    const d = await connect(serve.plainPort);
    expect(await userPass(d, 'sv', 'sv-pw')).toBe(SYS_TEMP);
    expect((await scram(d, { user: 'sv', password: 'sv-pw' })).result).toBe(SYS_TEMP);
    expect(await userPass(d, 'sv', 'wrong')).toBe(SYS_TEMP); // no credential verdict without the database
    await d.quit();

    await relay.restore();
    const r = await connect(serve.plainPort);
    expect(await userPass(r, 'sv', 'sv-pw')).toBe('+OK Logged in.');
    await r.quit();

    const log = serve.stderr();
    expect(log).toMatch(/"user":"sv".*"mech":"SCRAM-SHA-256".*"msg":"login"/);
    expect(log).toMatch(/authentication backend failed/);
  });

  it('a database unreachable at startup: exit 78 (EX_CONFIG) with one line naming PostgreSQL', async () => {
    const file = path.join(dir, 'down.toml');
    await fs.writeFile(file, toml(1).replace(`data_dir = "${dir}/data"`, `data_dir = "${dir}/down"`));
    const r = await runPoplar(['serve', '--config', file], { timeoutMs: 20_000 });
    expect(r.code, r.stderr).toBe(78);
    expect(r.stderr.trim().split('\n').filter((l) => l.trim() !== '')).toHaveLength(1);
    expect(r.stderr).toMatch(/PostgreSQL/);
    // No certificate was generated. (data_dir and its mail/ are created before the database is tried, although
    // serve.ts says "before anything is created": reported, not asserted.)
    await expect(fs.access(path.join(dir, 'down', 'tls', 'cert.pem'))).rejects.toThrow();
  });
});

// ---------------------------------------------------------------------------

describe('brute-force resistance', () => {
  const users = [
    { name: 'alice', password: 'secret' },
    { name: 'bob', password: 'bob-pw' },
  ];

  it('failures from one address make the delay grow (0.2 s doubling) up to the cap (2 s)', async () => {
    const srv = await startTestServer({ users, settings: { auth_failure_delay: 0.2, auth_failure_max_delay: 2, auth_block_after: 0 } });
    try {
      const c = await connect(srv.port);
      const ms: number[] = [];
      for (let i = 0; i < 6; i++) {
        expect(await c.cmd('USER alice')).toBe('+OK');
        const { reply, ms: t } = await c.timed('PASS wrong');
        expect(reply).toBe(AUTH_FAILED);
        ms.push(t);
      }
      const why = `reply times (ms): ${ms.map((t) => t.toFixed(0)).join(', ')}`;
      const [t1 = 0, t2 = 0, , t4 = 0, t5 = 0, t6 = 0] = ms;
      // Bounds leave room for a loaded machine: each step is 2x the one before.
      expect(t1, why).toBeGreaterThanOrEqual(190);
      expect(t1, why).toBeLessThan(1000);
      expect(t2, why).toBeGreaterThan(t1);
      expect(t4, why).toBeGreaterThanOrEqual(1500); // 0.2 × 2³
      for (const t of [t5, t6]) {
        expect(t, why).toBeGreaterThanOrEqual(1950); // capped at 2 s ...
        expect(t, why).toBeLessThan(3100); // ... not 3.2 s, 6.4 s
      }
      // The success after all that is answered at once.
      expect(await c.cmd('USER alice')).toBe('+OK');
      const ok = await c.timed('PASS secret');
      expect(ok.reply).toBe('+OK Logged in.');
      expect(ok.ms, why).toBeLessThan(1000);
      await c.quit();
    } finally {
      await srv.stop();
    }
  });

  it('a success resets the user counter (failures for a user count across addresses until then)', async () => {
    const srv = await startTestServer({ users, settings: { auth_failure_delay: 0.2, auth_failure_max_delay: 2, auth_block_after: 0 } });
    try {
      const a = await connect(srv.port, '127.0.0.2');
      for (let i = 0; i < 3; i++) expect(await userPass(a, 'bob', 'wrong')).toBe(AUTH_FAILED);
      // A fresh address, same user: the user's count (4th failure) sets the delay.
      const b = await connect(srv.port, '127.0.0.3');
      expect(await b.cmd('USER bob')).toBe('+OK');
      const before = await b.timed('PASS wrong');
      expect(before.reply).toBe(AUTH_FAILED);
      // A success from yet another address clears bob's counter.
      const ok = await connect(srv.port, '127.0.0.4');
      expect(await userPass(ok, 'bob', 'bob-pw')).toBe('+OK Logged in.');
      await ok.quit();
      const d = await connect(srv.port, '127.0.0.5');
      expect(await d.cmd('USER bob')).toBe('+OK');
      const after = await d.timed('PASS wrong');
      expect(after.reply).toBe(AUTH_FAILED);
      const why = `4th failure ${before.ms.toFixed(0)} ms, first after the success ${after.ms.toFixed(0)} ms`;
      expect(before.ms, why).toBeGreaterThanOrEqual(1500);
      expect(after.ms, why).toBeLessThan(1200); // 0.2 s; without the reset 1.6 s
      // The address that failed keeps its own count: its next failure waits for the 4th (1.6 s).
      expect(await a.cmd('USER alice')).toBe('+OK');
      const again = await a.timed('PASS wrong');
      expect(again.ms, `address count: ${again.ms.toFixed(0)} ms`).toBeGreaterThanOrEqual(1500);
      for (const c of [a, b, d]) await c.quit();
    } finally {
      await srv.stop();
    }
  });

  it('auth_block_after = 3: the 4th attempt is refused with the same -ERR [AUTH] even with the right password, by every mechanism', async () => {
    const cap = capturingLogger();
    const srv = await startTestServer({
      users,
      logger: cap.logger,
      settings: { auth_failure_delay: 0.02, auth_failure_max_delay: 0.05, auth_block_after: 3, sasl_mechanisms: ALL_PASSWORD_MECHS, apop: true },
    });
    try {
      const c = await connect(srv.port, '127.0.0.6');
      const wrong: string[] = [];
      for (let i = 0; i < 3; i++) wrong.push(await userPass(c, 'alice', `wrong${i}`));
      expect(wrong).toEqual([AUTH_FAILED, AUTH_FAILED, AUTH_FAILED]);
      expect(await userPass(c, 'alice', 'secret')).toBe(AUTH_FAILED);
      expect(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe(AUTH_FAILED);
      c.send('AUTH CRAM-MD5');
      const ch = await c.line();
      expect(await c.cmd(b64(new CramMd5Client('alice', 'secret').respond(Buffer.from(ch.slice(2), 'base64'))))).toBe(AUTH_FAILED);
      // SCRAM must not hand a blocked client its proof (`v=`) for a right password: that would tell it the guess was right.
      const s = await scram(c, { user: 'alice', password: 'secret' });
      expect(s.finalLine, 'the server sent v= to a blocked client').toBeUndefined();
      expect(s.result).toBe(AUTH_FAILED);
      await expectNotLoggedIn(c);
      await c.quit();
      const blocked = cap.records.filter((r) => r.event === 'auth-failed' && r.why === 'blocked');
      expect(blocked.length).toBeGreaterThanOrEqual(4);
      // Another address is not blocked.
      const other = await connect(srv.port, '127.0.0.7');
      expect(await userPass(other, 'alice', 'secret')).toBe('+OK Logged in.');
      await other.quit();
    } finally {
      await srv.stop();
    }
  });

  it('unknown user and wrong password: the same reply text and code for USER/PASS, PLAIN, LOGIN, CRAM-MD5, SCRAM and APOP', async () => {
    const srv = await startTestServer({
      users,
      settings: { sasl_mechanisms: ALL_PASSWORD_MECHS, apop: true, max_bad_commands: 1000, auth_failure_delay: 0.01, auth_failure_max_delay: 0.02 },
    });
    try {
      const replies = async (user: string): Promise<string[]> => {
        const c = await connect(srv.port);
        const out: string[] = [];
        out.push(await c.cmd(`USER ${user}`));
        out.push(await c.cmd('PASS wrong'));
        out.push(await c.cmd(`AUTH PLAIN ${b64(`\0${user}\0wrong`)}`));
        out.push(await c.cmd(`AUTH LOGIN ${b64(user)}`));
        out.push(await c.cmd(b64('wrong')));
        out.push((await c.cmd('AUTH CRAM-MD5')).slice(0, 2));
        out.push(await c.cmd(b64(`${user} ${'a'.repeat(32)}`)));
        const s = await scram(c, { user, password: 'wrong' });
        out.push(s.serverFirst === undefined ? 'no server-first' : 'server-first', s.result);
        out.push(await c.cmd(`APOP ${user} ${'b'.repeat(32)}`));
        await c.quit();
        return out;
      };
      const known = await replies('alice');
      expect(known).toEqual(['+OK', AUTH_FAILED, AUTH_FAILED, `+ ${b64('Password:')}`, AUTH_FAILED, '+ ', AUTH_FAILED, 'server-first', AUTH_FAILED, AUTH_FAILED]);
      expect(await replies('nobody-here')).toEqual(known);
    } finally {
      await srv.stop();
    }
  });
});

// ---------------------------------------------------------------------------

describe('a mechanism the stored secret cannot serve fails cleanly', () => {
  let srv: TestServer;
  let records: LogRecord[];
  beforeAll(async () => {
    const dir = await tmpdir('poplar-auth-argon-');
    const file = path.join(dir, 'users');
    await fs.writeFile(file, `argo:${await hashPassword('argo-pw', 'ARGON2ID')}::::::\n`, { mode: 0o600 });
    const cap = capturingLogger();
    records = cap.records;
    srv = await startTestServer({
      authenticator: new PasswdFileAuthenticator(file, { checkIntervalMs: 0 }),
      logger: cap.logger,
      settings: { sasl_mechanisms: ALL_PASSWORD_MECHS, apop: true },
    });
  });
  afterAll(() => srv?.stop());

  it('{ARGON2ID} user: CRAM-MD5, SCRAM-SHA-256, SCRAM-SHA-1, APOP → -ERR [AUTH]; the session goes on and PLAIN then works', async () => {
    const c = await connect(srv.port);
    c.send('AUTH CRAM-MD5');
    const ch = await c.line();
    expect(await c.cmd(b64(new CramMd5Client('argo', 'argo-pw').respond(Buffer.from(ch.slice(2), 'base64'))))).toBe(AUTH_FAILED);
    for (const mech of ['SCRAM-SHA-256', 'SCRAM-SHA-1']) {
      const r = await scram(c, { mech, user: 'argo', password: 'argo-pw' });
      expect(r.serverFirst, mech).toMatch(/^r=[^,]+,s=[A-Za-z0-9+/=]+,i=\d+$/); // a made-up salt: no hint that SCRAM cannot work
      expect(r.result, mech).toBe(AUTH_FAILED);
    }
    const greetingStamp = '<x@y>'; // any digest: the secret cannot serve APOP
    expect(await c.cmd(`APOP argo ${apopDigest(greetingStamp, 'argo-pw')}`)).toBe(AUTH_FAILED);
    await expectNotLoggedIn(c);
    expect(await c.cmd(`AUTH PLAIN ${b64('\0argo\0argo-pw')}`)).toBe('+OK Logged in.');
    await c.quit();
    expect(records.filter((r) => Number(r.level) >= 50)).toEqual([]); // failures, not errors
    expect(records.filter((r) => r.event === 'auth-failed').map((r) => r.mech)).toEqual(['CRAM-MD5', 'SCRAM-SHA-256', 'SCRAM-SHA-1', 'APOP']);
  });
});

// ---------------------------------------------------------------------------

describe('RFC 5034 wire rules for the challenge-response mechanisms', () => {
  let srv: TestServer;
  let records: LogRecord[];
  const PW = { name: 'alice', password: 'secret' };
  beforeAll(async () => {
    const cap = capturingLogger();
    records = cap.records;
    srv = await startTestServer({
      users: [PW],
      logger: cap.logger,
      settings: { sasl_mechanisms: ['SCRAM-SHA-256-PLUS', ...ALL_PASSWORD_MECHS], max_bad_commands: 1000, auth_failure_delay: 0.01, auth_failure_max_delay: 0.02 },
    });
    await srv.deliver('alice', 'Subject: s\n\nbody\n');
  });
  afterAll(() => srv?.stop());

  it('SCRAM\'s v= goes out as a "+ " challenge, the client answers an empty line, then +OK', async () => {
    const c = await connect(srv.port);
    const r = await scram(c, { user: 'alice', password: 'secret' });
    expect(r.serverFirst).toMatch(/^r=[!-+\--~]+,s=[A-Za-z0-9+/=]+,i=(\d+)$/);
    expect(Number(/i=(\d+)$/.exec(r.serverFirst!)![1])).toBeGreaterThanOrEqual(4096);
    expect(r.finalLine).toMatch(/^\+ [A-Za-z0-9+/=]+$/);
    expect(unb64(r.finalLine!.slice(2))).toMatch(/^v=[A-Za-z0-9+/=]+$/);
    expect(r.client.verified).toBe(true);
    expect(r.result).toBe('+OK Logged in.');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
    await c.quit();
  });

  it('without an initial response: "+ " exactly, then client-first', async () => {
    const c = await connect(srv.port);
    const client = new ScramClient({ algorithm: 'SHA-1', username: 'alice', password: 'secret' });
    expect(await c.cmd('AUTH SCRAM-SHA-1')).toBe('+ ');
    const sf = await c.cmd(b64(client.initial()));
    const fin = await c.cmd(b64(client.respond(Buffer.from(sf.slice(2), 'base64'))));
    client.respond(Buffer.from(fin.slice(2), 'base64'));
    expect(await c.cmd('')).toBe('+OK Logged in.');
    await c.quit();
  });

  it('a non-empty answer to v= is -ERR [AUTH] and the session stays in AUTHORIZATION', async () => {
    for (const answer of ['AQ==', b64('v=xyz')]) {
      const c = await connect(srv.port);
      const r = await scram(c, { user: 'alice', password: 'secret', answer });
      expect(r.finalLine).toMatch(/^\+ /);
      expect(r.result).toBe(AUTH_FAILED);
      await expectNotLoggedIn(c);
      expect(await userPass(c, 'alice', 'secret')).toBe('+OK Logged in.');
      await c.quit();
    }
  });

  it('"*" cancels mid-SCRAM (after server-first, or instead of the empty answer): -ERR, state unchanged', async () => {
    const c = await connect(srv.port);
    const r1 = await scram(c, { user: 'alice', password: 'secret', finalOverride: '*' });
    expect(r1.serverFirst).toBeDefined();
    expect(r1.result).toBe('-ERR Authentication cancelled.');
    await expectNotLoggedIn(c);
    const r2 = await scram(c, { user: 'alice', password: 'secret', answer: '*' });
    expect(r2.finalLine).toMatch(/^\+ /);
    expect(r2.result).toBe('-ERR Authentication cancelled.');
    await expectNotLoggedIn(c);
    expect(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    await c.quit();
  });

  it('wrong password, a forged nonce, and bad base64 mid-SCRAM: -ERR, no v=', async () => {
    const c = await connect(srv.port);
    const wrong = await scram(c, { user: 'alice', password: 'nope' });
    expect([wrong.finalLine, wrong.result]).toEqual([undefined, AUTH_FAILED]);
    const client = new ScramClient({ algorithm: 'SHA-256', username: 'alice', password: 'secret' });
    const sf = unb64((await c.cmd(`AUTH SCRAM-SHA-256 ${b64(client.initial())}`)).slice(2));
    const final = client.respond(Buffer.from(sf, 'utf8')).toString('utf8').replace(/,r=([^,]+)/, ',r=$1x');
    expect(await c.cmd(b64(final))).toBe(AUTH_FAILED);
    expect(await c.cmd(`AUTH SCRAM-SHA-256 ${b64(new ScramClient({ algorithm: 'SHA-256', username: 'alice', password: 'secret' }).initial())}`)).toMatch(/^\+ /);
    expect(await c.cmd('%%%not-base64%%%')).toMatch(/^-ERR /);
    await expectNotLoggedIn(c);
    await c.quit();
  });

  it('no mechanism runs forever: answering every challenge with an empty line ends in -ERR within a few steps', async () => {
    const c = await connect(srv.port);
    for (const mech of ALL_PASSWORD_MECHS) {
      let line = await c.cmd(`AUTH ${mech}`);
      let challenges = 0;
      while (line.startsWith('+ ') && challenges < 12) {
        challenges++;
        line = await c.cmd('');
      }
      expect(line, mech).toMatch(/^-ERR /);
      expect(challenges, mech).toBeLessThanOrEqual(3);
    }
    await expectNotLoggedIn(c);
    await c.quit();
  });

  it('initial responses where the mechanism allows none, and "=" for SCRAM, are refused', async () => {
    const c = await connect(srv.port);
    expect(await c.cmd(`AUTH CRAM-MD5 ${b64('alice 0123')}`)).toMatch(/^-ERR /);
    expect(await c.cmd('AUTH SCRAM-SHA-256 =')).toMatch(/^-ERR /);
    expect(await c.cmd('AUTH SCRAM-SHA-256 !!!')).toBe('-ERR Invalid base64 data in initial response.');
    await expectNotLoggedIn(c);
    await c.quit();
  });

  it('CRAM-MD5\'s challenge is a fresh msg-id <...@host> per exchange', async () => {
    const c = await connect(srv.port);
    const seen = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const ch = unb64((await c.cmd('AUTH CRAM-MD5')).slice(2));
      expect(ch).toMatch(/^<[^<>@\s]+@[^<>@\s]+>$/);
      seen.add(ch);
      expect(await c.cmd('*')).toBe('-ERR Authentication cancelled.');
    }
    expect(seen.size).toBe(3);
    await c.quit();
  });

  it('unknown mechanisms and AUTH with too many arguments get -ERR without [AUTH]', async () => {
    const c = await connect(srv.port);
    expect(await c.cmd('AUTH FOO')).toBe('-ERR Unsupported authentication mechanism.');
    expect(await c.cmd('AUTH DIGEST-MD5')).toBe('-ERR Unsupported authentication mechanism.');
    expect(await c.cmd('AUTH PLAIN a b')).toMatch(/^-ERR (?!\[)/);
    await expectNotLoggedIn(c);
    await c.quit();
  });

  it('the SASL list stays the same after login', async () => {
    const c = await connect(srv.port);
    const before = await c.saslMechanisms();
    expect(before).toEqual(ALL_PASSWORD_MECHS); // no -PLUS without TLS
    expect(await userPass(c, 'alice', 'secret')).toBe('+OK Logged in.');
    expect(await c.saslMechanisms()).toEqual(before);
    await c.quit();
  });

  it('SCRAM-SHA-256-PLUS over TLS 1.2 binds to tls-unique; a wrong binding and a "y" downgrade are refused', async () => {
    const c = await greet(await LineClient.connectTls(srv.tlsPort, { maxVersion: 'TLSv1.2' }));
    const sock = c.socket as TLSSocket;
    expect(sock.getProtocol()).toBe('TLSv1.2');
    expect(await c.saslMechanisms()).toEqual(['SCRAM-SHA-256-PLUS', ...ALL_PASSWORD_MECHS]);
    const finished = sock.getFinished()!; // the client's Finished: tls-unique (RFC 5929)
    const bad = await scram(c, { mech: 'SCRAM-SHA-256-PLUS', plus: true, user: 'alice', password: 'secret', channelBinding: { type: 'tls-unique', data: Buffer.alloc(finished.length, 1) } });
    expect(bad.result).toBe(AUTH_FAILED);
    const down = await scram(c, { mech: 'SCRAM-SHA-256', user: 'alice', password: 'secret', channelBinding: { type: 'tls-unique', data: finished } });
    expect(down.serverFirst, 'a "y" client must be refused when -PLUS was offered').toBeUndefined();
    expect(down.result).toMatch(/^-ERR /);
    const exporter = await scram(c, { mech: 'SCRAM-SHA-256-PLUS', plus: true, user: 'alice', password: 'secret', channelBinding: { type: 'tls-exporter', data: Buffer.alloc(32) } });
    expect(exporter.result, 'tls-exporter is not available on TLS 1.2').toBe(AUTH_FAILED);
    const good = await scram(c, { mech: 'SCRAM-SHA-256-PLUS', plus: true, user: 'alice', password: 'secret', channelBinding: { type: 'tls-unique', data: finished } });
    expect(good.result).toBe('+OK Logged in.');
    await c.quit();
    const last = records.filter((r) => r.msg === 'login').at(-1);
    expect([last?.mech, last?.tls]).toEqual(['SCRAM-SHA-256-PLUS', true]);
  });
});

describe('mechanism selection: what is not enabled is neither offered nor accepted', () => {
  it('default: PLAIN LOGIN only (EXTERNAL needs a client certificate); CRAM-MD5, SCRAM, the bearer mechanisms are refused', async () => {
    const srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }], settings: { max_bad_commands: 1000 } });
    try {
      const c = await connect(srv.port);
      expect(await c.saslMechanisms()).toEqual(['PLAIN', 'LOGIN']);
      for (const m of ['CRAM-MD5', 'SCRAM-SHA-256', 'SCRAM-SHA-1', 'XOAUTH2', 'OAUTHBEARER', 'EXTERNAL', 'SCRAM-SHA-256-PLUS']) {
        expect(await c.cmd(`AUTH ${m}`), m).toBe('-ERR Unsupported authentication mechanism.');
      }
      expect(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
      await c.quit();
      const t = await greet(await LineClient.connectTls(srv.tlsPort));
      expect(await t.saslMechanisms()).toEqual(['PLAIN', 'LOGIN']);
      await t.quit();
    } finally {
      await srv.stop();
    }
  });

  it('default with oauth: the bearer mechanisms are added', async () => {
    const srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }], oauth: true });
    try {
      const c = await connect(srv.port);
      expect(await c.saslMechanisms()).toEqual(['OAUTHBEARER', 'XOAUTH2', 'PLAIN', 'LOGIN']);
      await c.quit();
    } finally {
      await srv.stop();
    }
  });

  it('sasl_mechanisms = [SCRAM-SHA-256]: only that is offered; PLAIN and LOGIN are refused (USER/PASS is not SASL and stays)', async () => {
    const srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }], settings: { sasl_mechanisms: ['SCRAM-SHA-256'] } });
    try {
      const c = await connect(srv.port);
      expect(await c.saslMechanisms()).toEqual(['SCRAM-SHA-256']);
      expect(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('-ERR Unsupported authentication mechanism.');
      expect(await c.cmd('AUTH SCRAM-SHA-1')).toBe('-ERR Unsupported authentication mechanism.');
      expect((await scram(c, { user: 'alice', password: 'secret' })).result).toBe('+OK Logged in.');
      await c.quit();
    } finally {
      await srv.stop();
    }
  });
});

// ---------------------------------------------------------------------------

describe('SASL EXTERNAL with TLS client certificates', () => {
  let pki: ClientPki;
  let server: Pop3Server;
  let plainPort: number;
  let tlsPort: number;
  let records: LogRecord[];
  let root: string;

  beforeAll(async () => {
    const dir = await tmpdir('poplar-auth-ext-');
    pki = await makeClientPki(path.join(dir, 'pki'));
    root = path.join(dir, 'mail');
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    const { certFile, keyFile } = await testCertificate();
    const cap = capturingLogger();
    records = cap.records;
    const store = new MaildirStore({ root, logger: cap.logger, fsync: false });
    server = new Pop3Server({
      settings: testSettings({ max_bad_commands: 1000 }),
      authenticator: new PasswdFileAuthenticator(path.join(dir, 'users'), { checkIntervalMs: 0 }),
      store,
      logger: cap.logger,
      tls: { ...(await readTlsFiles(certFile, keyFile)), clientCa: pki.ca },
    });
    const bound = await server.listen([
      { host: '127.0.0.1', port: 0, tls: false },
      { host: '127.0.0.1', port: 0, tls: true },
    ]);
    plainPort = bound[0]!.port;
    tlsPort = bound[1]!.port;
    await store.deliver('alice', Buffer.from('Subject: ext\r\n\r\ncertificate login\r\n'));
  }, 30_000);
  afterAll(() => server?.close(0));

  it('implicit TLS with a certificate from the configured CA: EXTERNAL offered first; "=" logs in as the certificate CN', async () => {
    const c = await greet(await LineClient.connectTls(tlsPort, { cert: pki.cert, key: pki.key }));
    expect(await c.saslMechanisms()).toEqual(['EXTERNAL', 'PLAIN', 'LOGIN']);
    expect(await c.cmd('AUTH EXTERNAL =')).toBe('+OK Logged in.');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
    await c.quit();
    const login = records.filter((r) => r.msg === 'login').at(-1);
    expect([login?.user, login?.mech, login?.tls]).toEqual(['alice', 'EXTERNAL', true]);
  });

  it('without an initial response ("+ ", empty answer) and with authzid = the CN; another authzid is refused', async () => {
    const c = await greet(await LineClient.connectTls(tlsPort, { cert: pki.cert, key: pki.key }));
    expect(await c.cmd(`AUTH EXTERNAL ${b64('bob')}`)).toBe(AUTH_FAILED);
    expect(await c.cmd('AUTH EXTERNAL')).toBe('+ ');
    expect(await c.cmd('*')).toBe('-ERR Authentication cancelled.');
    expect(await c.cmd('AUTH EXTERNAL')).toBe('+ ');
    expect(await c.cmd('')).toBe('+OK Logged in.');
    await c.quit();
    const d = await greet(await LineClient.connectTls(tlsPort, { cert: pki.cert, key: pki.key }));
    expect(await d.cmd(`AUTH EXTERNAL ${b64('alice')}`)).toBe('+OK Logged in.');
    await d.quit();
  });

  it('STLS with a client certificate: EXTERNAL appears only after the handshake', async () => {
    const c = await connect(plainPort);
    expect(await c.saslMechanisms()).toEqual(['PLAIN', 'LOGIN']);
    expect(await c.cmd('AUTH EXTERNAL =')).toBe('-ERR Unsupported authentication mechanism.');
    expect(await c.cmd('STLS')).toMatch(/^\+OK/);
    await c.upgrade({ cert: pki.cert, key: pki.key });
    expect(await c.saslMechanisms()).toEqual(['EXTERNAL', 'PLAIN', 'LOGIN']);
    expect(await c.cmd('AUTH EXTERNAL =')).toBe('+OK Logged in.');
    await c.quit();
  });

  it('an untrusted certificate or none: no EXTERNAL, AUTH EXTERNAL refused, passwords still work', async () => {
    for (const opts of [{ cert: pki.rogueCert, key: pki.rogueKey }, {}]) {
      const c = await greet(await LineClient.connectTls(tlsPort, opts));
      expect(await c.saslMechanisms()).toEqual(['PLAIN', 'LOGIN']);
      expect(await c.cmd('AUTH EXTERNAL =')).toMatch(/^-ERR /);
      expect(await c.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
      await c.quit();
    }
  });

  it('a server without a client CA does not even ask for a certificate', async () => {
    const srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }] });
    try {
      const c = await greet(await LineClient.connectTls(srv.tlsPort, { cert: pki.cert, key: pki.key }));
      expect(await c.saslMechanisms()).toEqual(['PLAIN', 'LOGIN']);
      expect(await c.cmd('AUTH EXTERNAL =')).toMatch(/^-ERR /);
      await c.quit();
    } finally {
      await srv.stop();
    }
  });

  it.skipIf(lacks('mpop'))('mpop `auth external` with tls_cert_file / tls_key_file logs in and retrieves the message', async () => {
    const dir = await tmpdir('poplar-auth-mpop-ext-');
    const md = path.join(dir, 'Maildir');
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(md, sub), { recursive: true });
    const { certFile } = await testCertificate();
    const conf = path.join(dir, 'mpoprc');
    await fs.writeFile(
      conf,
      [
        'account ext',
        'host localhost',
        `port ${tlsPort}`,
        'tls on',
        'tls_starttls off',
        `tls_trust_file ${certFile}`,
        `tls_cert_file ${pki.certFile}`,
        `tls_key_file ${pki.keyFile}`,
        'auth external',
        'user alice',
        `delivery maildir ${md}`,
        `uidls_file ${path.join(dir, 'uidls')}`,
        'keep on',
        'only_new off',
        'received_header off',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
    const { run } = await import('../interop/run.js');
    const mark = records.length;
    const r = await run('mpop', ['-C', conf, '-a', '-d'], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: dir, LC_ALL: 'C' }, timeoutMs: 20_000 });
    expect(r.code, r.describe).toBe(0);
    expect(await fs.readdir(path.join(md, 'new')), r.describe).toHaveLength(1);
    expect(r.stdout.toString('latin1'), r.describe).toMatch(/--> AUTH EXTERNAL/);
    const login = records.slice(mark).find((x) => x.msg === 'login');
    expect([login?.user, login?.mech, login?.tls], r.describe).toEqual(['alice', 'EXTERNAL', true]);
  });
});
