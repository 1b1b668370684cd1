/**
 * Resource limits over real sockets: connections per address and in total,
 * bad-command cutoff, slow and idle clients.
 */
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ServerSettings } from '../../src/server/context.js';
import { lacks, lacksRoot } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let servers: TestServer[] = [];
let wires: Wire[] = [];
afterEach(async () => {
  for (const w of wires) w.close();
  wires = [];
  await Promise.all(servers.map((s) => s.stop()));
  servers = [];
});

async function server(settings: Partial<ServerSettings>): Promise<TestServer> {
  const s = await startTestServer({ settings });
  servers.push(s);
  return s;
}

async function greeted(port: number, tls = false): Promise<Wire> {
  const w = await Wire.connect(port, { tls });
  wires.push(w);
  expect(await w.line()).toBe('+OK Poplar ready.');
  return w;
}

const REFUSED = '-ERR [SYS/TEMP] Too many connections, try again later.';

/** Connect and expect the refusal line, then the close. */
async function refused(port: number): Promise<void> {
  const w = await Wire.connect(port);
  wires.push(w);
  expect(await w.line()).toBe(REFUSED);
  await w.closed();
  expect(w.pending.length).toBe(0);
}

/** Retry until a connection is admitted again (slots are freed when the socket closes). */
async function admittedEventually(port: number): Promise<Wire> {
  for (let i = 0; ; i++) {
    const w = await Wire.connect(port);
    wires.push(w);
    const l = await w.line();
    if (l === '+OK Poplar ready.') return w;
    expect(l).toBe(REFUSED);
    if (i > 100) throw new Error('slot never freed');
    await sleep(20);
  }
}

describe('connection limits', () => {
  it('max_connections_per_ip: the third connection gets -ERR [SYS/TEMP] and is closed; the others keep working', async () => {
    const srv = await server({ max_connections_per_ip: 2 });
    const a = await greeted(srv.port);
    const b = await greeted(srv.port);
    await refused(srv.port);
    await refused(srv.port);
    // The implicit-TLS port counts against the same address: no handshake, no greeting.
    const t = await Wire.connect(srv.tlsPort, { tls: true }).then(
      (w) => {
        wires.push(w);
        return w.line(2000).then(
          (l) => `line ${l}`,
          () => 'closed',
        );
      },
      () => 'handshake failed',
    );
    expect(t).toMatch(/^(closed|handshake failed)$/);
    expect(await a.cmd('USER alice')).toBe('+OK');
    expect(await a.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await b.cmdLines('CAPA')).toMatchObject({ status: expect.stringMatching(/^\+OK/) });
    expect(await a.cmd('QUIT')).toMatch(/^\+OK/);
    await a.closed();
    const c = await admittedEventually(srv.port);
    expect(await c.cmd('USER alice')).toBe('+OK');
    expect(await c.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await c.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await b.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('max_connections: total limit over both listeners', async () => {
    const srv = await server({ max_connections: 20 });
    const open: Wire[] = [];
    for (let i = 0; i < 10; i++) open.push(await greeted(srv.port));
    for (let i = 0; i < 10; i++) open.push(await greeted(srv.tlsPort, true));
    expect(srv.server.connectionCount).toBe(20);
    await refused(srv.port);
    open[0]!.close();
    open[10]!.close();
    const again = await admittedEventually(srv.port);
    expect(await again.cmdLines('CAPA')).toMatchObject({ status: expect.stringMatching(/^\+OK/) });
    for (const w of open.filter((_, i) => i !== 0 && i !== 10)) expect(await w.cmd('NOOP')).toBe('-ERR Not logged in.');
  });

  it('a refused connection does not use up a slot', async () => {
    const srv = await server({ max_connections_per_ip: 1 });
    const a = await greeted(srv.port);
    for (let i = 0; i < 5; i++) await refused(srv.port);
    a.close();
    await admittedEventually(srv.port);
  });

  it('a client that leaves just as its TLS handshake ends frees its slot at once, not at the login timeout (implicit TLS and STLS)', async () => {
    const srv = await server({ max_connections_per_ip: 1, login_timeout: 120 });
    // The slot of the connection closed just before may not be free yet on the server's side: try again.
    const handshaken = async (): Promise<tls.TLSSocket> => {
      for (let i = 0; ; i++) {
        const s = tls.connect({ host: '127.0.0.1', port: srv.tlsPort, rejectUnauthorized: false, servername: 'localhost' });
        s.on('error', () => undefined);
        const ok = await once(s, 'secureConnect').then(() => true, () => false);
        if (ok) return s;
        if (i > 100) throw new Error('never admitted');
        await sleep(20);
      }
    };
    for (let i = 0; i < 3; i++) {
      (await handshaken()).destroy();
      (await admittedEventually(srv.port)).close();
    }
    for (let i = 0; i < 3; i++) {
      const w = await admittedEventually(srv.port);
      expect(await w.cmd('STLS')).toMatch(/^\+OK/);
      const s = tls.connect({ socket: w.socket, rejectUnauthorized: false, servername: 'localhost' });
      await once(s, 'secureConnect');
      s.destroy();
      (await admittedEventually(srv.port)).close();
    }
  });
});

describe('max_bad_commands', () => {
  it('drops the client after that many invalid commands', async () => {
    const srv = await server({ max_bad_commands: 3 });
    const w = await greeted(srv.port);
    expect(await w.cmd('HELO x')).toBe('-ERR Unknown command.');
    expect(await w.cmd('STAT')).toBe('-ERR Not logged in.');
    expect(await w.cmd('GET / HTTP/1.0')).toBe('-ERR Too many invalid commands.');
    await w.closed();
    expect(w.pending.length).toBe(0);
  });

  it('counts in TRANSACTION too, and over-long lines count', async () => {
    const srv = await server({ max_bad_commands: 3 });
    const w = await greeted(srv.port);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('USER alice')).toBe('-ERR Already logged in.');
    expect(await w.cmd('X'.repeat(5000))).toBe('-ERR Line too long.');
    expect(await w.cmd('BOGUS')).toBe('-ERR Too many invalid commands.');
    await w.closed();
    // Dropped, not QUIT: the lock is released, nothing removed; the next session works.
    for (let i = 0; ; i++) {
      const n = await greeted(srv.port);
      expect(await n.cmd('USER alice')).toBe('+OK');
      const r = await n.cmd('PASS secret');
      if (r === '+OK Logged in.') break;
      expect(r).toMatch(/^-ERR \[IN-USE\]/);
      if (i > 100) throw new Error('lock never released');
      await sleep(20);
    }
  });

  it('valid commands do not reset or add to the count', async () => {
    const srv = await server({ max_bad_commands: 2 });
    const w = await greeted(srv.port);
    expect(await w.cmd('BOGUS')).toBe('-ERR Unknown command.');
    for (let i = 0; i < 20; i++) expect((await w.cmdLines('CAPA')).status).toMatch(/^\+OK/);
    expect(await w.cmd('BOGUS')).toBe('-ERR Too many invalid commands.');
    await w.closed();
  });
});

describe('slow and idle clients', () => {
  it('a client trickling a line that never ends is cut off by the login timeout', async () => {
    const srv = await server({ login_timeout: 0.4 });
    const w = await greeted(srv.port);
    // A line over the cap is answered at once (not buffered), and the line never ending does not keep the session alive.
    w.sendRaw('U'.repeat(20_000));
    expect(await w.line()).toBe('-ERR Line too long.');
    const t0 = Date.now();
    expect(await w.line(3000)).toBe('-ERR Disconnected for inactivity.');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(300);
    await w.closed();
  });

  it('a logged-in client that stops reading in the middle of a big RETR is dropped by the idle timeout, without UPDATE', async () => {
    const srv = await server({ idle_timeout: 0.3 });
    const big = Buffer.alloc(16 * 1024 * 1024, `${'x'.repeat(1023)}\n`);
    await srv.deliver('alice', big);
    const w = await greeted(srv.port);
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await w.cmd('RSET')).toMatch(/^\+OK/);
    w.socket.removeAllListeners('data');
    w.socket.pause();
    w.socket.write('RETR 1\r\nDELE 1\r\nQUIT\r\n');
    // The kernel keeps taking a trickle of data for a few seconds (each write counts as activity); then the
    // transfer stalls for idle_timeout and the server drops the client.
    for (let i = 0; i < 1000 && srv.server.connectionCount > 0; i++) await sleep(20);
    expect(srv.server.connectionCount).toBe(0);
    // QUIT was never reached: the message is still there.
    const n = await greeted(srv.port);
    expect(await n.cmd('USER alice')).toBe('+OK');
    expect(await n.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await n.cmd('STAT')).toBe(`+OK 1 ${big.length + big.length / 1024}`);
    expect(await n.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('many idle connections are all closed by the login timeout and the slots are freed', async () => {
    const srv = await server({ login_timeout: 0.3, max_connections: 60 });
    const many: Wire[] = [];
    for (let i = 0; i < 50; i++) many.push(await greeted(srv.port));
    await Promise.all(many.map(async (w) => {
      expect(await w.line(5000)).toBe('-ERR Disconnected for inactivity.');
      await w.closed();
    }));
    for (let i = 0; i < 100 && srv.server.connectionCount > 0; i++) await sleep(20);
    expect(srv.server.connectionCount).toBe(0);
  });
});

describe('per-address limit by prefix', () => {
  // Addresses bound to lo for this test: two /64s, three addresses in the first.
  const SAME = ['fd00:5eed:64::1', 'fd00:5eed:64::2', 'fd00:5eed:64::3'];
  const OTHER = 'fd00:5eed:65::1';
  const added: string[] = [];
  // Adding addresses to lo needs root and ip(8).
  const canBind = !lacksRoot() && !lacks('ip');

  beforeAll(() => {
    if (!canBind) return;
    for (const a of [...SAME, OTHER]) {
      const r = spawnSync('ip', ['-6', 'addr', 'add', `${a}/64`, 'dev', 'lo', 'nodad']);
      if (r.status === 0 || /exists/i.test(r.stderr.toString())) added.push(a);
      else throw new Error(`ip addr add ${a}: ${r.stderr.toString()}`);
    }
  });
  afterAll(() => {
    for (const a of added) spawnSync('ip', ['-6', 'addr', 'del', `${a}/64`, 'dev', 'lo']);
  });

  async function from(port: number, localAddress: string): Promise<string> {
    const sock = net.connect({ host: '::1', port, localAddress });
    sock.on('error', () => undefined);
    let got = '';
    sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
    await once(sock, 'connect');
    for (let i = 0; i < 200 && !got.includes('\r\n'); i++) await sleep(10);
    cleanup.push(sock);
    return got.split('\r\n')[0]!;
  }
  const cleanup: net.Socket[] = [];
  afterEach(() => {
    for (const s of cleanup) s.destroy();
    cleanup.length = 0;
  });

  it.skipIf(!canBind)('two addresses of one IPv6 /64 share max_connections_per_ip; another /64 does not', async () => {
    const srv = await server({ max_connections_per_ip: 2 });
    const [v6] = await srv.server.listen([{ host: '::1', port: 0, tls: false }]);
    const port = v6!.port;
    expect(await from(port, SAME[0]!)).toBe('+OK Poplar ready.');
    expect(await from(port, SAME[1]!)).toBe('+OK Poplar ready.');
    // A third address of the same /64 is the same client.
    expect(await from(port, SAME[2]!)).toBe(REFUSED);
    expect(await from(port, OTHER)).toBe('+OK Poplar ready.');
  });

  it.skipIf(!canBind)('ipv6_prefix = 128 counts each address on its own', async () => {
    const srv = await server({ max_connections_per_ip: 1, ipv6_prefix: 128 });
    const [v6] = await srv.server.listen([{ host: '::1', port: 0, tls: false }]);
    for (const a of SAME) expect(await from(v6!.port, a)).toBe('+OK Poplar ready.');
    expect(await from(v6!.port, SAME[0]!)).toBe(REFUSED);
  });
});
