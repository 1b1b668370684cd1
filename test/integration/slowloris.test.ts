/**
 * Slowloris: clients that trickle bytes before login must not keep their
 * connection slots. login_timeout restarts with every byte; login_deadline
 * does not.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer | undefined;
const socks: net.Socket[] = [];
afterEach(async () => {
  for (const s of socks) s.destroy();
  socks.length = 0;
  await srv?.stop();
  srv = undefined;
});

/** A client that sends one byte of `USER x\r\n` (and so of a valid command stream) every `everyMs`, forever. */
function trickler(port: number, everyMs: number): { received: () => string; closedAt: Promise<number> } {
  const sock = net.connect({ host: '127.0.0.1', port });
  socks.push(sock);
  let got = '';
  sock.on('data', (d: Buffer) => (got += d.toString('latin1')));
  sock.on('error', () => undefined);
  const text = 'USER x\r\n';
  let i = 0;
  const timer = setInterval(() => {
    if (!sock.destroyed && sock.writable) sock.write(text[i++ % text.length]!);
  }, everyMs);
  // The server half-closes after its -ERR: that is the disconnection (the slot is gone soon after).
  const closedAt = new Promise<number>((resolve) =>
    sock.once('end', () => {
      clearInterval(timer);
      resolve(Date.now());
      sock.destroy();
    }),
  );
  sock.once('close', () => clearInterval(timer));
  return { received: () => got, closedAt };
}

describe('login deadline', () => {
  it('clients trickling bytes are told and disconnected at login_deadline, whatever they send; then a normal client gets in', { timeout: 30_000 }, async () => {
    srv = await startTestServer({ settings: { max_connections: 4, login_timeout: 1, login_deadline: 3 } });
    const started = Date.now();
    // Every byte comes well within login_timeout, so only the deadline can end these.
    const clients = Array.from({ length: 4 }, () => trickler(srv!.port, 200));
    await sleep(500);
    // All slots are held: a fifth client is turned away.
    const fifth = await Wire.connect(srv.port);
    expect(await fifth.line()).toBe('-ERR [SYS/TEMP] Too many connections, try again later.');
    fifth.close();

    const ends = await Promise.all(clients.map((c) => Promise.race([c.closedAt, sleep(15_000).then(() => Infinity)])));
    for (const [i, end] of ends.entries()) {
      expect(end - started, `client ${i} disconnected`).toBeLessThan(3000 + 4000);
      expect(end - started).toBeGreaterThanOrEqual(2900);
      expect(clients[i]!.received()).toMatch(/^\+OK Poplar ready\.\r\n(\+OK\r\n)*-ERR Disconnected: no login within 3 seconds\.\r\n$/);
    }

    // The slots come back, and a client that logs in has all the time it needs afterwards.
    let w: Wire | undefined;
    for (let i = 0; i < 100 && w === undefined; i++) {
      const c = await Wire.connect(srv.port);
      if ((await c.line()) === '+OK Poplar ready.') w = c;
      else {
        c.close();
        await sleep(100);
      }
    }
    expect(w).toBeDefined();
    expect(await w!.cmd('USER alice')).toBe('+OK');
    expect(await w!.cmd('PASS secret')).toBe('+OK Logged in.');
    await sleep(3500);
    expect(await w!.cmd('NOOP')).toBe('+OK');
    expect(await w!.cmd('QUIT')).toMatch(/^\+OK/);
    await w!.closed();
  });
});
