/**
 * PROXY protocol on real sockets: a header from a trusted proxy gives the
 * client's address to the log, the observers, the per-address limit and the
 * loopback rule, on the plain and the implicit-TLS listener.
 */
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import type { ClientInfo } from '../../src/server/client-info.js';
import type { ServerSettings } from '../../src/server/context.js';
import { encodeProxyHeader } from '../../src/server/proxy-header.js';
import { pino } from 'pino';
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

interface Started {
  s: TestServer;
  clients: ClientInfo[];
  logs: Record<string, unknown>[];
}

async function server(settings: Partial<ServerSettings> = {}): Promise<Started> {
  const clients: ClientInfo[] = [];
  const logs: Record<string, unknown>[] = [];
  const logger = pino({ level: 'debug' }, { write: (l: string) => void logs.push(JSON.parse(l) as Record<string, unknown>) });
  const s = await startTestServer({
    settings: { proxy_protocol: true, trusted_proxies: ['127.0.0.0/8'], ...settings },
    logger,
    observers: [{ connected: (c) => (clients.push(c), {}) }],
  });
  servers.push(s);
  return { s, clients, logs };
}

/** Connect as the proxy, write `header` (and maybe more), and read with a Wire. */
async function viaProxy(port: number, header: Buffer | string): Promise<Wire> {
  const sock = net.connect({ host: '127.0.0.1', port });
  await once(sock, 'connect');
  sock.write(header);
  const w = Wire.over(sock);
  wires.push(w);
  return w;
}

const from = (sourceAddress: string, sourcePort = 40000) => ({ sourceAddress, sourcePort, destinationAddress: '198.51.100.1', destinationPort: 110 });

describe('PROXY protocol', () => {
  it('v1 and v2 headers on the plain listener give the observed and logged client address', async () => {
    const { s, clients, logs } = await server({ plaintext_auth: 'always' });
    const w1 = await viaProxy(s.port, 'PROXY TCP4 203.0.113.9 198.51.100.1 40001 110\r\n');
    expect(await w1.line()).toBe('+OK Poplar ready.');
    const w2 = await viaProxy(s.port, encodeProxyHeader(2, from('2001:db8::7', 40002)));
    expect(await w2.line()).toBe('+OK Poplar ready.');
    expect(clients.map((c) => [c.remoteAddress, c.remotePort, c.viaProxy])).toEqual([
      ['203.0.113.9', 40001, true],
      ['2001:db8::7', 40002, true],
    ]);
    await w1.login('alice', 'wrong').catch(() => undefined);
    expect(logs.filter((l) => l.event === 'auth-failed').map((l) => l.rip)).toEqual(['203.0.113.9']);
    expect(logs.some((l) => l.rip === '127.0.0.1')).toBe(false);
  });

  it('keeps the first command that arrives in the same packet as the header', async () => {
    const { s } = await server({ plaintext_auth: 'always' });
    const w = await viaProxy(s.port, Buffer.concat([encodeProxyHeader(2, from('203.0.113.10')), Buffer.from('CAPA\r\n')]));
    expect(await w.line()).toBe('+OK Poplar ready.');
    expect((await w.multiLines()).status).toMatch(/^\+OK/);
  });

  it('v2 before the TLS handshake on the implicit-TLS listener', async () => {
    const { s, clients } = await server();
    const raw = net.connect({ host: '127.0.0.1', port: s.tlsPort });
    await once(raw, 'connect');
    raw.write(encodeProxyHeader(2, from('192.0.2.44', 50000)));
    const secure = tls.connect({ socket: raw, rejectUnauthorized: false, servername: 'localhost' });
    await once(secure, 'secureConnect');
    const w = Wire.over(secure);
    wires.push(w);
    expect(await w.line()).toBe('+OK Poplar ready.');
    await w.login('alice', 'secret');
    expect(clients.map((c) => [c.remoteAddress, c.tls, c.viaProxy])).toEqual([['192.0.2.44', true, true]]);
  });

  it('implicit TLS: a ClientHello in the same write as the header is not lost', async () => {
    const { s, clients } = await server();
    // A tiny proxy that sends the header glued to the client's first bytes (the ClientHello).
    const relay = net.createServer((client) => {
      const up = net.connect({ host: '127.0.0.1', port: s.tlsPort });
      up.on('error', () => client.destroy());
      client.on('error', () => up.destroy());
      client.once('data', (first: Buffer) => {
        up.write(Buffer.concat([encodeProxyHeader(1, from('192.0.2.45', 50001)), first]));
        client.pipe(up);
        up.pipe(client);
      });
    });
    relay.listen(0, '127.0.0.1');
    await once(relay, 'listening');
    try {
      const w = await Wire.connect((relay.address() as net.AddressInfo).port, { tls: true });
      wires.push(w);
      expect(await w.line()).toBe('+OK Poplar ready.');
      await w.login('alice', 'secret');
      expect(clients.map((c) => [c.remoteAddress, c.tls, c.viaProxy])).toEqual([['192.0.2.45', true, true]]);
    } finally {
      for (const w of wires) w.close();
      relay.close();
    }
  });

  it('closes a connection from a peer that is not a trusted proxy', async () => {
    const { s, clients } = await server({ trusted_proxies: ['10.0.0.0/8'] });
    const w = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.9')));
    await w.closed();
    expect(w.pending.length).toBe(0);
    expect(clients).toEqual([]);
  });

  it('closes a trusted proxy that sends garbage, a bad header or nothing, and keeps serving others', async () => {
    const { s, logs } = await server({ login_timeout: 1 });
    const garbage = await viaProxy(s.port, 'USER alice\r\n');
    const oversized = await viaProxy(s.port, `PROXY TCP4 ${'9'.repeat(200)}`);
    const badFamily = Buffer.from(encodeProxyHeader(2, from('203.0.113.9')));
    badFamily[13] = 0x31;
    const unix = await viaProxy(s.port, badFamily);
    const silent = await viaProxy(s.port, '');
    for (const w of [garbage, oversized, unix, silent]) {
      await w.closed();
      expect(w.pending.length).toBe(0);
    }
    expect(logs.filter((l) => l.msg === 'trusted proxy sent no valid PROXY header')).toHaveLength(4);
    const ok = await viaProxy(s.port, encodeProxyHeader(1, from('203.0.113.9')));
    expect(await ok.line()).toBe('+OK Poplar ready.');
  });

  it('a proxied non-loopback client is refused a cleartext login though the proxy is on 127.0.0.1', async () => {
    const { s } = await server({ plaintext_auth: 'loopback' });
    const far = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.9')));
    expect(await far.line()).toBe('+OK Poplar ready.');
    expect(await far.cmd('USER alice')).toMatch(/^-ERR .*Cleartext logins are not allowed/);
    const near = await viaProxy(s.port, encodeProxyHeader(2, from('127.0.0.5')));
    expect(await near.line()).toBe('+OK Poplar ready.');
    await near.login('alice', 'secret');
  });

  it('the per-address limit counts the address from the header', async () => {
    const { s } = await server({ max_connections_per_ip: 2 });
    const a1 = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.9', 1)));
    const a2 = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.9', 2)));
    expect(await a1.line()).toBe('+OK Poplar ready.');
    expect(await a2.line()).toBe('+OK Poplar ready.');
    const a3 = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.9', 3)));
    expect(await a3.line()).toBe('-ERR [SYS/TEMP] Too many connections, try again later.');
    // Another client behind the same proxy still gets in.
    const b = await viaProxy(s.port, encodeProxyHeader(2, from('203.0.113.77', 4)));
    expect(await b.line()).toBe('+OK Poplar ready.');
  });
});
