/**
 * User enumeration by timing: a wrong password for an existing user and any
 * password for an unknown user must be answered after the same time, whatever
 * the user's scheme. Here the existing user has a {PLAIN} secret (checked in
 * microseconds) while an unknown name costs a dummy argon2id verification, the
 * widest gap there is; the answers must still not tell them apart.
 *
 * This is a security property, not a speed check: the test compares the two
 * distributions with each other, measured interleaved so load hits both alike,
 * against the cost of the dummy verification measured on the same machine.
 */
import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import { dummyVerify } from '../../src/auth/schemes.js';
import type { ServerSettings } from '../../src/server/context.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const ROUNDS = 20;

let srv: TestServer | undefined;
afterEach(async () => {
  await srv?.stop();
  srv = undefined;
});

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Milliseconds the server took to answer the last line, sent after the others were answered. */
async function answerTime(w: Wire, lines: string[]): Promise<{ ms: number; reply: string }> {
  for (const l of lines.slice(0, -1)) expect(await w.cmd(l)).toMatch(/^\+/);
  const t0 = performance.now();
  const reply = await w.cmd(lines.at(-1)!);
  return { ms: performance.now() - t0, reply };
}

const plain = (user: string, pass: string): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${pass}`).toString('base64')}`;

async function dummyCost(): Promise<number> {
  const t0 = performance.now();
  await dummyVerify('x');
  return performance.now() - t0;
}

async function compare(settings: Partial<ServerSettings>): Promise<void> {
  srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }], settings: { auth_block_after: 0, ...settings } });
  const w = await Wire.connect(srv.port);
  expect(await w.line()).toBe('+OK Poplar ready.');
  const methods = {
    'USER/PASS': (u: string, p: string) => [`USER ${u}`, `PASS ${p}`],
    'AUTH PLAIN': (u: string, p: string) => [plain(u, p)],
  };
  for (const [method, lines] of Object.entries(methods)) {
    // A leak shows in every attempt (the gap is the dummy's cost each time); a burst of load on a
    // busy machine shows in one. So the property holds if one of three attempts finds no gap.
    const attempts: string[] = [];
    let same = false;
    for (let attempt = 0; attempt < 3 && !same; attempt++) {
      const wrong: number[] = [];
      const unknown: number[] = [];
      const costs: number[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        // Interleaved, so a burst of load on the machine lands on both kinds and on the reference cost.
        const a = await answerTime(w, lines('alice', `wrong${i}`));
        const b = await answerTime(w, lines(`nobody${attempt}x${i}`, `wrong${i}`));
        expect([a.reply, b.reply]).toEqual(['-ERR [AUTH] Authentication failed.', '-ERR [AUTH] Authentication failed.']);
        wrong.push(a.ms);
        unknown.push(b.ms);
        costs.push(await dummyCost());
      }
      const gap = Math.abs(median(unknown) - median(wrong));
      const cost = median(costs);
      attempts.push(`wrong password median ${median(wrong).toFixed(1)} ms, unknown user ${median(unknown).toFixed(1)} ms, dummy argon2id ${cost.toFixed(1)} ms`);
      // Unpadded, the gap is the dummy verification itself (cost); padded, it is noise.
      same = gap < cost / 3;
    }
    expect(same, `${method}: ${attempts.join('; ')}`).toBe(true);
  }
  // A right password is still answered at once (no padding on success).
  expect(await w.cmd('USER alice')).toBe('+OK');
  expect(await w.cmd('PASS secret')).toBe('+OK Logged in.');
  w.close();
}

describe('failed logins do not reveal whether the user exists', () => {
  it('with a failure delay: wrong password and unknown user are answered after the same time', { timeout: 240_000 }, async () => {
    await compare({ auth_failure_delay: 0.08, auth_failure_max_delay: 0.08 });
  });

  it('with no failure delay at all: still the same time', { timeout: 240_000 }, async () => {
    await compare({ auth_failure_delay: 0, auth_failure_max_delay: 0 });
  });
});
