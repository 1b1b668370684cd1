import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { once } from 'node:events';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

/**
 * SIGHUP re-reads the configuration file (docs/operations.md): certificates,
 * including those chosen by SNI, the users file, limits, SASL mechanisms and
 * the log level change for new sessions; a setting that needs a restart is
 * named in the log; a file that does not validate changes nothing.
 */

/**
 * The certificate a client sees on implicit TLS, asking for `servername`. Retried when the
 * server drops the connection: with a low max_connections_per_ip, the sockets of the checks
 * before may not have been seen closed yet.
 */
async function fingerprint(port: number, servername?: string): Promise<string> {
  for (let i = 0; ; i++) {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...(servername !== undefined ? { servername } : {}) });
    try {
      await once(s, 'secureConnect');
      const fp = s.getPeerCertificate().fingerprint256;
      // QUIT, so that the server ends the session and frees the slot at once.
      await once(s, 'data');
      s.write('QUIT\r\n');
      await once(s, 'close');
      return fp;
    } catch (e) {
      s.destroy();
      if (i === 80) throw e;
      await settle();
    }
  }
}

/** The certificate a client sees after STLS, asking for `servername`. */
async function stlsFingerprint(port: number, servername: string): Promise<string> {
  const { w } = await admitted(port);
  expect(await w.cmd('STLS')).toMatch(/^\+OK/);
  await w.upgrade({ servername });
  const fp = (w.socket as tls.TLSSocket).getPeerCertificate().fingerprint256;
  w.socket.end('QUIT\r\n');
  await w.closed();
  return fp;
}

async function certFingerprint(file: string): Promise<string> {
  return new (await import('node:crypto')).X509Certificate(await fs.readFile(file)).fingerprint256;
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 100));

/** A session that was let in: retried while closed sockets of earlier checks still count against the limit. */
async function admitted(port: number): Promise<{ w: Wire; greeting: string }> {
  for (let i = 0; ; i++) {
    const w = await Wire.connect(port);
    const greeting = await w.line();
    if (!greeting.includes('Too many connections') || i === 80) return { w, greeting };
    w.socket.destroy();
    await settle();
  }
}

/** Waits until `re` has matched `count` log lines. */
async function logLines(srv: ServeProcess, re: RegExp, count: number): Promise<string[]> {
  for (let i = 0; i < 200; i++) {
    const hits = srv.stderr().split('\n').filter((l) => re.test(l));
    if (hits.length >= count) return hits;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`no ${count} log lines matching ${re}:\n${srv.stderr()}`);
}

function config(dir: string, extra: { users?: string; server?: string; sni?: [string, string][]; top?: string }): string {
  return [
    `data_dir = "${dir}"`,
    extra.top ?? '',
    '[server]',
    'listen = ["127.0.0.1:0"]',
    'listen_tls = ["127.0.0.1:0"]',
    'auth_failure_delay = 0',
    'plaintext_auth = "always"',
    extra.server ?? '',
    '[tls]',
    `cert = "${dir}/a.pem"`,
    `key = "${dir}/a.key"`,
    ...(extra.sni ?? []).flatMap(([name, base]) => ['[[tls.sni]]', `name = "${name}"`, `cert = "${dir}/${base}.pem"`, `key = "${dir}/${base}.key"`]),
    '[auth]',
    `users = "${dir}/${extra.users ?? 'users'}"`,
    '',
  ].join('\n');
}

describe('SIGHUP re-reads the configuration', () => {
  let dir: string;
  let srv: ServeProcess;
  const fp: Record<string, string> = {};
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-hupcfg-'));
    for (const [base, host] of [['a', 'default.example'], ['b', 'pop.example.org'], ['c', 'wild.example.net']] as const) {
      await ensureSelfSignedCertificate(path.join(dir, `${base}.pem`), path.join(dir, `${base}.key`), host);
      fp[base] = await certFingerprint(path.join(dir, `${base}.pem`));
    }
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'users2'), 'bob:{PLAIN}secret\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(dir, { sni: [['pop.example.org', 'b']] }));
    srv = await startServe(['--config', path.join(dir, 'poplar.toml')]);
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('serves the certificate named by SNI on implicit TLS and after STLS, the default one otherwise', async () => {
    expect(await fingerprint(srv.tlsPort, 'pop.example.org')).toBe(fp['b']);
    expect(await fingerprint(srv.tlsPort, 'POP.Example.ORG')).toBe(fp['b']);
    expect(await fingerprint(srv.tlsPort, 'other.example.org')).toBe(fp['a']);
    expect(await fingerprint(srv.tlsPort)).toBe(fp['a']);
    expect(await stlsFingerprint(srv.plainPort, 'pop.example.org')).toBe(fp['b']);
    expect(await stlsFingerprint(srv.plainPort, 'elsewhere.example')).toBe(fp['a']);
  });

  it('applies new certificates, users, limits, mechanisms and log level; names what needs a restart', async () => {
    const open = await Wire.connect(srv.plainPort);
    await open.line();
    await open.login('alice', 'secret');
    expect(srv.stderr()).not.toMatch(/"level":20/);

    await fs.writeFile(
      path.join(dir, 'poplar.toml'),
      config(dir, {
        users: 'users2',
        top: 'log_level = "debug"',
        server: 'sasl_mechanisms = ["PLAIN"]\nmax_connections_per_ip = 3\nimplementation = "Reloaded"',
        sni: [['pop.example.org', 'b'], ['*.example.net', 'c']],
      }).replace('listen = ["127.0.0.1:0"]', 'listen = ["127.0.0.1:1"]'),
    );
    srv.child.kill('SIGHUP');
    await logLines(srv, /configuration reloaded/, 1);

    // A wildcard entry added by the reload: one label under example.net, not the domain itself.
    expect(await fingerprint(srv.tlsPort, 'mail.example.net')).toBe(fp['c']);
    expect(await fingerprint(srv.tlsPort, 'example.net')).toBe(fp['a']);
    expect(await fingerprint(srv.tlsPort, 'a.b.example.net')).toBe(fp['a']);
    expect(await stlsFingerprint(srv.plainPort, 'mail.example.net')).toBe(fp['c']);

    // New sessions: the new greeting, only PLAIN, the new users file.
    const w = await Wire.connect(srv.plainPort);
    expect(await w.line()).toMatch(/^\+OK Reloaded ready/);
    const capa = await w.cmdLines('CAPA');
    expect(capa.lines).toContain('SASL PLAIN');
    await w.login('bob', 'secret');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    const a = await Wire.connect(srv.plainPort);
    await a.line();
    expect(await a.cmd('USER alice')).toMatch(/^\+OK/);
    expect(await a.cmd('PASS secret')).toMatch(/^-ERR/);

    await a.cmd('QUIT');

    // The session opened before the reload goes on with what it had.
    expect(await open.cmd('STAT')).toMatch(/^\+OK/);
    expect(await open.cmd('QUIT')).toMatch(/^\+OK/);

    // The listener is not moved: named once, the old port still serves.
    const restart = await logLines(srv, /needs a restart/, 1);
    expect(restart.join('\n')).toContain('server.listen');
    expect(restart.join('\n')).not.toMatch(/sasl_mechanisms|max_connections_per_ip|tls\.|log_level/);

    // log_level = debug: a failed handshake is now logged (at debug).
    const raw = await Wire.connect(srv.tlsPort, { tls: false });
    raw.socket.write('not a ClientHello\r\n\r\n');
    await raw.closed();
    await logLines(srv, /"level":20.*TLS handshake failed/, 1);

    // max_connections_per_ip = 3 (it was 100): three are let in, the fourth is refused.
    const held: Wire[] = [];
    for (let i = 0; i < 60 && held.length < 3; i++) {
      const t = await Wire.connect(srv.plainPort);
      if ((await t.line()).startsWith('+OK')) held.push(t);
      else (t.socket.destroy(), await settle()); // a socket of the checks above not yet seen closed
    }
    expect(held).toHaveLength(3);
    const fourth = await Wire.connect(srv.plainPort);
    expect(await fourth.line()).toMatch(/^-ERR \[SYS\/TEMP\] Too many connections/);
    for (const h of held) {
      h.socket.end('QUIT\r\n');
      await h.closed();
    }
  });

  it('a file that does not validate changes nothing and is logged', async () => {
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(dir, { users: 'users', server: 'max_connections = "many"' }));
    srv.child.kill('SIGHUP');
    const failed = await logLines(srv, /reload failed/, 1);
    expect(failed[0]).toContain('server.max_connections');
    // Still the reloaded settings: bob, only PLAIN.
    const { w, greeting } = await admitted(srv.plainPort);
    expect(greeting).toMatch(/^\+OK Reloaded ready/);
    expect((await w.cmdLines('CAPA')).lines).toContain('SASL PLAIN');
    await w.login('bob', 'secret');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);

    // A certificate that does not match its key: the whole reload is refused, users file included.
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(dir, { users: 'users', sni: [['pop.example.org', 'b']] }).replace(`${dir}/a.key`, `${dir}/c.key`));
    srv.child.kill('SIGHUP');
    await logLines(srv, /TLS reload failed/, 1);
    expect(await fingerprint(srv.tlsPort, 'mail.example.net')).toBe(fp['c']);
    const { w: b } = await admitted(srv.plainPort);
    await b.login('bob', 'secret');
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
    expect(srv.child.exitCode).toBeNull();
  });
});

describe('SIGHUP with --workers 2', () => {
  let dir: string;
  let srv: ServeProcess;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-hupw-'));
    await ensureSelfSignedCertificate(path.join(dir, 'a.pem'), path.join(dir, 'a.key'), 'default.example');
    await ensureSelfSignedCertificate(path.join(dir, 'b.pem'), path.join(dir, 'b.key'), 'pop.example.org');
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(dir, {}));
    srv = await startServe(['--config', path.join(dir, 'poplar.toml'), '--workers', '2'], { expectListeners: 4 });
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('every worker reloads: each logs it, and every connection gets the new certificate', async () => {
    const b = await certFingerprint(path.join(dir, 'b.pem'));
    await fs.writeFile(path.join(dir, 'poplar.toml'), config(dir, { sni: [['pop.example.org', 'b']], server: 'implementation = "Reloaded"' }));
    srv.child.kill('SIGHUP');
    const lines = await logLines(srv, /configuration reloaded/, 2);
    const pids = new Set(lines.map((l) => (JSON.parse(l) as { pid: number }).pid));
    expect(pids.size).toBe(2);
    for (let i = 0; i < 8; i++) {
      expect(await fingerprint(srv.tlsPort, 'pop.example.org')).toBe(b);
      const w = await Wire.connect(srv.plainPort);
      expect(await w.line()).toMatch(/^\+OK Reloaded ready/);
      w.socket.destroy();
    }
  });
});
