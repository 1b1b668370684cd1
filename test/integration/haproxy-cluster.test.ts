/**
 * Many machines, end to end: a real HAProxy in front of two `poplar serve`
 * nodes that share one PostgreSQL database (users, mail store, login
 * counters), with `send-proxy-v2` to a plain and to an implicit-TLS listener.
 *
 * - logins through HAProxy work on both listeners, and each node logs the
 *   client's own address (from the PROXY header), not HAProxy's;
 * - the same user on both nodes: the second gets -ERR [IN-USE];
 * - a node SIGKILLed while it holds a maildrop with DELE marks removes
 *   nothing, and the other node serves the user once the lease times out;
 * - an address throttled through one node stays throttled on the other.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addUser, createPostgresPool } from '../../src/auth/postgres/index.js';
import { hashPassword } from '../../src/auth/schemes.js';
import { PostgresStore } from '../../src/store/postgres/index.js';
import { pino } from 'pino';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { POSTGRES_CONNECTION as PG, lacks, lacksPostgres, peerPath } from '../helpers/peers.js';
import { LineClient } from './auth-helpers.js';

const PG_DOWN = await lacksPostgres();
const NO_HAPROXY = lacks('haproxy');
const pgUrl = `postgres://${PG.user}@${PG.host}:${PG.port}/${PG.database}`;
const LEASE_SECONDS = 3;

/** A port nobody listens on right now. */
async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as net.AddressInfo).port;
  s.close();
  await once(s, 'close');
  return port;
}

async function waitForPort(port: number, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = net.connect({ host: '127.0.0.1', port }, () => (c.destroy(), resolve(true)));
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > until) throw new Error(`nothing listens on ${port}`);
    await sleep(50);
  }
}

describe.skipIf(PG_DOWN || NO_HAPROXY)('HAProxy in front of two nodes on one PostgreSQL database', () => {
  const schema = `poplar_ha_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Pool({ ...PG, max: 2 });
  let dir: string;
  const nodes: Record<'a' | 'b', ServeProcess | undefined> = { a: undefined, b: undefined };
  let haproxy: ChildProcess | undefined;
  let haLog = '';
  /** Frontends: round robin over both nodes (plain and TLS), and one pinned to each node (plain). */
  const fe = { rr: 0, rrTls: 0, a: 0, b: 0 };
  let store: PostgresStore;

  async function node(name: 'a' | 'b'): Promise<ServeProcess> {
    const file = path.join(dir, `${name}.toml`);
    await fs.writeFile(
      file,
      [
        `data_dir = "${dir}/${name}"`,
        'log_format = "json"',
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = ["127.0.0.1:0"]',
        'hostname = "localhost"',
        'proxy_protocol = true',
        'trusted_proxies = ["127.0.0.1/32"]',
        'auth_failure_delay = 0.05',
        'auth_failure_max_delay = 0.1',
        'auth_block_after = 3',
        '[store]',
        'type = "postgres"',
        '[store.postgres]',
        `url = "${pgUrl}"`,
        `schema = "${schema}"`,
        'pool_size = 4',
        `lease_timeout = ${LEASE_SECONDS}`,
        '[auth]',
        'type = "postgres"',
        '[auth.postgres]',
        `url = "${pgUrl}"`,
        `schema = "${schema}"`,
        'pool_size = 2',
        '',
      ].join('\n'),
    );
    return startServe(['--config', file], { expectListeners: 2 });
  }

  async function startHaproxy(): Promise<void> {
    const a = nodes.a!;
    const b = nodes.b!;
    const cfg = [
      'global',
      '  maxconn 512',
      'defaults',
      '  mode tcp',
      '  timeout connect 5s',
      '  timeout client 60s',
      '  timeout server 60s',
      `frontend rr_plain`,
      `  bind 127.0.0.1:${fe.rr}`,
      '  default_backend both_plain',
      `frontend rr_tls`,
      `  bind 127.0.0.1:${fe.rrTls}`,
      '  default_backend both_tls',
      `frontend only_a`,
      `  bind 127.0.0.1:${fe.a}`,
      '  default_backend a_plain',
      `frontend only_b`,
      `  bind 127.0.0.1:${fe.b}`,
      '  default_backend b_plain',
      'backend both_plain',
      '  balance roundrobin',
      `  server a 127.0.0.1:${a.plainPort} send-proxy-v2 source 127.0.0.1`,
      `  server b 127.0.0.1:${b.plainPort} send-proxy-v2 source 127.0.0.1`,
      'backend both_tls',
      '  balance roundrobin',
      `  server a 127.0.0.1:${a.tlsPort} send-proxy-v2 source 127.0.0.1`,
      `  server b 127.0.0.1:${b.tlsPort} send-proxy-v2 source 127.0.0.1`,
      'backend a_plain',
      `  server a 127.0.0.1:${a.plainPort} send-proxy-v2 source 127.0.0.1`,
      'backend b_plain',
      `  server b 127.0.0.1:${b.plainPort} send-proxy-v2 source 127.0.0.1`,
      '',
    ].join('\n');
    const file = path.join(dir, 'haproxy.cfg');
    await fs.writeFile(file, cfg);
    haproxy = spawn(peerPath('haproxy')!, ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy.stdout!.on('data', (d: Buffer) => (haLog += d.toString()));
    haproxy.stderr!.on('data', (d: Buffer) => (haLog += d.toString()));
    for (const p of Object.values(fe)) await waitForPort(p);
  }

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-haproxy-'));
    await admin.query(`CREATE SCHEMA ${schema}`);
    // One node first: it creates the tables; the second finds them made.
    nodes.a = await node('a');
    nodes.b = await node('b');
    const pool = createPostgresPool({ url: pgUrl, schema });
    try {
      for (const u of ['alice', 'bob', 'carol']) await addUser(pool, { username: u, password: await hashPassword(`${u}-pw`, 'PLAIN') });
    } finally {
      await pool.end();
    }
    store = await PostgresStore.open({ url: pgUrl, schema, lease_timeout: LEASE_SECONDS }, { logger: pino({ level: 'silent' }), sweepIntervalMs: 0 });
    for (const u of ['alice', 'bob', 'carol']) {
      for (let i = 1; i <= 3; i++) await store.deliver(u, Buffer.from(`From: x@example.org\r\nSubject: ${u} ${i}\r\n\r\nbody ${i}\r\n`));
    }
    for (const k of Object.keys(fe) as (keyof typeof fe)[]) fe[k] = await freePort();
    await startHaproxy();
  }, 90_000);

  afterAll(async () => {
    haproxy?.kill('SIGKILL');
    await Promise.all([nodes.a?.stop('SIGKILL'), nodes.b?.stop()]);
    await store?.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    await fs.rm(dir, { recursive: true, force: true });
  });

  /** USER/PASS through a frontend from a chosen client address; the PASS answer. */
  async function login(port: number, user: string, password: string, from: string): Promise<{ c: LineClient; answer: string }> {
    const c = await LineClient.connect(port, { localAddress: from });
    const greeting = await c.line();
    expect(greeting).toMatch(/^\+OK/);
    expect(await c.cmd(`USER ${user}`)).toMatch(/^\+OK/);
    return { c, answer: await c.cmd(`PASS ${password}`) };
  }

  it('logins through HAProxy reach both nodes, plain and implicit TLS, and each logs the client address', async () => {
    for (let i = 0; i < 2; i++) {
      const { c, answer } = await login(fe.rr, 'alice', 'alice-pw', '127.0.0.5');
      expect(answer).toMatch(/^\+OK/);
      expect(await c.cmd('STAT')).toMatch(/^\+OK 3 \d+$/);
      expect(await c.cmd('QUIT')).toMatch(/^\+OK/);
      c.close();
    }
    const tlsUsers: string[] = [];
    for (let i = 0; i < 2; i++) {
      const c = await LineClient.connectTls(fe.rrTls, { localAddress: '127.0.0.6' });
      expect(await c.line()).toMatch(/^\+OK/);
      expect(await c.cmd('USER bob')).toMatch(/^\+OK/);
      const answer = await c.cmd('PASS bob-pw');
      tlsUsers.push(answer);
      await c.cmd('QUIT');
      c.close();
    }
    for (const a of tlsUsers) expect(a).toMatch(/^\+OK/);
    for (const n of [nodes.a!, nodes.b!]) {
      const logins = n
        .stderr()
        .split('\n')
        .filter((l) => l.includes('"msg":"login"'));
      // Round robin: each node served one plain and one TLS login, and saw the client's address.
      expect(logins.some((l) => l.includes('"rip":"127.0.0.5"') && l.includes('"tls":false'))).toBe(true);
      expect(logins.some((l) => l.includes('"rip":"127.0.0.6"') && l.includes('"tls":true'))).toBe(true);
      expect(logins.some((l) => l.includes('"rip":"127.0.0.1"'))).toBe(false);
    }
  });

  it('the same user on the second node gets [IN-USE] while the first holds the maildrop', async () => {
    const first = await login(fe.a, 'bob', 'bob-pw', '127.0.0.8');
    expect(first.answer).toMatch(/^\+OK/);
    const second = await login(fe.b, 'bob', 'bob-pw', '127.0.0.8');
    expect(second.answer).toMatch(/^-ERR \[IN-USE\] /);
    second.c.close();
    expect(await first.c.cmd('QUIT')).toMatch(/^\+OK/);
    first.c.close();
    // Released at the end of the session: the other node serves bob at once.
    const third = await login(fe.b, 'bob', 'bob-pw', '127.0.0.8');
    expect(third.answer).toMatch(/^\+OK/);
    await third.c.cmd('QUIT');
    third.c.close();
  });

  it('an address throttled through one node stays throttled on the other', async () => {
    for (let i = 0; i < 3; i++) {
      const { c, answer } = await login(fe.a, 'carol', 'wrong', '127.0.0.9');
      expect(answer).toMatch(/^-ERR \[AUTH\] /);
      c.close();
    }
    const { c, answer } = await login(fe.b, 'carol', 'carol-pw', '127.0.0.9');
    expect(answer).toMatch(/^-ERR \[AUTH\] /);
    c.close();
    expect(nodes.b!.stderr()).toMatch(/"event":"auth-failed"[^\n]*"rip":"127\.0\.0\.9"[^\n]*"why":"blocked"|"event":"auth-failed"[^\n]*"why":"blocked"[^\n]*"rip":"127\.0\.0\.9"/);
    // Another address is not held back.
    const other = await login(fe.b, 'carol', 'carol-pw', '127.0.0.10');
    expect(other.answer).toMatch(/^\+OK/);
    await other.c.cmd('QUIT');
    other.c.close();
  });

  it('a node SIGKILLed with DELE marks removes nothing; the other node serves the user once the lease has timed out', async () => {
    const held = await login(fe.a, 'alice', 'alice-pw', '127.0.0.11');
    expect(held.answer).toMatch(/^\+OK/);
    expect(await held.c.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await held.c.cmd('DELE 2')).toMatch(/^\+OK/);
    await nodes.a!.stop('SIGKILL');
    const killedAt = Date.now();
    held.c.close();

    // Still leased: node B refuses at first.
    const early = await login(fe.b, 'alice', 'alice-pw', '127.0.0.11');
    expect(early.answer).toMatch(/^-ERR \[IN-USE\] /);
    early.c.close();

    let served: { c: LineClient; answer: string } | undefined;
    while (Date.now() - killedAt < (LEASE_SECONDS + 5) * 1000) {
      await sleep(250);
      const attempt = await login(fe.b, 'alice', 'alice-pw', '127.0.0.11');
      if (attempt.answer.startsWith('+OK')) {
        served = attempt;
        break;
      }
      expect(attempt.answer).toMatch(/^-ERR \[IN-USE\] /);
      attempt.c.close();
    }
    expect(served, 'node B served alice after the lease timed out').toBeDefined();
    const waited = Date.now() - killedAt;
    expect(waited).toBeGreaterThanOrEqual((LEASE_SECONDS - 1) * 1000);
    expect(await served!.c.cmd('STAT')).toMatch(/^\+OK 3 \d+$/);
    served!.c.send('UIDL');
    expect((await served!.c.lines()).lines).toHaveLength(3);
    expect(await served!.c.cmd('QUIT')).toMatch(/^\+OK/);
    served!.c.close();
  }, 30_000);
});
