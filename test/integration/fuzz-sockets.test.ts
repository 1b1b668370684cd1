/**
 * A fuzzing client against a real server: hundreds of sessions of random and
 * mutated command lines, most replies left unread, every way of leaving. When
 * all clients are gone, every socket the server held must be released.
 */
import { readdirSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';
import { prng } from '../fuzz/harness.js';

const SESSIONS = 400;
const PARALLEL = 8;
const LOGIN_TIMEOUT_S = 2;

const MECHANISMS = ['PLAIN', 'LOGIN', 'CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER', 'NOPE'];
const COMMANDS = ['USER alice', 'PASS secret', 'PASS wrong', 'CAPA', 'STAT', 'LIST', 'UIDL', 'RETR 1', 'TOP 1 0', 'DELE 1', 'NOOP', 'RSET', 'AUTH', 'APOP alice 0123456789abcdef0123456789abcdef', 'QUIT'];

function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

class Fuzzer {
  readonly #r: () => number;
  constructor(seed: number) {
    this.#r = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.#r() * n);
  }
  chance(p: number): boolean {
    return this.#r() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
  base64(): string {
    return this.bytes(this.int(200)).toString('base64');
  }
  /** A valid command with a few bytes flipped, cut or doubled. */
  mutated(): Buffer {
    const b = Buffer.from(this.pick(COMMANDS));
    for (let k = this.int(3); k >= 0; k--) {
      const i = this.int(b.length);
      b[i] = this.chance(0.5) ? this.int(256) : b[i]! ^ (1 << this.int(8));
    }
    return this.chance(0.2) ? Buffer.concat([b, b]) : b;
  }
  /** One line (or not quite a line) of the script. */
  line(): Buffer {
    const eol = this.chance(0.9) ? Buffer.from(this.pick(['\r\n', '\n', '\r\n', '\r\n'])) : Buffer.alloc(0);
    switch (this.int(8)) {
      case 0:
        return Buffer.concat([this.bytes(1 + this.int(300)), eol]);
      case 1:
        return Buffer.from(`AUTH ${this.pick(MECHANISMS)}${this.chance(0.6) ? ` ${this.chance(0.1) ? '=' : this.base64()}` : ''}\r\n`);
      case 2:
        return Buffer.from(`${this.chance(0.2) ? '*' : this.base64()}\r\n`);
      case 3:
        return Buffer.concat([Buffer.from('STLS\r\n'), this.bytes(this.int(400)), eol]);
      case 4:
        return Buffer.concat([Buffer.alloc(70_000, this.pick(['A', 'x', ' '])), eol]);
      case 5:
        return Buffer.concat([this.mutated(), eol]);
      default:
        return Buffer.from(`${this.pick(COMMANDS)}\r\n`);
    }
  }
}

/** One hostile session; resolves once the client socket is gone. */
async function session(port: number, tlsPort: number, f: Fuzzer): Promise<void> {
  const implicitTls = f.chance(0.15);
  const sock: net.Socket = implicitTls ? tls.connect({ host: '127.0.0.1', port: tlsPort, rejectUnauthorized: false }) : net.connect({ host: '127.0.0.1', port });
  sock.on('error', () => undefined);
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  const readReplies = f.chance(0.3);
  if (readReplies) sock.on('data', () => undefined);
  else sock.pause(); // replies pile up unread: the server meets write backpressure
  const connected = await Promise.race([
    new Promise<boolean>((r) => sock.once(implicitTls ? 'secureConnect' : 'connect', () => r(true))),
    closed.then(() => false),
    sleep(3000).then(() => false),
  ]);
  if (connected) {
    const lines = 1 + f.int(12);
    for (let i = 0; i < lines && !sock.destroyed; i++) {
      const stlsThenHandshake = f.chance(0.05);
      if (stlsThenHandshake && !implicitTls) {
        // STLS, then the start of a real handshake that is abandoned halfway.
        sock.write('STLS\r\n');
        await sleep(20);
        const t = tls.connect({ socket: sock, rejectUnauthorized: false });
        t.on('error', () => undefined);
        await sleep(f.int(50));
        if (f.chance(0.5)) t.destroy();
        break;
      }
      sock.write(f.line());
      if (f.chance(0.3)) await sleep(f.int(30));
    }
  }
  // Every way of leaving: reset at once, half-close and linger, half-close and
  // vanish, or just stop talking (the server's timeouts end it).
  switch (f.int(4)) {
    case 0:
      sock.destroy();
      break;
    case 1:
      sock.end();
      await Promise.race([closed, sleep(200)]);
      sock.destroy();
      break;
    case 2:
      sock.end();
      sock.destroy();
      break;
    default:
      await Promise.race([closed, sleep(f.int(3000))]);
      sock.destroy();
  }
  await closed;
}

describe('sockets under a fuzzing client', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer({
      settings: {
        login_timeout: LOGIN_TIMEOUT_S,
        max_connections_per_ip: 1000,
        // Failures answered late, so pipelined commands (STLS among them) often run after the client left.
        auth_block_after: 0,
        auth_failure_delay: 0.1,
        auth_failure_max_delay: 0.4,
        sasl_mechanisms: ['SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'PLAIN', 'LOGIN', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER'],
      },
      oauth: true,
    });
    await srv.deliver('alice', 'Subject: one\r\n\r\n' + 'body line\r\n'.repeat(20_000));
  });
  afterAll(async () => {
    await srv?.stop();
  });

  it(`${SESSIONS} hostile sessions leave no socket behind, and a normal session still works`, { timeout: 60_000 }, async () => {
    // Warm up what opens descriptors once (TLS, the maildrop, the users file).
    const warm = await Wire.connect(srv.tlsPort, { tls: true });
    await warm.line();
    warm.close();
    await sleep(200);
    const before = openFds();
    const seed = Number(process.env.POPLAR_FUZZ_SEED ?? 0x5eed);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < SESSIONS) {
        const n = next++;
        await session(srv.port, srv.tlsPort, new Fuzzer(seed + n));
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    // Every client is gone; the server gets login_timeout plus its 5 s close grace at most.
    const deadline = Date.now() + (LOGIN_TIMEOUT_S + 5 + 3) * 1000;
    const state = () => ({ connections: srv.server.connectionCount, sessions: srv.server.sessionCount, leakedFds: Math.max(0, openFds() - before - 3) });
    while (JSON.stringify(state()) !== JSON.stringify({ connections: 0, sessions: 0, leakedFds: 0 }) && Date.now() < deadline) await sleep(100);
    expect(state()).toEqual({ connections: 0, sessions: 0, leakedFds: 0 });

    const w = await Wire.connect(srv.port);
    expect(await w.line()).toBe('+OK Poplar ready.');
    expect(await w.cmd('USER alice')).toBe('+OK');
    expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
  });
});
