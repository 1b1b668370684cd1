import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryLoginDelayStore } from '../../src/auth/throttle-login-delay.js';
import { LoginDelayPolicy } from '../../src/server/login-delay.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

describe('LOGIN-DELAY (RFC 2449 §6.5)', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer({ settings: { login_delay: 1 }, users: [{ name: 'alice', password: 'secret' }, { name: 'bob', password: 'pw' }] });
  });
  afterAll(() => srv.stop());

  it('is advertised before and after login, refused with [LOGIN-DELAY] when too soon, allowed after the delay', async () => {
    const a = await Wire.connect(srv.port);
    await a.line();
    expect((await a.cmdLines('CAPA')).lines).toContain('LOGIN-DELAY 1');
    await a.login('alice', 'secret');
    expect((await a.cmdLines('CAPA')).lines).toContain('LOGIN-DELAY 1');
    await a.cmd('QUIT');

    const b = await Wire.connect(srv.port);
    await b.line();
    await b.cmd('USER alice');
    expect(await b.cmd('PASS secret')).toMatch(/^-ERR \[LOGIN-DELAY\] /);
    // Another user is not affected, and a wrong password is still [AUTH], not [LOGIN-DELAY].
    await b.cmd('USER alice');
    expect(await b.cmd('PASS wrong')).toMatch(/^-ERR \[AUTH\] /);
    const c = await Wire.connect(srv.port);
    await c.line();
    await c.login('bob', 'pw');
    await c.cmd('QUIT');

    await new Promise((r) => setTimeout(r, 1100));
    await b.cmd('USER alice');
    expect(await b.cmd('PASS secret')).toMatch(/^\+OK/);
    await b.cmd('QUIT');
  });

  it('keeps memory proportional to recent logins', async () => {
    let now = 0;
    const store = new MemoryLoginDelayStore();
    const p = new LoginDelayPolicy(10, store, () => now);
    for (let i = 0; i < 1000; i++) await p.recordLogin(`u${i}`);
    expect(await p.waitSeconds('u1')).toBe(10);
    now = 11_000;
    expect(await p.waitSeconds('u1')).toBe(0);
    await p.recordLogin('late');
    expect(store.tracked).toBe(1);
  });
});

describe('without LOGIN-DELAY', () => {
  it('is not advertised and immediate re-logins work', async () => {
    const srv = await startTestServer();
    try {
      for (let i = 0; i < 2; i++) {
        const w = await Wire.connect(srv.port);
        await w.line();
        expect((await w.cmdLines('CAPA')).lines.some((l) => l.startsWith('LOGIN-DELAY'))).toBe(false);
        await w.login('alice', 'secret');
        await w.cmd('QUIT');
      }
    } finally {
      await srv.stop();
    }
  });
});
