import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ClientInfo } from '../../src/server/client-info.js';
import type { LoginFailure, ServerObserver, SessionObserver } from '../../src/server/observer.js';
import { InUseError } from '../../src/errors.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

type Event = [string, ...unknown[]];

/** Records every event of every session, one list per session, as a metrics observer would see them. */
class Recorder implements ServerObserver {
  readonly sessions: { client: ClientInfo; events: Event[] }[] = [];
  connected(client: ClientInfo): SessionObserver {
    const events: Event[] = [];
    // The addresses are read now, while the socket is open.
    const seen = { remoteAddress: client.remoteAddress, remotePort: client.remotePort, localAddress: client.localAddress, localPort: client.localPort, tls: client.tls, viaProxy: client.viaProxy };
    this.sessions.push({ client: seen, events });
    return {
      tlsStarted: (protocol, cipher) => events.push(['tls', protocol, cipher !== '']),
      loginSucceeded: (user, mech, messages) => events.push(['login', user, mech, messages]),
      loginFailed: (user, mech, f: LoginFailure) => events.push(['login-failed', user, mech, f.reason, 'error' in f ? f.error : undefined]),
      maildropOpened: (user, ms, outcome) => events.push(['opened', user, outcome, ms >= 0]),
      command: (name, ms, bytes) => events.push(['command', name, bytes, ms >= 0]),
      messageSent: (cmd, bytes) => events.push(['sent', cmd, bytes]),
      deletionsMarked: (n) => events.push(['marked', n]),
      updated: (n) => events.push(['updated', n]),
      ended: (reason) => events.push(['ended', reason]),
    };
  }
  async ended(count: number): Promise<void> {
    for (let i = 0; i < 200; i++) {
      if (this.sessions.length >= count && this.sessions.slice(0, count).every((s) => s.events.some((e) => e[0] === 'ended'))) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error('sessions did not end');
  }
}

describe('session observers', () => {
  let srv: TestServer;
  const a = new Recorder();
  const b = new Recorder();
  beforeAll(async () => {
    srv = await startTestServer({ observers: [a, b] });
    await srv.deliver('alice', 'Subject: one\r\n\r\nfirst\r\n');
    await srv.deliver('alice', 'Subject: two\r\n\r\nsecond\r\n');
  });
  afterAll(async () => {
    await srv.stop();
  });

  it('hear a whole session in order: client info, STLS, a failed and a good login, each command with its bytes, UPDATE, the end', async () => {
    a.sessions.length = 0;
    b.sessions.length = 0;
    const w = await Wire.connect(srv.port);
    const clientPort = w.socket.localPort;
    const greeting = await w.line();
    expect(await w.cmd('STLS')).toMatch(/^\+OK/);
    await w.upgrade();
    await w.cmd('USER alice');
    expect(await w.cmd('PASS wrong')).toMatch(/^-ERR \[AUTH\]/);
    await w.cmd('USER alice');
    expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
    const stat = await w.cmd('STAT');
    const retr = await w.cmdMulti('RETR 1');
    expect(retr.status).toMatch(/^\+OK/);
    await w.cmd('DELE 1');
    expect(await w.cmd('XYZZY')).toMatch(/^-ERR/);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    await a.ended(1);

    const { client, events } = a.sessions[0]!;
    expect(client).toEqual({ remoteAddress: '127.0.0.1', remotePort: clientPort, localAddress: '127.0.0.1', localPort: srv.port, tls: false, viaProxy: false });
    const retrBytes = Buffer.byteLength(retr.status + '\r\n') + retr.body.length;
    expect(events).toEqual([
      ['tls', 'TLSv1.3', true],
      ['command', 'STLS', Buffer.byteLength('+OK Begin TLS negotiation now.\r\n'), true],
      ['command', 'USER', 5, true],
      ['login-failed', 'alice', 'USER', 'credentials', undefined],
      ['command', 'PASS', Buffer.byteLength('-ERR [AUTH] Authentication failed.\r\n'), true],
      ['command', 'USER', 5, true],
      ['opened', 'alice', 'opened', true],
      ['login', 'alice', 'USER', 2],
      ['command', 'PASS', Buffer.byteLength('+OK Logged in.\r\n'), true],
      ['command', 'STAT', Buffer.byteLength(stat + '\r\n'), true],
      ['sent', 'RETR', retr.body.length],
      ['command', 'RETR', retrBytes, true],
      ['marked', 1],
      ['command', 'DELE', Buffer.byteLength('+OK Marked to be deleted.\r\n'), true],
      // A keyword no state knows is not repeated to the observer (no unbounded label set).
      ['command', 'UNKNOWN', Buffer.byteLength('-ERR Unknown command.\r\n'), true],
      ['updated', 1],
      ['command', 'QUIT', Buffer.byteLength('+OK Logging out, 1 message deleted.\r\n'), true],
      ['ended', 'QUIT'],
    ]);
    expect(greeting).toMatch(/^\+OK/);
    // Every attached observer hears the same.
    expect(b.sessions[0]!.events).toEqual(events);
  });

  it('on the implicit-TLS port: TLS is on from the start; a locked maildrop is an in-use login failure', async () => {
    a.sessions.length = 0;
    const first = await Wire.connect(srv.tlsPort, { tls: true });
    await first.line();
    await first.login('alice', 'secret');
    const second = await Wire.connect(srv.tlsPort, { tls: true });
    await second.line();
    await second.cmd('USER alice');
    expect(await second.cmd('PASS secret')).toMatch(/^-ERR \[IN-USE\]/);
    second.close();
    first.close();
    await a.ended(2);
    const [s1, s2] = a.sessions;
    expect(s1!.client).toMatchObject({ remoteAddress: '127.0.0.1', localPort: srv.tlsPort, tls: true, viaProxy: false });
    expect(s1!.events[0]).toEqual(['tls', 'TLSv1.3', true]);
    expect(s1!.events.at(-1)).toEqual(['ended', 'disconnected']);
    const failed = s2!.events.find((e) => e[0] === 'login-failed')!;
    expect(failed.slice(0, 4)).toEqual(['login-failed', 'alice', 'USER', 'maildrop']);
    expect(failed[4]).toBeInstanceOf(InUseError);
    expect(s2!.events).toContainEqual(['opened', 'alice', 'in-use', true]);
    expect(s2!.events.some((e) => e[0] === 'login')).toBe(false);
  });
});
