/**
 * The crash test for the IMAP sink. `poplar fetch` moves mail from a real
 * Dovecot's POP3 into an IMAP folder of the same Dovecot (over TLS) and is
 * killed with SIGKILL at 12 random moments, mostly while it appends, then
 * allowed to finish. Every message must then be in the folder exactly once:
 * a message appended whose record a kill lost is found by the probe (UID
 * SEARCH by Message-ID and size, octets compared) instead of appended again.
 * Every tenth message has no Message-ID (found by size and content), and
 * a few are large enough to take a while to append.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ImapFlow } from 'imapflow';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { fillMaildrop, filesIn, onServer, runFetch, SettleTally } from './crash-helpers.js';
import { seqMessage } from './helpers.js';

const KILLS = 12;
const MESSAGES = 400;

/** Every tenth message without a Message-ID, a few of 300 000 octets. */
function message(i: number): string {
  const m = seqMessage(i, i % 97 === 3 ? 300_000 : 150);
  return i % 10 === 5 ? m.replace(/^Message-ID: .*\r\n/m, '') : m;
}

let root: string;
let dc: DovecotHandle;

/** X-Seq → how many copies the IMAP folder holds. */
async function folderCounts(user: string): Promise<Map<number, number>> {
  const c = new ImapFlow({ host: '127.0.0.1', port: dc.imapPort, secure: false, doSTARTTLS: false, auth: { user, pass: 'pw' }, logger: false });
  c.on('error', () => undefined);
  await c.connect();
  const counts = new Map<number, number>();
  try {
    const box = await c.mailboxOpen('INBOX', { readOnly: true });
    if (box.exists > 0) {
      for await (const m of c.fetch('1:*', { source: true })) {
        const text = m.source!.toString('latin1');
        const seq = Number(/^X-Seq: (\d+)\r?$/m.exec(text)![1]);
        expect(text, `message ${seq} altered`).toBe(message(seq));
        counts.set(seq, (counts.get(seq) ?? 0) + 1);
      }
    }
  } finally {
    await c.logout();
  }
  return counts;
}

describe.skipIf(lacks('dovecot') || lacks('dovecot-imapd'))('crash test, IMAP sink: SIGKILL during a fetch from Dovecot POP3 into Dovecot IMAP', () => {
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-crash-imap-'));
    const mail = path.join(root, 'mail');
    await fillMaildrop(mail, 'src', MESSAGES, message);
    dc = await startDovecot({ maildirRoot: mail, users: ['src', 'dst'].map((name) => ({ name, password: 'pw' })), imap: true });
  }, 60_000);
  afterAll(async () => {
    await dc?.stop();
    await fs.rm(root, { recursive: true, force: true });
  });

  it(`${KILLS} kills, then every message in the IMAP folder exactly once and unaltered`, async () => {
    const work = path.join(root, 'work');
    await fs.mkdir(work, { recursive: true });
    const config = path.join(work, 'fetch.toml');
    await fs.writeFile(
      config,
      [
        '[sinks.imap]',
        'type = "imap"',
        'host = "127.0.0.1"',
        `port = ${dc.imapsPort}`,
        `ca = "${dc.certFile}"`,
        'servername = "localhost"',
        'user = "dst"',
        'password_env = "PW"',
        '',
        '[[account]]',
        'name = "src"',
        'host = "127.0.0.1"',
        `port = ${dc.port}`,
        'tls = "none"',
        'user = "src"',
        'password_env = "PW"',
        'sink = "imap"',
        `state = "${path.join(work, 'ledger')}"`,
        'batch = 16',
        '',
      ].join('\n'),
    );
    const dst = path.join(root, 'mail', 'dst');
    const progress = async (): Promise<number> => (await filesIn(path.join(dst, 'new'))) + (await filesIn(path.join(dst, 'cur')));
    const run = (killAt?: 'delivering' | 'any'): ReturnType<typeof runFetch> => runFetch({ port: dc.port, user: 'src', mode: '--keep', sink: [], state: '', config, progress, ...(killAt ? { killAt } : {}) });

    let killed = 0;
    const tally = new SettleTally();
    for (let k = 0; k < KILLS; k++) {
      const r = await run(k % 4 === 3 ? 'any' : 'delivering');
      tally.add(r.stderr);
      if (r.signal === 'SIGKILL') killed++;
      else expect(r.code, r.stderr).toBe(0);
    }
    const last = await run();
    expect(last.code, last.stderr).toBe(0);
    tally.add(last.stderr);

    const counts = await folderCounts('dst');
    const dups = [...counts.entries()].filter(([, n]) => n !== 1);
    const missing = Array.from({ length: MESSAGES }, (_, i) => i).filter((i) => !counts.has(i));
    expect({ dups, missing }).toEqual({ dups: [], missing: [] });
    expect(killed).toBeGreaterThanOrEqual(KILLS / 2);
    expect(tally.recovered).toBeGreaterThan(0); // the probe did find appended messages whose record a kill lost
    expect(await onServer(dc.port, 'src')).toBe(MESSAGES);
    console.log(`IMAP: ${killed} of ${KILLS} runs killed; interrupted deliveries found in the folder: ${tally.recovered}, appended again: ${tally.refetched}`);
  }, 180_000);
});
