import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacks } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const exec = promisify(execFile);

describe('poplar serve: the embedded default', () => {
  let dir: string;
  let srv: ServeProcess;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cli-'));
    srv = await startServe(['--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir });
  });
  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('creates ./poplar-data with a certificate, a users file and a demo maildrop', async () => {
    for (const f of ['poplar-data/tls/cert.pem', 'poplar-data/tls/key.pem', 'poplar-data/users']) {
      await expect(fs.access(path.join(dir, f))).resolves.toBeUndefined();
    }
    expect((await fs.stat(path.join(dir, 'poplar-data/tls/key.pem'))).mode & 0o077).toBe(0);
    expect((await fs.stat(path.join(dir, 'poplar-data/users'))).mode & 0o077).toBe(0);
    const users = await fs.readFile(path.join(dir, 'poplar-data/users'), 'utf8');
    expect(users).toMatch(/^demo:\{ARGON2ID\}\$argon2id\$/);
  });

  it.skipIf(lacks('curl'))('prints a demo password and a curl command that really retrieves the welcome message', async () => {
    const out = srv.stdout();
    const pw = /password: (\S+)/.exec(out)?.[1];
    expect(pw).toBeDefined();
    const curlLine = out.split('\n').find((l) => l.trim().startsWith('curl --user'));
    expect(curlLine).toBeDefined();
    // Run exactly what was printed (minus the shell quoting) with the real curl.
    const m = /curl --user '([^']+)' (\S+)/.exec(curlLine!.trim())!;
    const { stdout } = await exec('curl', ['-sS', '--user', m[1]!, m[2]!], { cwd: dir });
    expect(stdout).toContain('Subject: Welcome to Poplar');
    // The password never reaches the logs.
    expect(srv.stderr()).not.toContain(pw!);
    // The pop3s line works too, verifying the generated certificate.
    const sline = out.split('\n').find((l) => l.includes('pop3s://'))!;
    const sm = /--cacert (\S+) --user '([^']+)' (\S+)/.exec(sline.trim())!;
    const s = await exec('curl', ['-sS', '--cacert', sm[1]!, '--user', sm[2]!, sm[3]!], { cwd: dir });
    expect(s.stdout).toContain('Subject: Welcome to Poplar');
  });

  it('does not create a second demo user on restart, and logs one line per session end', async () => {
    const w = await Wire.connect(srv.plainPort);
    await w.line();
    await w.cmd('QUIT');
    await w.closed();
    await new Promise((r) => setTimeout(r, 200));
    const logout = srv.stderr().split('\n').filter((l) => l.includes('"logout"'));
    expect(logout.length).toBeGreaterThan(0);
    const j = JSON.parse(logout.at(-1)!) as Record<string, unknown>;
    expect(j).toMatchObject({ rip: '127.0.0.1', tls: false, reason: 'QUIT', retr: expect.any(Number), retrBytes: expect.any(Number), dele: 0 });
    await srv.stop();
    srv = await startServe(['--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir });
    expect(srv.stdout()).not.toContain('password:');
  });
});

describe('poplar serve: the native module', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cli-native-'));
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  it.skipIf(lacks('curl'))('warns once at start when RETR must use the JavaScript encoder, and RETR still gives the same message', async () => {
    const off = await startServe(['--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir, env: { POPLAR_NO_NATIVE: '1' } });
    let welcomeOff: string;
    try {
      const warn = off.stderr().split('\n').filter((l) => l.includes('"native":false'));
      expect(warn).toHaveLength(1);
      expect(warn[0]).toContain('POPLAR_NO_NATIVE=1');
      const pw = /password: (\S+)/.exec(off.stdout())![1]!;
      welcomeOff = (await exec('curl', ['-sS', '--user', `demo:${pw}`, `pop3://127.0.0.1:${off.plainPort}/1`])).stdout;
      expect(welcomeOff).toContain('Subject: Welcome to Poplar');
      await fs.writeFile(path.join(dir, 'pw'), pw);
    } finally {
      await off.stop();
    }
    const on = await startServe(['--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir, env: { POPLAR_NO_NATIVE: '' } });
    try {
      const built = (await import('../../src/server/retr-file.js')).fileCodec !== undefined;
      expect(on.stderr().includes('"native":false')).toBe(!built);
      const pw = await fs.readFile(path.join(dir, 'pw'), 'utf8');
      const welcomeOn = (await exec('curl', ['-sS', '--user', `demo:${pw}`, `pop3://127.0.0.1:${on.plainPort}/1`])).stdout;
      expect(welcomeOn).toBe(welcomeOff);
    } finally {
      await on.stop();
    }
  }, 60_000);
});

describe('poplar serve: bad configuration', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cli-bad-'));
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  const cases: [string, string[], RegExp, string?][] = [
    ['an unknown flag', ['--bogus'], /unknown option '--bogus'/],
    ['a malformed listen address', ['--listen', 'nonsense'], /server\.listen\.0: expected HOST:PORT/],
    ['a port out of range', ['--listen', '127.0.0.1:70000'], /port out of range/],
    ['a bad log level', ['--log-level', 'loud'], /--log-level/],
    ['a missing config file', ['--config', 'nope.toml'], /cannot read config file .*nope\.toml/],
    ['a TOML syntax error', ['--config', 'bad.toml'], /bad\.toml/, 'server = [\n'],
    ['an unknown setting', ['--config', 'unknown.toml'], /unknown setting server\.colour/, '[server]\ncolour = "red"\n'],
    ['a wrong type', ['--config', 'type.toml'], /server\.max_bad_commands/, '[server]\nmax_bad_commands = "ten"\n'],
    ['an idle timeout under 10 minutes', ['--config', 'idle.toml'], /server\.idle_timeout: RFC 1939/, '[server]\nidle_timeout = 30\n'],
    ['a certificate without a key', ['--tls-cert', 'x.pem'], /tls\.cert and tls\.key/],
    ['an unknown SASL mechanism', ['--config', 'mech.toml'], /unknown mechanism DIGEST-MD5/, '[server]\nsasl_mechanisms = ["PLAIN", "DIGEST-MD5"]\n'],
    ['OAuth mechanisms without OAuth', ['--config', 'oauth.toml'], /no \[auth\.oauth\] section/, '[server]\nsasl_mechanisms = ["XOAUTH2"]\n'],
    ['postgres without its section', ['--config', 'pg.toml'], /needs an \[auth\.postgres\] section/, '[auth]\ntype = "postgres"\n'],
    ['a bad trusted proxy CIDR', ['--config', 'cidr.toml'], /server\.trusted_proxies: "10\.0\.0\.0\/33" is not an address or CIDR/, '[server]\nproxy_protocol = true\ntrusted_proxies = ["10.0.0.0/8", "10.0.0.0/33"]\n'],
    ['PROXY protocol without trusted proxies', ['--config', 'proxy.toml'], /proxy_protocol = true needs server\.trusted_proxies/, '[server]\nproxy_protocol = true\n'],
    ['an unreachable user database', ['--config', 'pgdown.toml'], /cannot use the PostgreSQL user database/, '[auth]\ntype = "postgres"\n[auth.postgres]\nurl = "postgres://postgres@127.0.0.1:1/test"\nconnect_timeout = 1\n'],
  ];
  for (const [what, args, msg, file] of cases) {
    it(`exits 78 with one clear line for ${what}`, async () => {
      if (file !== undefined) await fs.writeFile(path.join(dir, args[1]!), file);
      const r = await runPoplar(['serve', '--data-dir', path.join(dir, 'data'), ...args], { cwd: dir });
      expect(r.code).toBe(78);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(msg);
    });
  }

  it('exits 78 when the port is taken', async () => {
    const blocker = net.createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    const port = (blocker.address() as net.AddressInfo).port;
    try {
      const r = await runPoplar(['serve', '--data-dir', path.join(dir, 'data2'), '--listen', `127.0.0.1:${port}`], { cwd: dir });
      expect(r.code).toBe(78);
      expect(r.stderr).toMatch(/EADDRINUSE/);
    } finally {
      blocker.close();
    }
  });
});
