/**
 * THE CRASH TEST. `poplar fetch` fetches 3000 messages from a real Dovecot
 * and is killed with SIGKILL at 20 random moments (most of them while
 * messages are being delivered, a few at any time), then allowed to finish.
 * Every message must be in the Maildir exactly once (counted by its X-Seq
 * header), in keep mode and in delete mode, and nothing may be left on the
 * server in delete mode.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { fillMaildrop, filesIn, onServer, runFetch, SettleTally } from './crash-helpers.js';
import { seqCounts } from './helpers.js';

const MESSAGES = 3000;
const KILLS = 20;

let root: string;
let dc: DovecotHandle;

describe.skipIf(lacks('dovecot'))('crash test: SIGKILL during a fetch from Dovecot', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-'));
    await fillMaildrop(path.join(root, 'mail'), 'keeper', MESSAGES);
    await fillMaildrop(path.join(root, 'mail'), 'deleter', MESSAGES);
    dc = await startDovecot({ maildirRoot: path.join(root, 'mail'), users: [{ name: 'keeper', password: 'pw' }, { name: 'deleter', password: 'pw' }] });
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  /** One run of `poplar fetch` into the user's Maildir; killed with SIGKILL at a moment chosen by `killAt` (undefined: runs to the end). */
  function run(user: string, mode: '--keep' | '--delete', killAt?: 'delivering' | 'any'): ReturnType<typeof runFetch> {
    const work = path.join(root, `work-${user}`);
    const newDir = path.join(work, 'Maildir', 'new');
    return runFetch({ port: dc.port, user, mode, sink: ['--maildir', path.join(work, 'Maildir')], state: path.join(work, 'ledger'), progress: () => filesIn(newDir), ...(killAt ? { killAt } : {}) });
  }

  for (const [user, mode] of [
    ['keeper', '--keep'],
    ['deleter', '--delete'],
  ] as const) {
    it(`${mode}: ${KILLS} kills, then every message exactly once`, async () => {
      let killed = 0;
      const tally = new SettleTally();
      const settle = (stderr: string): void => tally.add(stderr);
      for (let k = 0; k < KILLS; k++) {
        const r = await run(user, mode, k % 5 === 4 ? 'any' : 'delivering');
        settle(r.stderr);
        if (r.signal === 'SIGKILL') killed++;
        else expect(r.code, r.stderr).toBe(0);
      }
      const last = await run(user, mode);
      expect(last.code, last.stderr).toBe(0);
      settle(last.stderr);
      const counts = await seqCounts(path.join(root, `work-${user}`, 'Maildir'));
      const dups = [...counts.entries()].filter(([, n]) => n !== 1);
      const missing = Array.from({ length: MESSAGES }, (_, i) => i).filter((i) => !counts.has(i));
      expect({ dups, missing: missing.length }).toEqual({ dups: [], missing: 0 });
      expect(counts.size).toBe(MESSAGES);
      expect(killed).toBeGreaterThanOrEqual(KILLS / 2);
      if (mode === '--delete') expect(await onServer(dc.port, user)).toBe(0);
      else expect(await onServer(dc.port, user)).toBe(MESSAGES);
      console.log(`${mode}: ${killed} of ${KILLS} runs killed; interrupted deliveries found delivered: ${tally.recovered}, fetched again: ${tally.refetched}`);
    }, 120_000);
  }
});
