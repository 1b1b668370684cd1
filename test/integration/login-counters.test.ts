/**
 * The failure counters at a successful login: the user's counter is cleared
 * only when the check before the login saw failures for that user, so a
 * login with a clean record costs the (possibly shared) counter store no
 * write. Counted through a ThrottleStore that records every call.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { MemoryThrottleStore, type ThrottleStore } from '../../src/auth/throttle.js';
import { silentLogger } from '../../src/observability/log.js';
import { Pop3Server } from '../../src/server/server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { testSettings } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

class CountingStore implements ThrottleStore {
  readonly inner = new MemoryThrottleStore();
  readonly calls: { increment: number; counts: number; reset: string[][] } = { increment: 0, counts: 0, reset: [] };
  increment(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    this.calls.increment++;
    return this.inner.increment(keys, now, windowMs);
  }
  counts(keys: readonly string[], now: number, windowMs: number): Promise<number[]> {
    this.calls.counts++;
    return this.inner.counts(keys, now, windowMs);
  }
  reset(keys: readonly string[]): Promise<void> {
    this.calls.reset.push([...keys]);
    return this.inner.reset(keys);
  }
}

describe('login failure counters at a successful login', () => {
  let dir: string;
  let server: Pop3Server;
  let port: number;
  const counters = new CountingStore();

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-counters-'));
    const usersFile = path.join(dir, 'users');
    await fs.writeFile(usersFile, 'alice:{PLAIN}secret::::::\nbob:{PLAIN}pw::::::\n', { mode: 0o600 });
    await fs.mkdir(path.join(dir, 'mail'));
    const logger = silentLogger();
    server = new Pop3Server({
      settings: testSettings({ auth_failure_delay: 0, auth_failure_max_delay: 0 }),
      authenticator: new PasswdFileAuthenticator(usersFile, { checkIntervalMs: 0 }),
      store: new MaildirStore({ root: path.join(dir, 'mail'), logger, fsync: false }),
      logger,
      throttleStore: counters,
    });
    port = (await server.listen([{ host: '127.0.0.1', port: 0, tls: false }]))[0]!.port;
  });
  afterAll(async () => {
    await server.close(0);
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function session(user: string, passwords: string[]): Promise<string[]> {
    const w = await Wire.connect(port);
    await w.line();
    const answers: string[] = [];
    for (const p of passwords) {
      await w.cmd(`USER ${user}`);
      answers.push(await w.cmd(`PASS ${p}`));
    }
    await w.cmd('QUIT');
    return answers;
  }

  it('does not clear a counter the check found at zero', async () => {
    const before = counters.calls.reset.length;
    expect(await session('alice', ['secret'])).toEqual([expect.stringMatching(/^\+OK/)]);
    expect(await session('alice', ['secret'])).toEqual([expect.stringMatching(/^\+OK/)]);
    expect(counters.calls.reset.length).toBe(before);
  });

  it('still clears the failures of a user who then logs in', async () => {
    const answers = await session('bob', ['wrong', 'wrong', 'pw']);
    expect(answers[0]).toMatch(/^-ERR/);
    expect(answers[2]).toMatch(/^\+OK/);
    expect(counters.calls.reset).toContainEqual(['user:bob']);
    expect(await counters.inner.counts(['user:bob'], Date.now(), 15 * 60_000)).toEqual([0]);
    // The record is clean again: the next login writes nothing.
    const n = counters.calls.reset.length;
    await session('bob', ['pw']);
    expect(counters.calls.reset.length).toBe(n);
  });
});
