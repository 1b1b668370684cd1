/**
 * THE CRASH TEST. `poplar fetch` fetches 3000 messages from a real Dovecot
 * and is killed with SIGKILL at 20 random moments (most of them while
 * messages are being delivered, a few at any time), then allowed to finish.
 * Every message must be in the Maildir exactly once (counted by its X-Seq
 * header), in keep mode and in delete mode, and nothing may be left on the
 * server in delete mode.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pop3Client } from '../../src/client/index.js';
import { poplarArgs, ROOT } from '../helpers/cli.js';
import { dovecotAvailable, startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { seqCounts, seqMessage } from './helpers.js';

const MESSAGES = 3000;
const KILLS = 20;

let root: string;
let dc: DovecotHandle;

async function fillMaildrop(user: string): Promise<void> {
  const box = path.join(root, 'mail', user);
  for (const d of ['new', 'cur', 'tmp']) await fs.mkdir(path.join(box, d), { recursive: true });
  const writes: Promise<void>[] = [];
  for (let i = 0; i < MESSAGES; i++) {
    writes.push(fs.writeFile(path.join(box, 'new', `${1_700_000_000 + i}.M${i}P1.crash`), seqMessage(i, 120).replace(/\r\n/g, '\n')));
  }
  await Promise.all(writes);
}

describe.skipIf(!dovecotAvailable())('crash test: SIGKILL during a fetch from Dovecot', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-'));
    await fillMaildrop('keeper');
    await fillMaildrop('deleter');
    dc = await startDovecot({ maildirRoot: path.join(root, 'mail'), users: [{ name: 'keeper', password: 'pw' }, { name: 'deleter', password: 'pw' }] });
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  async function filesIn(dir: string): Promise<number> {
    try {
      return (await fs.readdir(dir)).length;
    } catch {
      return 0;
    }
  }

  /** One run of `poplar fetch`; killed with SIGKILL at a moment chosen by `killAt` (undefined: runs to the end). */
  async function run(user: string, mode: '--keep' | '--delete', killAt?: 'delivering' | 'any'): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
    const work = path.join(root, `work-${user}`);
    const args = ['fetch', '--once', '--host', '127.0.0.1', '--port', String(dc.port), '--tls', 'none', '--user', user, '--password-env', 'PW', mode, '--maildir', path.join(work, 'Maildir'), '--state', path.join(work, 'ledger'), '--json'];
    const child = spawn(process.execPath, poplarArgs(args), { cwd: ROOT, env: { ...process.env, PW: 'pw' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
    let done = false;
    void exited.then(() => (done = true));
    if (killAt === 'any') {
      await Promise.race([sleep(100 + Math.random() * 600), exited]);
      child.kill('SIGKILL');
    } else if (killAt === 'delivering') {
      // Wait until this run has delivered something, then kill after a random moment.
      const newDir = path.join(work, 'Maildir', 'new');
      const before = await filesIn(newDir);
      while (!done && (await filesIn(newDir)) === before) await sleep(3);
      await Promise.race([sleep(Math.random() * 25), exited]); // a fetch delivers thousands of messages a second
      child.kill('SIGKILL');
    }
    return { ...(await exited), stdout, stderr };
  }

  async function onServer(user: string): Promise<number> {
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: dc.port, tls: 'none' });
    await c.login(user, 'pw');
    const n = (await c.uidl()).length;
    await c.quit();
    return n;
  }

  for (const [user, mode] of [
    ['keeper', '--keep'],
    ['deleter', '--delete'],
  ] as const) {
    it(`${mode}: ${KILLS} kills, then every message exactly once`, async () => {
      let killed = 0;
      let recovered = 0;
      let refetched = 0;
      const settle = (stderr: string): void => {
        const m = /(\d+) deliveries were interrupted; (\d+) had arrived/.exec(stderr);
        if (m) {
          recovered += Number(m[2]);
          refetched += Number(m[1]) - Number(m[2]);
        }
      };
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
      if (mode === '--delete') expect(await onServer(user)).toBe(0);
      else expect(await onServer(user)).toBe(MESSAGES);
      console.log(`${mode}: ${killed} of ${KILLS} runs killed; interrupted deliveries found delivered: ${recovered}, fetched again: ${refetched}`);
    }, 120_000);
  }
});
