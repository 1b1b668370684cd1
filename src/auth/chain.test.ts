import { describe, expect, it, vi } from 'vitest';
import { TemporaryFailure } from '../errors.js';
import { ChainAuthenticator } from './chain.js';
import type { Authenticator, ConnectionInfo, Credentials, Principal } from './types.js';

const CONN: ConnectionInfo = { remoteAddress: '192.0.2.1', remotePort: 50000, localAddress: '192.0.2.2', localPort: 110, secure: true };
const PW: Credentials = { kind: 'password', username: 'alice', password: 'pencil' };
const BEARER: Credentials = { kind: 'bearer', username: 'alice', token: 'tok' };

type Behaviour = Principal | null | 'temp' | 'boom';

function fake(behaviour: Behaviour, secret?: string | 'temp'): Authenticator & { calls: number; lookups: number; close: ReturnType<typeof vi.fn> } {
  const a = {
    calls: 0,
    lookups: 0,
    async authenticate(): Promise<Principal | null> {
      a.calls++;
      if (behaviour === 'temp') throw new TemporaryFailure('down');
      if (behaviour === 'boom') throw new Error('bug');
      return behaviour;
    },
    async lookupSecret(): Promise<string | undefined> {
      a.lookups++;
      if (secret === 'temp') throw new TemporaryFailure('down');
      return secret;
    },
    close: vi.fn(async () => undefined),
  };
  return a;
}

async function outcome(p: Promise<unknown>): Promise<unknown> {
  try {
    return await p;
  } catch (e) {
    return e instanceof TemporaryFailure ? 'ERR SYS/TEMP' : e;
  }
}

describe('ChainAuthenticator', () => {
  it('returns the first principal and does not ask later members', async () => {
    const a = fake(null);
    const b = fake({ username: 'alice', home: '/b' });
    const c = fake({ username: 'alice', home: '/c' });
    const chain = new ChainAuthenticator([a, b, c]);
    expect(await chain.authenticate(PW, CONN)).toEqual({ username: 'alice', home: '/b' });
    expect([a.calls, b.calls, c.calls]).toEqual([1, 1, 0]);
  });

  it('combines outcomes: SYS/TEMP unless a later member succeeds', async () => {
    const cases: [Behaviour[], unknown][] = [
      [[null, null], null],
      [['temp', null], 'ERR SYS/TEMP'],
      [[null, 'temp'], 'ERR SYS/TEMP'],
      [['temp', { username: 'alice' }], { username: 'alice' }],
      [[{ username: 'alice' }, 'temp'], { username: 'alice' }],
      [['temp', 'temp'], 'ERR SYS/TEMP'],
      [['boom', null], 'ERR SYS/TEMP'],
      [[], null],
    ];
    for (const [members, expected] of cases) {
      const chain = new ChainAuthenticator(members.map((m) => fake(m)));
      expect(await outcome(chain.authenticate(PW, CONN)), JSON.stringify(members)).toEqual(expected);
    }
  });

  it('wraps unexpected errors in SYS/TEMP and logs them', async () => {
    const logs: string[] = [];
    const chain = new ChainAuthenticator([{ authenticator: fake('boom'), name: 'postgres' }], { logger: (m) => logs.push(m) });
    const e = await chain.authenticate(PW, CONN).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(TemporaryFailure);
    expect((e as TemporaryFailure).cause).toBeInstanceOf(Error);
    expect(logs).toEqual(['auth chain: postgres failed: bug']);
  });

  it('asks only the members that handle the credential kind', async () => {
    const passwd = fake(null);
    const pg = fake({ username: 'alice' });
    const oauth = fake({ username: 'alice@example.com' });
    const chain = new ChainAuthenticator([
      { authenticator: passwd, kinds: ['password'], name: 'passwd-file' },
      { authenticator: pg, kinds: ['password'], name: 'postgres' },
      { authenticator: oauth, kinds: ['bearer'], name: 'oauth' },
    ]);
    expect(await chain.authenticate(BEARER, CONN)).toEqual({ username: 'alice@example.com' });
    expect([passwd.calls, pg.calls, oauth.calls]).toEqual([0, 0, 1]);
    expect(await chain.authenticate(PW, CONN)).toEqual({ username: 'alice' });
    expect([passwd.calls, pg.calls, oauth.calls]).toEqual([1, 1, 1]);
  });

  it('stops at once when the signal is aborted', async () => {
    const ac = new AbortController();
    const first: Authenticator = {
      async authenticate() {
        ac.abort(new Error('client went away'));
        throw new TemporaryFailure('down');
      },
    };
    const second = fake({ username: 'alice' });
    const chain = new ChainAuthenticator([first, second]);
    await expect(chain.authenticate(PW, CONN, ac.signal)).rejects.toThrow('client went away');
    expect(second.calls).toBe(0);
  });

  it('looks up secrets in order with the same failure rules', async () => {
    const none: Authenticator = { authenticate: async () => null };
    expect(await new ChainAuthenticator([none, fake(null, '{PLAIN}a'), fake(null, '{PLAIN}b')]).lookupSecret('alice')).toBe('{PLAIN}a');
    expect(await new ChainAuthenticator([fake(null), fake(null, '{PLAIN}b')]).lookupSecret('alice')).toBe('{PLAIN}b');
    expect(await new ChainAuthenticator([fake(null, 'temp'), fake(null, '{PLAIN}b')]).lookupSecret('alice')).toBe('{PLAIN}b');
    expect(await outcome(new ChainAuthenticator([fake(null, 'temp'), fake(null)]).lookupSecret('alice'))).toBe('ERR SYS/TEMP');
    expect(await new ChainAuthenticator([fake(null)]).lookupSecret('alice')).toBeUndefined();
    const bearerOnly = fake(null, '{PLAIN}x');
    expect(await new ChainAuthenticator([{ authenticator: bearerOnly, kinds: ['bearer'] }]).lookupSecret('alice')).toBeUndefined();
    expect(bearerOnly.lookups).toBe(0);
  });

  it('closes every member even if one fails', async () => {
    const a = fake(null);
    const b = fake(null);
    a.close.mockRejectedValueOnce(new Error('close failed'));
    const chain = new ChainAuthenticator([a, { authenticate: async () => null }, b]);
    await expect(chain.close()).rejects.toThrow('close failed');
    expect(b.close).toHaveBeenCalledTimes(1);
  });
});
