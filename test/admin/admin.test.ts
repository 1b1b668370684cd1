/**
 * The [admin] listener and socket of a real `poplar serve`: /metrics counted
 * from real sessions (logins good and bad, RETR, DELE+QUIT, [IN-USE], a
 * kick), /healthz and /readyz (also while draining at SIGTERM), `poplar who`
 * and `poplar kick` through the socket, and who/kick refused to everyone
 * else (the TCP listener without the token, a user outside the socket's group).
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacks } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';
import { metricValue, parsePrometheus, type Samples } from './prometheus.js';

const MESSAGE = 'From: a@example.org\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\n.a line with a dot\r\nbody\r\n';

async function get(url: string, init?: RequestInit): Promise<{ status: number; text: string }> {
  const r = await fetch(url, init);
  return { status: r.status, text: await r.text() };
}

function adminAddress(srv: ServeProcess): string {
  const m = /"admin":"([^"]+)"/.exec(srv.stderr());
  if (m === null) throw new Error(`no admin listener in the log:\n${srv.stderr()}`);
  return `http://${m[1]}`;
}

describe('poplar serve [admin]: metrics, health, who and kick', () => {
  let dir: string;
  let cfg: string;
  let srv: ServeProcess;
  let admin: string;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-admin-'));
    // Traversable by anyone: the refusal tested below must come from the socket's own mode.
    await fs.chmod(dir, 0o755);
    cfg = path.join(dir, 'poplar.toml');
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    await fs.writeFile(
      cfg,
      [
        `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = ["127.0.0.1:0"]',
        'auth_failure_delay = 0',
        'max_connections_per_ip = 3',
        'shutdown_grace = 60',
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        `maildir_root = ${JSON.stringify(path.join(dir, 'mail'))}`,
        'fsync = false',
        '[lmtp]',
        'listen = ["127.0.0.1:0"]',
        '[admin]',
        'listen = "127.0.0.1:0"',
        `socket = ${JSON.stringify(path.join(dir, 'admin.sock'))}`,
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, 'mail', 'alice', sub), { recursive: true });
    await fs.writeFile(path.join(dir, 'mail', 'alice', 'new', '1700000000.M1P1.admin-test'), MESSAGE.replaceAll('\r\n', '\n'));
    srv = await startServe(['--config', cfg], { cwd: dir, expectListeners: 2 });
    admin = adminAddress(srv);
  });

  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('counts real sessions, lists and kicks one, and refuses who/kick to non-admins', async () => {
    expect(await get(`${admin}/healthz`)).toEqual({ status: 200, text: 'ok\n' });
    const ready = await get(`${admin}/readyz`);
    expect(ready.status, ready.text).toBe(200);
    expect(ready.text).toContain('store: ok');
    expect(ready.text).toContain('users: ok');

    // A: logs in, retrieves and marks the message, and stays.
    const a = await Wire.connect(srv.plainPort);
    await a.line();
    await a.login('alice', 'secret');
    const retr = await a.cmdMulti('RETR 1');
    expect(retr.status).toMatch(/^\+OK/);
    expect(await a.cmd('DELE 1')).toMatch(/^\+OK/);

    // B: the maildrop is locked ([IN-USE]), then a wrong password.
    const b = await Wire.connect(srv.plainPort);
    await b.line();
    expect(await b.cmd('USER alice')).toMatch(/^\+OK/);
    expect(await b.cmd('PASS secret')).toMatch(/^-ERR \[IN-USE\]/);
    expect(await b.cmd('USER alice')).toMatch(/^\+OK/);
    expect(await b.cmd('PASS wrong')).toMatch(/^-ERR \[AUTH\]/);
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
    await b.closed();

    // who, through the socket: A with its user and address, in TRANSACTION.
    const who = await runPoplar(['who', '--config', cfg, '--json'], { cwd: dir });
    expect(who.code, who.stderr).toBe(0);
    const rows = JSON.parse(who.stdout) as { user?: string; address: string; port: number; state: string; bytesIn: number; bytesOut: number }[];
    const row = rows.find((r) => r.user === 'alice');
    expect(row).toMatchObject({ address: '127.0.0.1', port: a.socket.localPort, state: 'TRANSACTION' });
    expect(row!.bytesIn).toBe(Buffer.byteLength('USER alice\r\nPASS secret\r\nRETR 1\r\nDELE 1\r\n'));
    expect(row!.bytesOut).toBeGreaterThan(retr.body.length);

    // Not through the TCP listener (no token configured), and not for a user outside the socket's group.
    expect((await get(`${admin}/sessions`)).status).toBe(403);
    expect((await get(`${admin}/kick?user=alice`, { method: 'POST' })).status).toBe(403);
    expect((await fs.stat(path.join(dir, 'admin.sock'))).mode & 0o777).toBe(0o660);
    if (process.getuid?.() === 0) {
      const nobody = await runPoplar(['kick', 'alice', '--config', cfg], { cwd: dir, uid: 65534, gid: 65534, env: { HOME: dir } });
      expect(nobody.stderr).toMatch(/permission denied/);
      expect(nobody.code).toBe(77);
    }
    expect(a.ended).toBe(false);

    // kick: A is told and dropped; its DELE mark is not applied.
    const kick = await runPoplar(['kick', 'alice', '--config', cfg], { cwd: dir });
    expect(kick.code, kick.stderr).toBe(0);
    expect(kick.stdout).toBe('1 session of alice ended\n');
    expect(await a.line()).toBe('-ERR Disconnected by the administrator.');
    await a.closed();
    const c = await Wire.connect(srv.plainPort);
    await c.line();
    await c.login('alice', 'secret');
    expect(await c.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await c.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await c.cmd('QUIT')).toMatch(/^\+OK .*1 message deleted/);
    await c.closed();

    const text = (await get(`${admin}/metrics`)).text;
    const m: Samples = parsePrometheus(text);
    const v = (name: string, labels: Record<string, string> = {}): number | undefined => metricValue(m, name, labels);
    expect(v('poplar_connections_total', { listener: 'pop3' })).toBe(3);
    expect(v('poplar_connections_open', { listener: 'pop3' })).toBe(0);
    expect(v('poplar_logins_total', { mechanism: 'USER', result: 'ok' })).toBe(2);
    expect(v('poplar_logins_total', { mechanism: 'USER', result: 'in-use' })).toBe(1);
    expect(v('poplar_logins_total', { mechanism: 'USER', result: 'credentials' })).toBe(1);
    expect(v('poplar_maildrop_in_use_total')).toBe(1);
    expect(v('poplar_login_failure_delay_seconds_count')).toBe(1);
    expect(v('poplar_sent_messages_total', { command: 'RETR' })).toBe(1);
    // The body as sent: dot-stuffed, with the terminator.
    expect(v('poplar_sent_bytes_total', { command: 'RETR' })).toBe(retr.body.length);
    expect(v('poplar_messages_deleted_total')).toBe(1);
    expect(v('poplar_update_failures_total')).toBe(0);
    expect(v('poplar_sessions_kicked_total')).toBe(1);
    expect(v('poplar_command_duration_seconds_count', { command: 'RETR' })).toBe(1);
    expect(v('poplar_command_duration_seconds_count', { command: 'DELE' })).toBe(2);
    expect(v('poplar_command_duration_seconds_count', { command: 'PASS' })).toBe(4);
    expect(v('poplar_backend_duration_seconds_count', { backend: 'store', operation: 'open' })).toBe(3);
    expect(v('poplar_backend_duration_seconds_count', { backend: 'store', operation: 'commit' })).toBe(1);
    expect(v('poplar_backend_duration_seconds_count', { backend: 'auth', operation: 'authenticate' })).toBe(4);
    // [IN-USE] and a wrong password are answers, not backend failures.
    expect(v('poplar_backend_errors_total', { backend: 'store', operation: 'open' }) ?? 0).toBe(0);
    expect(v('poplar_backend_errors_total', { backend: 'auth', operation: 'authenticate' }) ?? 0).toBe(0);
  });

  it('counts TLS handshakes and their failures, a connection refused by a limit, and LMTP recipients by result', async () => {
    const implicit = await Wire.connect(srv.tlsPort, { tls: true });
    expect(await implicit.line()).toMatch(/^\+OK/);
    expect(await implicit.cmd('QUIT')).toMatch(/^\+OK/);
    const stls = await Wire.connect(srv.plainPort);
    await stls.line();
    expect(await stls.cmd('STLS')).toMatch(/^\+OK/);
    await stls.upgrade();
    expect(await stls.cmd('QUIT')).toMatch(/^\+OK/);
    // Not a ClientHello: the implicit-TLS handshake fails before any session.
    const junk = net.connect({ host: '127.0.0.1', port: srv.tlsPort });
    junk.on('error', () => undefined);
    await once(junk, 'connect');
    junk.write('USER alice\r\n');
    await once(junk, 'close');

    const lmtpPort = Number(/"lmtp":"127\.0\.0\.1:(\d+)"/.exec(srv.stderr())![1]);
    const lmtp = await Wire.connect(lmtpPort);
    expect(await lmtp.line()).toMatch(/^220 /);
    lmtp.send('LHLO admin.test');
    while (!(await lmtp.line()).startsWith('250 '));
    expect(await lmtp.cmd('MAIL FROM:<sender@example.org>')).toMatch(/^250 /);
    expect(await lmtp.cmd('RCPT TO:<alice>')).toMatch(/^250 /);
    expect(await lmtp.cmd('RCPT TO:<nobody>')).toMatch(/^550 /);
    expect(await lmtp.cmd('DATA')).toMatch(/^354 /);
    expect(await lmtp.cmd(MESSAGE + '.')).toMatch(/^250 /);
    expect(await lmtp.cmd('QUIT')).toMatch(/^221 /);

    for (const w of [implicit, stls, lmtp]) await w.closed();
    // A fourth connection from one address is refused before any session.
    const three = await Promise.all([1, 2, 3].map(() => Wire.connect(srv.plainPort)));
    for (const w of three) expect(await w.line()).toMatch(/^\+OK/);
    const fourth = await Wire.connect(srv.plainPort);
    expect(await fourth.line()).toMatch(/^-ERR \[SYS\/TEMP\] Too many connections/);
    for (const w of [...three, fourth]) w.close();
    // Until the server has seen them go (so the next test's connection is not over the limit).
    let m = parsePrometheus((await get(`${admin}/metrics`)).text);
    for (let i = 0; i < 100 && metricValue(m, 'poplar_connections_open', { listener: 'pop3' }) !== 0; i++) {
      await sleep(50);
      m = parsePrometheus((await get(`${admin}/metrics`)).text);
    }
    expect(metricValue(m, 'poplar_connections_open', { listener: 'pop3' })).toBe(0);
    expect(metricValue(m, 'poplar_connections_refused_total', { limit: 'per-ip' })).toBe(1);
    expect(metricValue(m, 'poplar_tls_handshakes_total', { kind: 'implicit' })).toBe(1);
    expect(metricValue(m, 'poplar_tls_handshakes_total', { kind: 'stls' })).toBe(1);
    expect(metricValue(m, 'poplar_tls_handshake_failures_total', { kind: 'implicit' })).toBe(1);
    expect(metricValue(m, 'poplar_connections_total', { listener: 'pop3s' })).toBe(1);
    expect(metricValue(m, 'poplar_lmtp_deliveries_total', { result: 'accepted' })).toBe(1);
    expect(metricValue(m, 'poplar_lmtp_deliveries_total', { result: 'refused' })).toBe(1);
    // The message with the trace headers LMTP adds.
    expect(metricValue(m, 'poplar_lmtp_delivered_bytes_total')).toBeGreaterThan(MESSAGE.length);
    expect(metricValue(m, 'poplar_backend_duration_seconds_count', { backend: 'store', operation: 'deliver' })).toBe(1);
  });

  it.skipIf(lacks('promtool'))('serves a scrape that promtool check metrics accepts', async () => {
    const text = (await get(`${admin}/metrics`)).text;
    let problems: string;
    try {
      problems = execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      const err = e as { stdout?: string; stderr?: string };
      problems = `${err.stdout ?? ''}${err.stderr ?? ''}`;
    }
    // prom-client's own process gauges end in _total (nodejs_active_handles_total): promtool's style
    // lint names them; every other line (a parse error, any poplar_ metric) fails.
    const ours = problems.split('\n').filter((l) => l.trim() !== '' && !/^nodejs_active_\w+_total non-counter metrics should not have "_total" suffix$/.test(l.trim()));
    expect(ours).toEqual([]);
  });

  it('turns /readyz to 503 while draining at SIGTERM, /healthz still answering', async () => {
    const d = await Wire.connect(srv.plainPort);
    await d.line();
    await d.login('alice', 'secret');
    const exited = new Promise<number | null>((resolve) => srv.child.once('exit', (code) => resolve(code)));
    srv.child.kill('SIGTERM');
    let ready = await get(`${admin}/readyz`);
    for (let i = 0; i < 200 && ready.status === 200; i++) {
      await sleep(50);
      ready = await get(`${admin}/readyz`);
    }
    expect(ready).toEqual({ status: 503, text: 'not ready: shutting down\n' });
    expect((await get(`${admin}/healthz`)).status).toBe(200);
    // The session still works during the drain; its QUIT lets the server finish.
    expect(await d.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await d.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await exited).toBe(0);
  });
});
