/**
 * The crash test for the other sinks. `poplar fetch` is killed with SIGKILL
 * at 20 random moments while it fetches from a real Dovecot, then allowed to
 * finish:
 *
 * - into an mbox (keep and delete mode): every message must be in the mbox
 *   exactly once, and the mbox must hold whole messages only (the probe finds
 *   what arrived, a torn last message is cut off);
 * - through an MDA (a shell script filling a Maildir): nothing may be lost and
 *   each kill may repeat at most one message (deliveries to a sink that cannot
 *   be asked are recorded one by one); the script sees the message's identity
 *   in POPLAR_ACCOUNT, POPLAR_UIDL and POPLAR_SIZE.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pop3Client } from '../../src/client/index.js';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { fillMaildrop, filesIn, onServer, runFetch, SettleTally, sizeOf } from './crash-helpers.js';
import { mboxSeqCounts, seqCounts, seqMessage } from './helpers.js';

const KILLS = 20;
const MBOX_MESSAGES = 1200;
const MDA_MESSAGES = 500;

/** Lines mboxrd has to quote, and now and then a message big enough to be appended in several writes. */
const mboxMessage = (i: number): string => `${seqMessage(i, i % 100 === 50 ? 600_000 : 120)}From here on, a line the mbox quotes\r\n>From one quoted already\r\n`;

let root: string;
let dc: DovecotHandle;

describe.skipIf(lacks('dovecot'))('crash test, mbox and MDA: SIGKILL during a fetch from Dovecot', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-sinks-'));
    const mail = path.join(root, 'mail');
    await fillMaildrop(mail, 'mboxkeep', MBOX_MESSAGES, mboxMessage);
    await fillMaildrop(mail, 'mboxdel', MBOX_MESSAGES, mboxMessage);
    await fillMaildrop(mail, 'mda', MDA_MESSAGES);
    dc = await startDovecot({ maildirRoot: mail, users: ['mboxkeep', 'mboxdel', 'mda'].map((name) => ({ name, password: 'pw' })) });
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  /** 20 runs, mostly killed while delivering, a few at any moment; then one that must finish. */
  async function killAndFinish(run: (killAt?: 'delivering' | 'any') => ReturnType<typeof runFetch>): Promise<{ killed: number; tally: SettleTally }> {
    let killed = 0;
    const tally = new SettleTally();
    for (let k = 0; k < KILLS; k++) {
      const r = await run(k % 5 === 4 ? 'any' : 'delivering');
      tally.add(r.stderr);
      if (r.signal === 'SIGKILL') killed++;
      else expect(r.code, r.stderr).toBe(0);
    }
    const last = await run();
    expect(last.code, last.stderr).toBe(0);
    tally.add(last.stderr);
    return { killed, tally };
  }

  for (const [user, mode] of [
    ['mboxkeep', '--keep'],
    ['mboxdel', '--delete'],
  ] as const) {
    it(`mbox, ${mode}: ${KILLS} kills, then every message exactly once and no fragment`, async () => {
      const work = path.join(root, `work-${user}`);
      const mbox = path.join(work, 'inbox.mbox');
      await fs.mkdir(work, { recursive: true });
      const { killed, tally } = await killAndFinish((killAt) =>
        runFetch({ port: dc.port, user, mode, sink: ['--mbox', mbox], state: path.join(work, 'ledger'), progress: () => sizeOf(mbox), ...(killAt ? { killAt } : {}) }),
      );
      const counts = await mboxSeqCounts(mbox, mboxMessage); // throws on a torn or altered message
      const dups = [...counts.entries()].filter(([, n]) => n !== 1);
      const missing = Array.from({ length: MBOX_MESSAGES }, (_, i) => i).filter((i) => !counts.has(i));
      expect({ dups, missing: missing.length }).toEqual({ dups: [], missing: 0 });
      expect(counts.size).toBe(MBOX_MESSAGES);
      expect(killed).toBeGreaterThanOrEqual(KILLS / 2);
      expect(tally.recovered).toBeGreaterThan(0); // the probe did find interrupted deliveries in the mbox
      // No dotlock, and nothing a run killed while making one left behind.
      expect((await fs.readdir(work)).filter((n) => n.startsWith('inbox.mbox'))).toEqual(['inbox.mbox']);
      expect(await onServer(dc.port, user)).toBe(mode === '--delete' ? 0 : MBOX_MESSAGES);
      console.log(`mbox ${mode}: ${killed} of ${KILLS} runs killed; interrupted deliveries found in the mbox: ${tally.recovered}, fetched again: ${tally.refetched}`);
    }, 120_000);
  }

  it(`MDA, --keep: ${KILLS} kills, nothing lost, at most one message repeated per kill, identity in the environment`, async () => {
    const work = path.join(root, 'work-mda');
    const maildir = path.join(work, 'Maildir');
    for (const d of ['tmp', 'new', 'cur']) await fs.mkdir(path.join(maildir, d), { recursive: true });
    const script = path.join(work, 'mda.sh');
    await fs.writeFile(
      script,
      [
        '#!/bin/sh',
        '# Store the message in a Maildir under a name made of its identity; log the environment.',
        'set -e',
        'name="$POPLAR_UIDL.$POPLAR_SIZE.$$"',
        'cat > "$MDA_DIR/tmp/$name"',
        'mv "$MDA_DIR/tmp/$name" "$MDA_DIR/new/$name"',
        'printf "%s %s %s\\n" "$POPLAR_ACCOUNT" "$POPLAR_UIDL" "$POPLAR_SIZE" >> "$MDA_DIR/../env.log"',
        '',
      ].join('\n'),
    );
    const { killed, tally } = await killAndFinish((killAt) =>
      runFetch({
        port: dc.port,
        user: 'mda',
        mode: '--keep',
        sink: ['--mda', `sh ${script}`],
        state: path.join(work, 'ledger'),
        env: { MDA_DIR: maildir },
        progress: () => filesIn(path.join(maildir, 'new')),
        ...(killAt ? { killAt } : {}),
      }),
    );
    const counts = await seqCounts(maildir);
    const missing = Array.from({ length: MDA_MESSAGES }, (_, i) => i).filter((i) => !counts.has(i));
    const repeated = [...counts.values()].reduce((t, n) => t + n - 1, 0);
    expect(missing).toEqual([]);
    expect(counts.size).toBe(MDA_MESSAGES);
    expect(killed).toBeGreaterThanOrEqual(KILLS / 2);
    expect(repeated).toBeLessThanOrEqual(killed);

    // Each file's name holds the UIDL and size the MDA was given: they are those of the message it holds.
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: dc.port, tls: 'none' });
    await c.login('mda', 'pw');
    const sizes = new Map((await c.list()).map((l) => [l.number, l.octets]));
    const byUidl = new Map<string, { seq: number; size: number }>();
    for (const { number, uid } of await c.uidl()) {
      const head = (await c.topBuffer(number, 0)).toString('latin1');
      byUidl.set(uid, { seq: Number(/^X-Seq: (\d+)\r$/m.exec(head)![1]), size: sizes.get(number)! });
    }
    await c.quit();
    const names = await fs.readdir(path.join(maildir, 'new'));
    expect(names).toHaveLength(MDA_MESSAGES + repeated);
    for (const name of names) {
      const [uidl, size] = name.split('.');
      const seq = Number(/^X-Seq: (\d+)$/m.exec(await fs.readFile(path.join(maildir, 'new', name), 'latin1'))![1]);
      expect({ name, seq, size: Number(size) }).toEqual({ name, ...byUidl.get(uidl!)! });
    }
    const log = (await fs.readFile(path.join(work, 'env.log'), 'latin1')).trim().split('\n');
    expect(log).toHaveLength(names.length);
    expect(new Set(log.map((l) => l.split(' ')[0]))).toEqual(new Set(['mda@127.0.0.1']));
    console.log(`MDA: ${killed} of ${KILLS} runs killed; messages delivered twice: ${repeated}; pending after kills, delivered again: ${tally.refetched}`);
  }, 120_000);
});
