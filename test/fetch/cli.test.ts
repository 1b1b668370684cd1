/**
 * `poplar fetch` as a process: exit codes (sysexits), the --json summary,
 * a TOML config with two accounts, the one-line summary.
 */
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { poplarArgs, ROOT, runPoplar } from '../helpers/cli.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { seqCounts, seqMessage } from './helpers.js';

let srv: TestServer;
let tmp: string;
beforeAll(async () => {
  srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }, { name: 'bob', password: 'hunter2' }] });
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetch-cli-'));
  for (let i = 0; i < 5; i++) await srv.deliver('alice', seqMessage(i));
  for (let i = 100; i < 103; i++) await srv.deliver('bob', seqMessage(i));
});
afterAll(async () => {
  await srv.stop();
  await fs.rm(tmp, { recursive: true, force: true });
});

const env = { PW: 'secret', BADPW: 'nope' };

function flags(dir: string, more: string[] = []): string[] {
  return ['fetch', '--once', '--host', '127.0.0.1', '--port', String(srv.port), '--tls', 'none', '--user', 'alice', '--password-env', 'PW', '--keep', '--maildir', path.join(dir, 'Maildir'), '--state', path.join(dir, 'ledger'), ...more];
}

async function closedPort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('poplar fetch (process)', () => {
  it('--json: a machine-readable summary; exit 0', async () => {
    const dir = path.join(tmp, 'json');
    const r = await runPoplar(flags(dir, ['--json']), { env });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(j).toMatchObject({
      ok: true,
      exitCode: 0,
      stopped: false,
      totals: { onServer: 5, delivered: 5, discarded: 0, skipped: 0, deleted: 0, recovered: 0, failed: 0 },
      accounts: [{ account: 'alice@127.0.0.1', ok: true, exitCode: 0, onServer: 5, candidates: 5, delivered: 5, deleted: 0 }],
    });
    expect(typeof j['elapsedMs']).toBe('number');
    expect((j['totals'] as { bytes: number }).bytes).toBeGreaterThan(5 * 200);
    expect((await seqCounts(path.join(dir, 'Maildir'))).size).toBe(5);
    // Not a terminal: one summary line.
    const again = await runPoplar(flags(dir), { env });
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/^1 account: 0 messages \(0 B\) delivered in \d+\.\d s\n$/);
  });

  it('exit 77 (EX_NOPERM) when the password is refused', async () => {
    const r = await runPoplar(flags(path.join(tmp, 'auth'), ['--json']).map((a) => (a === 'PW' ? 'BADPW' : a)), { env });
    expect(r.code).toBe(77);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, exitCode: 77, accounts: [{ ok: false, exitCode: 77 }] });
    expect(r.stderr).toMatch(/auth: (AUTH|PASS): -ERR \[AUTH\]/);
  });

  it('exit 69 (EX_UNAVAILABLE) when the connection is refused', async () => {
    const port = await closedPort();
    const r = await runPoplar(flags(path.join(tmp, 'refused')).map((a) => (a === String(srv.port) ? String(port) : a)), { env });
    expect(r.code).toBe(69);
    expect(r.stderr).toMatch(/connect: cannot connect/);
  });

  it('exit 69 (EX_UNAVAILABLE) when the certificate cannot be verified; --ca or --fingerprint fixes it', async () => {
    const dir = path.join(tmp, 'tls');
    const base = flags(dir).map((a) => (a === String(srv.port) ? String(srv.tlsPort) : a === 'none' ? 'implicit' : a));
    const r = await runPoplar(base, { env });
    expect(r.code).toBe(69);
    expect(r.stderr).toMatch(/tls: /);
    const ok = await runPoplar([...base, '--ca', srv.certFile, '--json'], { env });
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ totals: { delivered: 5 } });
    const { X509Certificate } = await import('node:crypto');
    const fp = new X509Certificate(await fs.readFile(srv.certFile)).fingerprint256;
    const pinned = await runPoplar([...base, '--fingerprint', fp], { env });
    expect(pinned.stderr).toBe('');
    expect(pinned.code).toBe(0);
    const wrongPin = await runPoplar([...base, '--fingerprint', fp.replace(/^../, fp.startsWith('00') ? '11' : '00')], { env });
    expect(wrongPin.code).toBe(69);
  });

  it('exit 78 (EX_CONFIG) for configuration errors', async () => {
    const missing = await runPoplar(['fetch', '--config', path.join(tmp, 'nope.toml')]);
    expect(missing.code).toBe(78);
    expect(missing.stderr).toMatch(/cannot read config file/);
    const bad = path.join(tmp, 'bad.toml');
    await fs.writeFile(bad, '[[account]]\nname = "x"\nhost = "h"\nuser = "u"\nsink = { type = "maildir", path = "m" }\n');
    const r = await runPoplar(['fetch', '--config', bad]);
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/exactly one of password/);
    const noSink = await runPoplar(['fetch', '--host', 'h', '--user', 'u', '--password-env', 'PW', '--keep']);
    expect(noSink.code).toBe(78);
    const unset = await runPoplar(flags(path.join(tmp, 'unset')).map((a) => (a === 'PW' ? 'POPLAR_UNSET_VAR' : a)), { env });
    expect(unset.code).toBe(78);
    expect(unset.stderr).toMatch(/POPLAR_UNSET_VAR is not set/);
  });

  it('a TOML config with two accounts, fetched concurrently; a password command', async () => {
    const dir = path.join(tmp, 'config');
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, 'fetch.toml');
    await fs.writeFile(
      file,
      `[fetch]
state_dir = "state"
max_concurrent = 2

[sinks.home]
type = "maildir"
path = "Maildir"

[[account]]
name = "alice"
host = "127.0.0.1"
port = ${srv.port}
tls = "none"
user = "alice"
password_env = "PW"
sink = "home"

[[account]]
name = "bob"
host = "127.0.0.1"
port = ${srv.port}
tls = "none"
user = "bob"
password_command = "echo hunter2"
keep = false
sink = { type = "maildir", path = "Bob" }
`,
    );
    const r = await runPoplar(['fetch', '--config', file, '--json'], { env });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ totals: { delivered: 8, deleted: 3 }, accounts: [{ account: 'alice', delivered: 5 }, { account: 'bob', delivered: 3, deleted: 3 }] });
    expect((await seqCounts(path.join(dir, 'Maildir'))).size).toBe(5);
    expect([...(await seqCounts(path.join(dir, 'Bob'))).keys()].sort()).toEqual([100, 101, 102]);
    expect((await fs.readdir(path.join(dir, 'state'))).sort()).toEqual(['alice.ledger', 'bob.ledger']);
    const only = await runPoplar(['fetch', '--config', file, '--account', 'alice', '--json'], { env });
    expect(JSON.parse(only.stdout)).toMatchObject({ accounts: [{ account: 'alice', delivered: 0 }] });
  });

  it('--daemon fetches on its interval and stops cleanly on SIGTERM (exit 0)', async () => {
    const dir = path.join(tmp, 'daemon');
    await fs.mkdir(dir, { recursive: true });
    const file = path.join(dir, 'fetch.toml');
    await fs.writeFile(
      file,
      `[fetch]\nstate_dir = "state"\ninterval = 0.3\njitter = 0.2\n\n[[account]]\nname = "d"\nhost = "127.0.0.1"\nport = ${srv.port}\ntls = "none"\nuser = "alice"\npassword = "secret"\nsink = { type = "maildir", path = "Maildir" }\n`,
    );
    const child = spawn(process.execPath, poplarArgs(['fetch', '--daemon', '--config', file]), { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
    const until = async (cond: () => Promise<boolean>): Promise<void> => {
      for (let i = 0; i < 300 && !(await cond()); i++) await sleep(50);
    };
    await until(async () => (await seqCounts(path.join(dir, 'Maildir'))).size >= 5);
    await srv.deliver('alice', seqMessage(7777));
    await until(async () => (await seqCounts(path.join(dir, 'Maildir'))).has(7777));
    expect((await seqCounts(path.join(dir, 'Maildir'))).has(7777)).toBe(true);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/"msg":"fetch daemon stopped"/);
    expect(stderr).toMatch(/"msg":"fetched"/);
  });
});
