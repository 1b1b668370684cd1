/**
 * The [admin] listener of `poplar serve --workers 2` on the PostgreSQL store:
 * one scrape sums both workers, `poplar who` over the TCP listener with the
 * token sees a session whichever worker holds it and `poplar kick` ends it,
 * /readyz turns 503 when the database stops answering (it is reached through
 * a proxy the test closes) and at SIGTERM.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';
import { metricSum, metricValue, parsePrometheus } from './prometheus.js';

const PG_DOWN = await lacksPostgres();

/** A port free right now (the admin listener needs a fixed one: `poplar who` reads it from the file). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** A TCP relay to PostgreSQL that the test can cut: closing it leaves a closed port behind. */
class Relay {
  readonly #server: net.Server;
  readonly #sockets = new Set<net.Socket>();
  constructor() {
    this.#server = net.createServer((client) => {
      const upstream = net.connect({ host: POSTGRES_CONNECTION.host, port: POSTGRES_CONNECTION.port });
      for (const s of [client, upstream]) {
        this.#sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => {
          this.#sockets.delete(s);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
  }
  async listen(): Promise<number> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    return (this.#server.address() as net.AddressInfo).port;
  }
  async cut(): Promise<void> {
    const closed = new Promise<void>((r) => this.#server.close(() => r()));
    for (const s of this.#sockets) s.destroy();
    await closed;
  }
}

describe.skipIf(PG_DOWN)('poplar serve --workers 2 [admin]', () => {
  const schema = `poplar_admin_${randomBytes(6).toString('hex')}`;
  const db = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1 });
  const token = randomBytes(24).toString('base64url');
  const relay = new Relay();
  let dir: string;
  let cfg: string;
  let srv: ServeProcess;
  let admin: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-admin-workers-'));
    await db.query(`CREATE SCHEMA ${schema}`);
    const port = await relay.listen();
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'token'), token + '\n', { mode: 0o600 });
    cfg = path.join(dir, 'poplar.toml');
    await fs.writeFile(
      cfg,
      [
        `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = []',
        'shutdown_grace = 60',
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        'type = "postgres"',
        '[store.postgres]',
        `url = "postgres://${POSTGRES_CONNECTION.user}@127.0.0.1:${port}/${POSTGRES_CONNECTION.database}"`,
        `schema = "${schema}"`,
        'pool_size = 2',
        'connect_timeout = 2',
        'query_timeout = 2',
        '[admin]',
        `listen = "127.0.0.1:${await freePort()}"`,
        `token_file = ${JSON.stringify(path.join(dir, 'token'))}`,
        'probe_timeout = 1',
        '',
      ].join('\n'),
    );
    srv = await startServe(['--config', cfg, '--workers', '2'], { cwd: dir, expectListeners: 2, timeoutMs: 90_000 });
    const m = /"admin":"([^"]+)"/.exec(srv.stderr());
    admin = `http://${m![1]}`;
  });

  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await relay.cut().catch(() => undefined);
    await db.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined);
    await db.end();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('sums both workers in one scrape, lists and kicks a session through the token, and is not ready without the database or at SIGTERM', async () => {
    // Sessions on both workers: which one takes a connection is the kernel's choice, so try bursts.
    const ended = (): { pid: number }[] => srv.stderr().split('\n').filter((l) => l.includes('"logout"')).map((l) => JSON.parse(l) as { pid: number });
    let made = 0;
    for (let round = 0; round < 20 && new Set(ended().map((e) => e.pid)).size < 2; round++) {
      const burst = await Promise.all(Array.from({ length: 12 }, () => Wire.connect(srv.plainPort)));
      made += burst.length;
      for (const w of burst) await w.line();
      for (const w of burst) expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      for (let i = 0; i < 100 && ended().length < made; i++) await sleep(20);
    }
    expect(new Set(ended().map((e) => e.pid)).size).toBe(2);

    const held = await Wire.connect(srv.plainPort);
    await held.line();
    await held.login('alice', 'secret');

    const samples = parsePrometheus(await (await fetch(`${admin}/metrics`)).text());
    expect(metricValue(samples, 'poplar_connections_total', { listener: 'pop3' })).toBe(made + 1);
    expect(metricValue(samples, 'poplar_connections_open', { listener: 'pop3' })).toBe(1);
    expect(metricValue(samples, 'poplar_logins_total', { mechanism: 'USER', result: 'ok' })).toBe(1);
    expect(metricSum(samples, 'poplar_command_duration_seconds_count')).toBe(made + 2);

    // who and kick over TCP need the token; `poplar who` reads it from token_file.
    expect((await fetch(`${admin}/sessions`)).status).toBe(403);
    expect((await fetch(`${admin}/sessions`, { headers: { authorization: `Bearer ${token}x` } })).status).toBe(403);
    const who = await runPoplar(['who', '--config', cfg, '--json'], { cwd: dir });
    expect(who.code, who.stderr).toBe(0);
    const rows = JSON.parse(who.stdout) as { user?: string; port: number; state: string }[];
    expect(rows).toEqual([expect.objectContaining({ user: 'alice', port: held.socket.localPort, state: 'TRANSACTION' })]);

    const ready = await fetch(`${admin}/readyz`);
    expect(ready.status, await ready.text()).toBe(200);
    await relay.cut();
    const down = await fetch(`${admin}/readyz`);
    const text = await down.text();
    expect(down.status, text).toBe(503);
    expect(text).toMatch(/^store: (unreachable|no answer)/m);
    expect(text).toMatch(/^users: ok$/m);
    expect(text).toMatch(/^listeners: ok$/m);

    // kick reaches the worker that holds the session, whichever it is.
    const kick = await runPoplar(['kick', 'alice', '--config', cfg], { cwd: dir });
    expect(kick.stdout, kick.stderr).toBe('1 session of alice ended\n');
    expect(await held.line()).toBe('-ERR Disconnected by the administrator.');
    await held.closed();

    // SIGTERM: the primary is not ready from then on, while a session keeps the workers draining.
    const waiting = await Wire.connect(srv.plainPort);
    await waiting.line();
    const exited = new Promise<number | null>((resolve) => srv.child.once('exit', (code) => resolve(code)));
    srv.child.kill('SIGTERM');
    let body = '';
    for (let i = 0; i < 200 && body !== 'not ready: shutting down\n'; i++) {
      await sleep(50);
      body = await (await fetch(`${admin}/readyz`)).text();
    }
    expect(body).toBe('not ready: shutting down\n');
    waiting.close();
    expect(await exited).toBe(0);
  });
});
