/**
 * RFC 2595 / RFC 8314 over real sockets: STLS, implicit TLS, protocol
 * versions, renegotiation, cleartext refusal, certificate reload, and the
 * capabilities after STLS.
 */
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSelfSignedCertificate, readTlsFiles } from '../../src/config/tls-material.js';
import { lacks } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const CAPA_PLAIN = ['TOP', 'USER', 'SASL *', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'UIDL', 'STLS', 'IMPLEMENTATION Poplar'];
const CAPA_TLS = CAPA_PLAIN.filter((l) => l !== 'STLS');

/**
 * CAPA lines with the SASL line reduced to `SASL *` (more mechanisms are being
 * added); PLAIN and LOGIN must be in it when cleartext logins are allowed, and
 * must not be when they are not.
 */
function capaShape(lines: string[], plaintext = true): string[] {
  return lines.map((l) => {
    if (!l.startsWith('SASL ')) return l;
    const mechs = l.slice(5).split(' ');
    if (plaintext) expect(mechs).toEqual(expect.arrayContaining(['PLAIN', 'LOGIN']));
    else expect(mechs.filter((m) => m === 'PLAIN' || m === 'LOGIN')).toEqual([]);
    return 'SASL *';
  });
}

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer({
    users: [
      { name: 'alice', password: 'secret' },
      { name: 'bob', password: 'pw' },
      { name: 'carol', password: 'pw' },
    ],
    settings: { max_bad_commands: 1000 },
  });
  await srv.deliver('alice', 'Subject: s\n\nbody\n'); // 20 octets
});
afterAll(() => srv.stop());

async function plain(port = srv.port): Promise<Wire> {
  const w = await Wire.connect(port);
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

async function implicit(port = srv.tlsPort): Promise<Wire> {
  const w = await Wire.connect(port, { tls: true });
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

async function stls(w: Wire): Promise<void> {
  expect(await w.cmd('STLS')).toBe('+OK Begin TLS negotiation now.');
  await w.upgrade();
}

async function quit(w: Wire): Promise<void> {
  expect(await w.cmd('QUIT')).toMatch(/^\+OK /);
  await w.closed();
}

/** Outcome of a raw TLS connection attempt to the implicit-TLS port. */
async function tryTls(opts: tls.ConnectionOptions): Promise<{ ok: true; socket: tls.TLSSocket } | { ok: false; error: string }> {
  const s = tls.connect({ host: '127.0.0.1', rejectUnauthorized: false, servername: 'localhost', ...opts });
  try {
    await Promise.race([
      once(s, 'secureConnect'),
      once(s, 'close').then(() => {
        throw new Error('closed');
      }),
    ]);
    return { ok: true, socket: s };
  } catch (e) {
    s.destroy();
    return { ok: false, error: (e as Error).message };
  }
}

/**
 * Try a TLS 1.2 renegotiation. With renegotiation disabled the server either
 * alerts (error / close) or ignores the new ClientHello, so it never completes.
 */
async function renegotiation(s: tls.TLSSocket): Promise<string> {
  return new Promise<string>((resolve) => {
    const timer = setTimeout(() => resolve('no answer'), 1500);
    const done = (r: string): void => {
      clearTimeout(timer);
      resolve(r);
    };
    s.once('close', () => done('closed'));
    const ok = s.renegotiate({ rejectUnauthorized: false }, (err) => done(err ? `error: ${err.message}` : 'renegotiated'));
    if (!ok) done('refused locally');
  });
}

describe('STLS', () => {
  it('advertised on the plain port before login only; never on the implicit-TLS port; gone after STLS', async () => {
    const w = await plain();
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_PLAIN);
    await w.login('bob', 'pw');
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    expect(await w.cmd('STLS')).toMatch(/^-ERR /);
    await quit(w);

    const t = await implicit();
    expect(capaShape((await t.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    expect(await t.cmd('STLS')).toBe('-ERR TLS is already active.');
    await t.login('bob', 'pw');
    expect(capaShape((await t.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    await quit(t);

    const s = await plain();
    await stls(s);
    expect(capaShape((await s.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    expect(await s.cmd('STLS')).toBe('-ERR TLS is already active.');
    await quit(s);
  });

  it('STLS with an argument is refused and the session stays plaintext', async () => {
    const w = await plain();
    expect(await w.cmd('STLS now')).toMatch(/^-ERR /);
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_PLAIN);
    await quit(w);
  });

  it('after STLS the session is still in AUTHORIZATION, pending USER forgotten; login then works', async () => {
    const w = await plain();
    expect(await w.cmd('USER alice')).toBe('+OK');
    await stls(w);
    expect((w.socket as tls.TLSSocket).encrypted).toBe(true);
    expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
    expect(await w.cmd('PASS secret')).toMatch(/^-ERR /);
    await w.login('alice', 'secret');
    expect(await w.cmd('STAT')).toBe('+OK 1 20');
    const r = await w.cmdMulti('RETR 1');
    expect(r.body.toString('latin1')).toBe('Subject: s\r\n\r\nbody\r\n.\r\n');
    await quit(w);
  });

  it('AUTH PLAIN over STLS', async () => {
    const w = await plain();
    await stls(w);
    expect(await w.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    await quit(w);
  });
});

describe('plaintext after STLS is thrown away', () => {
  it('STLS\\r\\nCAPA\\r\\n in one write: CAPA is never answered, not before and not after the handshake', async () => {
    const w = await plain();
    w.sendRaw('STLS\r\nCAPA\r\n');
    expect(await w.line()).toBe('+OK Begin TLS negotiation now.');
    await sleep(100);
    expect(w.pending.toString('latin1')).toBe('');
    await w.upgrade();
    await sleep(100);
    expect(w.pending.length).toBe(0); // the stale CAPA did not run inside TLS either
    expect(await w.cmd('NOOP')).toBe('-ERR Not logged in.');
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    await sleep(50);
    expect(w.pending.length).toBe(0);
    await quit(w);
  });

  it('a whole pipelined login behind STLS is discarded too', async () => {
    const w = await plain();
    w.sendRaw('STLS\r\nUSER alice\r\nPASS secret\r\nSTAT\r\n');
    expect(await w.line()).toBe('+OK Begin TLS negotiation now.');
    await w.upgrade();
    expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
    expect(await w.cmd('PASS secret')).toMatch(/^-ERR /);
    await quit(w);
  });

  it('plaintext sent after +OK (not TLS) gets no plaintext answer: the handshake fails and the connection closes', async () => {
    const w = await plain();
    expect(await w.cmd('STLS')).toBe('+OK Begin TLS negotiation now.');
    w.sendRaw('CAPA\r\n');
    await w.closed(5000);
    expect(w.pending.toString('latin1')).not.toContain('+OK');
  });

  it('STLS at the head of a big pipelined batch (input paused at that moment) upgrades and discards the rest', async () => {
    const w = await plain();
    w.sendRaw('STLS\r\n' + 'CAPA\r\n'.repeat(100));
    expect(await w.line()).toBe('+OK Begin TLS negotiation now.');
    await sleep(50);
    expect(w.pending.length).toBe(0);
    await w.upgrade();
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    await quit(w);
  });

  it('STLS after a burst of pipelined commands still upgrades and discards the rest', async () => {
    const w = await plain();
    w.sendRaw('CAPA\r\n'.repeat(60) + 'STLS\r\nCAPA\r\nCAPA\r\n');
    for (let i = 0; i < 60; i++) expect(capaShape((await w.multiLines()).lines)).toEqual(CAPA_PLAIN);
    expect(await w.line()).toBe('+OK Begin TLS negotiation now.');
    await w.upgrade();
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    await quit(w);
  });
});

describe('refusing cleartext logins (plaintext_auth = never)', () => {
  let strict: TestServer;
  beforeAll(async () => {
    strict = await startTestServer({ settings: { plaintext_auth: 'never', max_bad_commands: 1000 } });
  });
  afterAll(() => strict.stop());

  it('CAPA hides USER and the plaintext mechanisms until TLS', async () => {
    const w = await plain(strict.port);
    const lines = capaShape((await w.cmdLines('CAPA')).lines, false).filter((l) => l !== 'SASL *');
    expect(lines).toEqual(['TOP', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', 'UIDL', 'STLS', 'IMPLEMENTATION Poplar']);
    const listed = await w.cmdLines('AUTH');
    expect(listed.status).toBe('+OK Supported mechanisms follow');
    expect(listed.lines).not.toContain('PLAIN');
    expect(listed.lines).not.toContain('LOGIN');
    await stls(w);
    expect(capaShape((await w.cmdLines('CAPA')).lines)).toEqual(CAPA_TLS);
    await quit(w);
  });

  it('valid and invalid credentials get the same -ERR over plaintext; all work after STLS', async () => {
    const w = await plain(strict.port);
    const replies = new Map<string, string[]>();
    for (const [label, cmds] of [
      ['valid', ['USER alice', 'PASS secret', `AUTH PLAIN ${b64('\0alice\0secret')}`, 'AUTH LOGIN', 'AUTH PLAIN']],
      ['invalid', ['USER mallory', 'PASS nope', `AUTH PLAIN ${b64('\0mallory\0nope')}`, 'AUTH LOGIN', 'AUTH PLAIN']],
    ] as const) {
      const got: string[] = [];
      for (const c of cmds) got.push(await w.cmd(c));
      replies.set(label, got);
    }
    expect(replies.get('valid')).toEqual(replies.get('invalid'));
    for (const r of replies.get('valid')!) expect(r).toMatch(/^-ERR /);
    expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
    // Now with TLS: USER/PASS, then on a new connection AUTH PLAIN and AUTH LOGIN.
    await stls(w);
    await w.login('alice', 'secret');
    await quit(w);
    const p = await plain(strict.port);
    await stls(p);
    expect(await p.cmd(`AUTH PLAIN ${b64('\0alice\0secret')}`)).toBe('+OK Logged in.');
    await quit(p);
    const l = await implicit(strict.tlsPort);
    expect(await l.cmd('AUTH LOGIN')).toBe(`+ ${b64('Username:')}`);
    expect(await l.cmd(b64('alice'))).toBe(`+ ${b64('Password:')}`);
    expect(await l.cmd(b64('secret'))).toBe('+OK Logged in.');
    await quit(l);
  });

  it('the default (loopback) allows cleartext from 127.0.0.1', async () => {
    const w = await plain();
    await w.login('carol', 'pw');
    await quit(w);
  });
});

describe('implicit TLS', () => {
  it('handshake first, then the greeting; TLS 1.2 or later', async () => {
    const s = tls.connect({ host: '127.0.0.1', port: srv.tlsPort, rejectUnauthorized: false, servername: 'localhost' });
    let early = '';
    s.on('data', (c: Buffer) => (early += c.toString('latin1')));
    await once(s, 'secureConnect');
    expect(['TLSv1.2', 'TLSv1.3']).toContain(s.getProtocol());
    for (let i = 0; i < 50 && !early.includes('\r\n'); i++) await sleep(10);
    expect(early).toBe('+OK Poplar ready.\r\n');
    s.destroy();
  });

  it('the plain port sends its greeting at once, in cleartext', async () => {
    const s = net.connect({ host: '127.0.0.1', port: srv.port });
    const [c] = (await once(s, 'data')) as [Buffer];
    expect(c.toString('latin1')).toBe('+OK Poplar ready.\r\n');
    s.destroy();
  });

  it('accepts TLS 1.2 explicitly and verifies against the test certificate', async () => {
    const r = await tryTls({ port: srv.tlsPort, maxVersion: 'TLSv1.2', ca: srv.cert, rejectUnauthorized: true });
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(r.socket.getProtocol()).toBe('TLSv1.2');
      r.socket.destroy();
    }
  });

  it('refuses TLS 1.1 and 1.0 (implicit and STLS), although the client could speak them', async () => {
    const old = { minVersion: 'TLSv1' as const, maxVersion: 'TLSv1.1' as const, ciphers: 'DEFAULT:@SECLEVEL=0' };
    // Control: this client does speak TLS 1.1 with a server that allows it.
    const key = await fs.readFile(path.join(path.dirname(srv.certFile), 'key.pem'));
    const lax = tls.createServer({ cert: srv.cert, key, minVersion: 'TLSv1', ciphers: 'DEFAULT:@SECLEVEL=0' }, (s) => s.end());
    lax.listen(0, '127.0.0.1');
    await once(lax, 'listening');
    const control = await tryTls({ port: (lax.address() as net.AddressInfo).port, ...old });
    lax.close();
    expect(control.ok).toBe(true);
    if (control.ok) {
      expect(control.socket.getProtocol()).toBe('TLSv1.1');
      control.socket.destroy();
    }

    const r = await tryTls({ port: srv.tlsPort, ...old });
    expect(r.ok).toBe(false);

    const w = await plain();
    expect(await w.cmd('STLS')).toBe('+OK Begin TLS negotiation now.');
    const s = tls.connect({ socket: w.socket, rejectUnauthorized: false, servername: 'localhost', ...old });
    s.on('error', () => undefined);
    const outcome = await new Promise<string>((resolve) => {
      s.once('secureConnect', () => resolve(`connected with ${s.getProtocol()}`));
      s.once('error', (e) => resolve(`error: ${e.message}`));
      s.once('close', () => resolve('closed'));
    });
    expect(outcome).toMatch(/^(error|closed)/);
    s.destroy();
  });

  it('renegotiation is refused on TLS 1.2', async () => {
    // Control: a plain Node TLS server lets this client renegotiate.
    const key = await fs.readFile(path.join(path.dirname(srv.certFile), 'key.pem'));
    const lax = tls.createServer({ cert: srv.cert, key }, (sock) => sock.on('error', () => undefined));
    lax.listen(0, '127.0.0.1');
    await once(lax, 'listening');
    const c = await tryTls({ port: (lax.address() as net.AddressInfo).port, maxVersion: 'TLSv1.2' });
    expect(c.ok).toBe(true);
    if (c.ok) {
      expect(await renegotiation(c.socket)).toBe('renegotiated');
      c.socket.destroy();
    }
    lax.close();

    const r = await tryTls({ port: srv.tlsPort, maxVersion: 'TLSv1.2' });
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    const s = r.socket;
    s.on('error', () => undefined);
    expect(await renegotiation(s)).not.toBe('renegotiated');
    s.destroy();
    // The server is fine afterwards.
    const w = await implicit();
    expect(await w.cmd('NOOP')).toBe('-ERR Not logged in.');
    await quit(w);
  });

  it('renegotiation is refused after STLS too', async () => {
    const w = await plain();
    expect(await w.cmd('STLS')).toBe('+OK Begin TLS negotiation now.');
    const s = tls.connect({ socket: w.socket, rejectUnauthorized: false, servername: 'localhost', maxVersion: 'TLSv1.2' });
    s.on('error', () => undefined);
    await once(s, 'secureConnect');
    expect(await renegotiation(s)).not.toBe('renegotiated');
    s.destroy();
  });

  it.skipIf(lacks('openssl'))('does not ask for a client certificate (no CertificateRequest in the handshake)', async () => {
    const key = await fs.readFile(path.join(path.dirname(srv.certFile), 'key.pem'));
    const asking = tls.createServer({ cert: srv.cert, key, requestCert: true, rejectUnauthorized: false }, (sock) => sock.end());
    asking.listen(0, '127.0.0.1');
    await once(asking, 'listening');
    const control = (asking.address() as net.AddressInfo).port;
    try {
      for (const version of ['-tls1_2', '-tls1_3']) {
        // Control: openssl's state trace shows the request when a server sends one.
        expect(await sClientTrace(control, version)).toMatch(/certificate request/i);
        const trace = await sClientTrace(srv.tlsPort, version);
        expect(trace).toMatch(/\+OK Poplar ready\./);
        expect(trace).not.toMatch(/certificate request/i);
      }
    } finally {
      asking.close();
    }
  });
});

/** `openssl s_client -state` against a port: the handshake trace and what the server sent. */
async function sClientTrace(port: number, version: string): Promise<string> {
  const child = spawn('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, version, '-state', '-ign_eof'], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString('latin1')));
  child.stderr.on('data', (c: Buffer) => (out += c.toString('latin1')));
  const exited = once(child, 'exit');
  for (let i = 0; i < 100 && !/Poplar ready|CONNECTED[\s\S]*---\s*$/.test(out) && child.exitCode === null; i++) await sleep(20);
  await sleep(50);
  child.kill();
  await exited;
  return out;
}

describe('timeouts under TLS', () => {
  it('the inactivity -ERR reaches the client before the close, on implicit TLS and after STLS', async () => {
    const s = await startTestServer({ settings: { login_timeout: 0.3 } });
    try {
      const a = await implicit(s.tlsPort);
      const b = await plain(s.port);
      await stls(b);
      expect(await a.line(3000)).toBe('-ERR Disconnected for inactivity.');
      expect(await b.line(3000)).toBe('-ERR Disconnected for inactivity.');
      await a.closed();
      await b.closed();
    } finally {
      await s.stop();
    }
  });

  it('a client that connects to the implicit-TLS port and never handshakes is dropped', async () => {
    const s = await startTestServer({ settings: { login_timeout: 1 } });
    try {
      const sock = net.connect({ host: '127.0.0.1', port: s.tlsPort });
      await once(sock, 'connect');
      const t0 = Date.now();
      let got = 0;
      sock.on('data', (c: Buffer) => (got += c.length));
      sock.on('error', () => undefined);
      await once(sock, 'close');
      expect(Date.now() - t0).toBeGreaterThanOrEqual(800);
      expect(Date.now() - t0).toBeLessThan(5000);
      expect(got).toBe(0);
    } finally {
      await s.stop();
    }
  });
});

describe('certificate reload', () => {
  it('new connections get the new certificate; open sessions keep working', async () => {
    const s = await startTestServer({ users: [{ name: 'alice', password: 'secret' }, { name: 'bob', password: 'pw' }] });
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cert2-'));
    try {
      const oldFp = new X509Certificate(s.cert).fingerprint256;
      const fpOf = (w: Wire): string => (w.socket as tls.TLSSocket).getPeerCertificate().fingerprint256;

      const before = await implicit(s.tlsPort);
      expect(fpOf(before)).toBe(oldFp);
      await before.login('alice', 'secret');
      const beforeStls = await plain(s.port);
      await stls(beforeStls);
      expect(fpOf(beforeStls)).toBe(oldFp);

      const certFile = path.join(dir, 'cert.pem');
      const keyFile = path.join(dir, 'key.pem');
      expect(await ensureSelfSignedCertificate(certFile, keyFile, 'other.example')).toBe(true);
      const material = await readTlsFiles(certFile, keyFile);
      const newFp = new X509Certificate(material.cert).fingerprint256;
      expect(newFp).not.toBe(oldFp);
      s.server.reloadTls(material);

      const after = await implicit(s.tlsPort);
      expect(fpOf(after)).toBe(newFp);
      const afterStls = await plain(s.port);
      await stls(afterStls);
      expect(fpOf(afterStls)).toBe(newFp);
      // The new certificate verifies for its own name.
      const verified = await tryTls({ port: s.tlsPort, ca: material.cert, servername: 'other.example', rejectUnauthorized: true });
      expect(verified.ok).toBe(true);
      if (verified.ok) verified.socket.destroy();

      // Sessions opened before the reload go on.
      expect(await before.cmd('STAT')).toBe('+OK 0 0');
      await beforeStls.login('bob', 'pw');
      expect(await beforeStls.cmd('STAT')).toBe('+OK 0 0');
      await quit(before);
      await quit(beforeStls);
      await quit(after);
      await quit(afterStls);
    } finally {
      await s.stop();
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
