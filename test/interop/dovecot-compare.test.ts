/**
 * Dovecot 2.3 and Poplar serving the same Maildir must say the same thing.
 *
 * 1. Dovecot opens the maildrop first (it creates dovecot-uidlist and moves new/
 *    to cur/), then Poplar serves a `cp -a` copy: STAT, LIST, UIDL, RETR and TOP
 *    must be byte-identical, except two known differences where Poplar follows
 *    RFC 1939 and Dovecot 2.3.19 does not:
 *    - a 0-byte message: Dovecot sends an empty line before the terminator,
 *      Poplar sends no line at all;
 *    - a message whose first byte is ".": Dovecot does not byte-stuff the first
 *      line (so a first line "." would even end its reply early), Poplar does.
 * 2. The reverse: Poplar creates dovecot-uidlist, Dovecot serves a copy.
 * 3. Live sharing of one directory, sessions alternating between the servers
 *    while new mail arrives and messages are deleted.
 *
 * Dovecot's mail processes run as `nobody` while the in-process Poplar runs as
 * whoever runs the tests (root here), so after every Poplar session the
 * maildrop is chowned back (in production both would run as the mail user).
 */
import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { edgeCorpus } from '../corpus/corpus.js';
import { chownForDovecot, startDovecot, type DovecotHandle } from '../helpers/dovecot.js';
import { lacks } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';
import { crlfSize } from '../../src/protocol/message-size.js';
import { parseUidlist } from '../../src/store/maildir/uidlist.js';

const USER = 'alice';
const PASSWORD = 'secret';
const users = [{ name: USER, password: PASSWORD }];
const NO_DOVECOT = lacks('dovecot');

interface Placed {
  label: string;
  raw: Buffer;
  /** Path relative to the maildir, e.g. `new/1700000000.M5P1.testhost` or `cur/…:2,S`. */
  rel: string;
}

function ordinary(i: number): Buffer {
  return Buffer.from(
    `From: Carol <carol@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: ordinary ${i}\r\n` +
      `Message-ID: <ordinary-${i}@example.org>\r\n\r\nHello Alice,\r\n\r\nordinary message ${i}.\r\n` +
      'line 3\r\nline 4\r\nline 5\r\nline 6\r\n.dot line\r\nline 8\r\n',
    'latin1',
  );
}

/**
 * The edge corpus plus ordinary messages as Dovecot-style files spread over new/
 * and cur/: seconds shared by groups of three (so the M<usec> rule decides), some
 * names without an M part, every third name with correct `,S=`/`,W=`, cur/ files
 * with `:2,S`, `:2,` and one without any info part.
 */
function placedCorpus(): Placed[] {
  const msgs = [...edgeCorpus().map((m) => ({ label: m.name, raw: m.raw }))];
  for (let i = 1; i <= 4; i++) msgs.push({ label: `ordinary ${i}`, raw: ordinary(i) });
  const usecs = [500000, 5, 10];
  return msgs.map((m, i) => {
    const sec = 1700000000 + Math.floor(i / 3);
    let base = i % 7 === 6 ? `${sec}.P${100 + i}Q1.testhost` : `${sec}.M${usecs[i % 3]!}P${100 + i}.testhost`;
    if (i % 3 === 0) base += `,S=${m.raw.length},W=${crlfSize(m.raw)}`;
    let rel: string;
    if (i === 5) rel = `cur/${base}`;
    else if (i % 4 === 1) rel = `cur/${base}:2,S`;
    else if (i % 4 === 3) rel = `cur/${base}:2,`;
    else rel = `new/${base}`;
    return { label: m.label, raw: m.raw, rel };
  });
}

async function writeMaildir(dir: string, placed: Placed[]): Promise<void> {
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub), { recursive: true });
  for (const p of placed) await fs.writeFile(path.join(dir, p.rel), p.raw, { mode: 0o644 });
}

async function connect(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  const greeting = await w.line();
  if (!greeting.startsWith('+OK')) throw new Error(`greeting: ${greeting}`);
  return w;
}

/** Logins per server port, to know how many session-end lines Dovecot's log must have. */
const logins = new Map<number, number>();

async function loggedIn(port: number): Promise<Wire> {
  const w = await connect(port);
  await w.login(USER, PASSWORD);
  logins.set(port, (logins.get(port) ?? 0) + 1);
  return w;
}

/** QUIT and wait for EOF: only then has Dovecot finished writing the maildir. */
async function quit(w: Wire): Promise<string> {
  const r = await w.cmd('QUIT');
  await w.closed(15_000);
  return r;
}

function isOk(status: string): boolean {
  return status.startsWith('+OK');
}

/**
 * Dovecot's log file (log_path in the helper's config: `<dc.dir>/dovecot.log`),
 * read once every mail session has logged its "Disconnected" line: the log
 * process writes asynchronously, and a session's errors come before that line.
 */
async function dovecotLog(dc: DovecotHandle): Promise<string> {
  const want = logins.get(dc.port) ?? 0;
  const deadline = Date.now() + 10_000;
  for (;;) {
    const log = await fs.readFile(path.join(dc.dir, 'dovecot.log'), 'utf8').catch(() => '');
    const ended = log.split('\n').filter((l) => /pop3\(alice\).*Disconnected/.test(l)).length;
    if (ended >= want) return log;
    if (Date.now() > deadline) throw new Error(`dovecot.log has ${ended} of ${want} session ends:\n${log}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Lines of Dovecot's log that report a problem (anything at warning level or worse). */
function logProblems(log: string): string[] {
  return log.split('\n').filter((l) => /\b(Warning|Error|Fatal|Panic)(\([^)]*\))?:/.test(l));
}

/** `cp -a` keeps owners, modes and times, as an administrator copying a maildir would. */
function copyMaildir(from: string, to: string): void {
  execFileSync('cp', ['-a', from, to]);
}

interface Servers {
  dc: number;
  pop: number;
}

/**
 * The two known, deliberate differences, by message number: a 0-byte message,
 * and a message whose first byte is a dot.
 */
type Special = Map<number, 'empty' | 'leading-dot'>;

/**
 * Message number -> special case, as Dovecot (the reference) shows them: size 0
 * in LIST, or a first line that starts with a single, unstuffed dot.
 */
async function specialMessages(dcPort: number, placed: Placed[]): Promise<Special> {
  const w = await loggedIn(dcPort);
  const out: Special = new Map();
  try {
    for (let n = 1; n <= placed.length; n++) {
      const size = Number((await w.cmd(`LIST ${n}`)).split(' ')[2]);
      const top = await w.cmdMulti(`TOP ${n} 0`);
      if (size === 0) out.set(n, 'empty');
      else if (top.body[0] === 0x2e && top.body[1] !== 0x2e) out.set(n, 'leading-dot');
    }
    const kinds = [...out.values()];
    expect(kinds.filter((k) => k === 'empty')).toHaveLength(placed.filter((m) => m.raw.length === 0).length);
    expect(kinds.filter((k) => k === 'leading-dot')).toHaveLength(placed.filter((m) => m.raw[0] === 0x2e).length);
    expect(kinds.length).toBeGreaterThanOrEqual(2);
    await quit(w);
  } finally {
    w.close();
  }
  return out;
}

/** Every query of the comparison (STAT, LIST, UIDL, RETR, TOP), message by message, on both servers. */
async function compareEverything(ports: Servers, count: number, special: Special): Promise<void> {
  const d = await loggedIn(ports.dc);
  const p = await loggedIn(ports.pop);
  try {
    const dStat = await d.cmd('STAT');
    expect(dStat).toMatch(new RegExp(`^\\+OK ${count} \\d+$`));
    expect(await p.cmd('STAT')).toBe(dStat);

    const dList = await d.cmdLines('LIST');
    const pList = await p.cmdLines('LIST');
    expect(isOk(dList.status) && isOk(pList.status)).toBe(true);
    expect(dList.lines).toHaveLength(count);
    expect(pList.lines).toEqual(dList.lines);

    const dUidl = await d.cmdLines('UIDL');
    const pUidl = await p.cmdLines('UIDL');
    expect(isOk(dUidl.status) && isOk(pUidl.status)).toBe(true);
    expect(dUidl.lines).toHaveLength(count);
    expect(pUidl.lines).toEqual(dUidl.lines);

    for (let n = 1; n <= count; n++) {
      const ctx = `message ${n}`;
      expect(await p.cmd(`LIST ${n}`), ctx).toBe(await d.cmd(`LIST ${n}`));
      expect(await p.cmd(`UIDL ${n}`), ctx).toBe(await d.cmd(`UIDL ${n}`));
      const cmds = [`RETR ${n}`, `TOP ${n} 0`, `TOP ${n} 1`, `TOP ${n} 5`];
      for (const c of cmds) {
        const dr = await d.cmdMulti(c);
        const pr = await p.cmdMulti(c);
        expect(isOk(dr.status), `${ctx} ${c}: ${dr.status}`).toBe(true);
        expect(isOk(pr.status), `${ctx} ${c}: ${pr.status}`).toBe(true);
        if (c.startsWith('RETR')) expect(pr.status, `${ctx} ${c}`).toBe(dr.status);
        if (special.get(n) === 'empty') {
          // 0-byte file: Dovecot sends one empty line, Poplar no line (RFC 1939).
          expect(dr.body.toString('latin1'), `${ctx} ${c} dovecot`).toBe('\r\n.\r\n');
          expect(pr.body.toString('latin1'), `${ctx} ${c} poplar`).toBe('.\r\n');
        } else if (special.get(n) === 'leading-dot') {
          // Dovecot 2.3.19 does not byte-stuff the very first line of a message
          // (a first line "." even ends its reply early); Poplar stuffs it (RFC 1939 §3).
          expect(pr.body[0], `${ctx} ${c}`).toBe(0x2e);
          expect(pr.body[1], `${ctx} ${c}`).toBe(0x2e);
          expect(pr.body.subarray(1).equals(dr.body), `${ctx} ${c}: the rest is identical`).toBe(true);
        } else if (!pr.body.equals(dr.body)) {
          const at = firstDifference(dr.body, pr.body);
          expect.fail(
            `${ctx} ${c}: bodies differ at byte ${at} (dovecot ${dr.body.length} B, poplar ${pr.body.length} B): ` +
              `dovecot ${JSON.stringify(dr.body.subarray(Math.max(0, at - 20), at + 20).toString('latin1'))} ` +
              `poplar ${JSON.stringify(pr.body.subarray(Math.max(0, at - 20), at + 20).toString('latin1'))}`,
          );
        }
      }
    }
    // Read-only: leave without deleting (no DELE was sent).
    expect(isOk(await quit(d))).toBe(true);
    expect(isOk(await quit(p))).toBe(true);
  } finally {
    d.close();
    p.close();
  }
}

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}

/** -ERR vs +OK (not the text) of edge commands; deletions are undone with RSET. */
async function compareEdgeStatuses(ports: Servers): Promise<void> {
  const script = [
    'LIST 0',
    'LIST 99',
    'UIDL 0',
    'UIDL 99',
    'RETR 0',
    'RETR 99',
    'TOP 1 -1',
    'TOP 1 x',
    'TOP 0 1',
    'TOP 99 1',
    'DELE 0',
    'DELE 2',
    'DELE 2',
    'RETR 2',
    'TOP 2 0',
    'LIST 2',
    'UIDL 2',
    'STAT',
    'LIST',
    'RSET',
    'STAT',
    'RETR 2',
    'NOOP',
  ];
  const results: Record<'dc' | 'pop', string[]> = { dc: [], pop: [] };
  for (const which of ['dc', 'pop'] as const) {
    const pre = await connect(ports[which]);
    results[which].push(`STAT before login: ${(await pre.cmd('STAT')).slice(0, 3)}`);
    pre.close();
    const w = await loggedIn(ports[which]);
    for (const c of script) {
      const multi = c === 'LIST' || c.startsWith('RETR') || c.startsWith('TOP');
      const status = multi ? (await w.cmdMulti(c)).status : await w.cmd(c);
      results[which].push(`${c}: ${status.slice(0, 3)}`);
    }
    // Drop the connection without QUIT: nothing is expunged by either server.
    w.close();
  }
  expect(results.pop).toEqual(results.dc);
  // The expected answers, so that both being wrong the same way is caught too.
  expect(results.dc).toEqual([
    'STAT before login: -ER',
    'LIST 0: -ER',
    'LIST 99: -ER',
    'UIDL 0: -ER',
    'UIDL 99: -ER',
    'RETR 0: -ER',
    'RETR 99: -ER',
    'TOP 1 -1: -ER',
    'TOP 1 x: -ER',
    'TOP 0 1: -ER',
    'TOP 99 1: -ER',
    'DELE 0: -ER',
    'DELE 2: +OK',
    'DELE 2: -ER',
    'RETR 2: -ER',
    'TOP 2 0: -ER',
    'LIST 2: -ER',
    'UIDL 2: -ER',
    'STAT: +OK',
    'LIST: +OK',
    'RSET: +OK',
    'STAT: +OK',
    'RETR 2: +OK',
    'NOOP: +OK',
  ]);
}

/** STAT/LIST after DELE: both leave the deleted message out in the same way. */
async function compareAfterDele(ports: Servers): Promise<void> {
  const d = await loggedIn(ports.dc);
  const p = await loggedIn(ports.pop);
  try {
    for (const c of ['DELE 1', 'DELE 3']) {
      expect(isOk(await d.cmd(c))).toBe(true);
      expect(isOk(await p.cmd(c))).toBe(true);
    }
    expect(await p.cmd('STAT')).toBe(await d.cmd('STAT'));
    expect((await p.cmdLines('LIST')).lines).toEqual((await d.cmdLines('LIST')).lines);
    expect((await p.cmdLines('UIDL')).lines).toEqual((await d.cmdLines('UIDL')).lines);
  } finally {
    d.close();
    p.close();
  }
}

async function uidlLines(port: number): Promise<string[]> {
  const w = await loggedIn(port);
  try {
    const r = await w.cmdLines('UIDL');
    expect(isOk(r.status)).toBe(true);
    await quit(w);
    return r.lines;
  } finally {
    w.close();
  }
}

async function tempRoot(prefix: string): Promise<string> {
  return fs.mkdtemp(path.join(os.tmpdir(), prefix));
}

describe('Dovecot log filter', () => {
  it('picks warning/error/fatal/panic lines and nothing else', () => {
    const log = [
      'Nov 26 13:57:40 master: Info: Dovecot v2.3.19.1 (9b53102964) starting up for pop3 (core dumps disabled)',
      'Nov 26 13:57:40 pop3(alice)<3813><HZiuUy5hxtJ/AAAB>: Info: Disconnected: Logged out top=0/0, retr=0/0, del=0/29, size=5329023',
      'Nov 26 13:57:41 pop3(alice)<3814><HZiuUy5hxtJ/AAAC>: Error: Broken file /x/dovecot-uidlist line 2: Invalid data',
      'Nov 26 13:57:42 master: Warning: Killed with signal 15 (by pid=3767 uid=0 code=kill)',
      'Nov 26 13:57:43 pop3(alice)<1><x>: Panic: file maildir-uidlist.c: assertion failed',
      'Nov 26 13:57:43 pop3(alice)<1><x>: Fatal: master: service(pop3): child 1 killed',
    ].join('\n');
    expect(logProblems(log).map((l) => l.split(': ')[1])).toEqual(['Error', 'Warning', 'Panic', 'Fatal']);
  });
});

describe('Dovecot and Poplar on copies of one Maildir', () => {
  it.skipIf(NO_DOVECOT)('Dovecot first: identical STAT, LIST, UIDL, RETR, TOP and error statuses', async () => {
    const root = await tempRoot('poplar-cmp-');
    const dcRoot = path.join(root, 'dc', 'mail');
    const placed = placedCorpus();
    await writeMaildir(path.join(dcRoot, USER), placed);
    let dc: DovecotHandle | undefined;
    let pop: TestServer | undefined;
    try {
      dc = await startDovecot({ maildirRoot: dcRoot, users });
      // Let Dovecot open the maildrop once so it creates dovecot-uidlist.
      const w = await loggedIn(dc.port);
      expect(isOk(await quit(w))).toBe(true);
      const uidlistText = await fs.readFile(path.join(dcRoot, USER, 'dovecot-uidlist'), 'utf8');
      const uidlist = parseUidlist(uidlistText);
      expect(uidlist.records).toHaveLength(placed.length);
      expect(await fs.readdir(path.join(dcRoot, USER, 'new'))).toEqual([]);

      pop = await startTestServer({ users, dir: path.join(root, 'pop') });
      copyMaildir(path.join(dcRoot, USER), path.join(pop.maildirRoot, USER));
      const ports = { dc: dc.port, pop: pop.port };

      const special = await specialMessages(dc.port, placed);
      await compareEverything(ports, placed.length, special);
      await compareEdgeStatuses(ports);
      await compareAfterDele(ports);
      // Nothing was expunged by any of the above.
      await compareEverything(ports, placed.length, special);

      expect(logProblems(await dovecotLog(dc))).toEqual([]);
    } finally {
      await pop?.stop();
      await dc?.stop();
      await fs.rm(root, { recursive: true, force: true });
    }
  }, 120_000);

  it.skipIf(NO_DOVECOT)('Poplar first: Dovecot keeps the UIDs Poplar assigned', async () => {
    const root = await tempRoot('poplar-rev-');
    const placed = placedCorpus();
    let dc: DovecotHandle | undefined;
    let pop: TestServer | undefined;
    try {
      pop = await startTestServer({ users, dir: path.join(root, 'pop') });
      const popBox = path.join(pop.maildirRoot, USER);
      await writeMaildir(popBox, placed);
      const poplarUidls = await uidlLines(pop.port);
      expect(poplarUidls).toHaveLength(placed.length);
      const uidlist = parseUidlist(await fs.readFile(path.join(popBox, 'dovecot-uidlist'), 'utf8'));
      expect(uidlist.records).toHaveLength(placed.length);
      expect(await fs.readdir(path.join(popBox, 'new'))).toEqual([]);

      const dcRoot = path.join(root, 'dc', 'mail');
      await fs.mkdir(dcRoot, { recursive: true });
      copyMaildir(popBox, path.join(dcRoot, USER));
      dc = await startDovecot({ maildirRoot: dcRoot, users }); // chowns the copy for Dovecot
      expect(await uidlLines(dc.port)).toEqual(poplarUidls);
      expect(await uidlLines(pop.port)).toEqual(poplarUidls);

      // Dovecot trusts the W sizes Poplar wrote; everything else must agree too.
      const special = await specialMessages(dc.port, placed);
      await compareEverything({ dc: dc.port, pop: pop.port }, placed.length, special);
      // And still the same UIDs after Dovecot has rewritten the uidlist its way.
      expect(await uidlLines(dc.port)).toEqual(poplarUidls);

      expect(logProblems(await dovecotLog(dc))).toEqual([]);
    } finally {
      await pop?.stop();
      await dc?.stop();
      await fs.rm(root, { recursive: true, force: true });
    }
  }, 120_000);
});

// ---------------------------------------------------------------------------
// Live sharing: one directory, sessions alternating between the two servers.

interface Seen {
  uidl: string;
  id: string;
  size: number;
}

function messageId(top: Buffer): string {
  const m = /^Message-ID: <([^>]+)>/m.exec(top.toString('latin1'));
  if (!m) throw new Error(`no Message-ID in ${JSON.stringify(top.toString('latin1').slice(0, 200))}`);
  return m[1]!;
}

function uidOf(uidl: string): number {
  return parseInt(uidl.slice(0, 8), 16);
}

describe('Dovecot and Poplar sharing one live Maildir', () => {
  it.skipIf(NO_DOVECOT)('same UIDLs on both, deletions visible to both, UIDs never reused, uidlist accepted', async () => {
    const root = await tempRoot('poplar-live-');
    let dc: DovecotHandle | undefined;
    let pop: TestServer | undefined;
    try {
      pop = await startTestServer({ users, dir: root });
      const box = path.join(pop.maildirRoot, USER);
      for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });

      let serial = 0;
      const live = new Set<string>();
      const sizeOf = new Map<string, number>();
      const deliver = async (k: number): Promise<void> => {
        for (let j = 0; j < k; j++) {
          serial++;
          const id = `live-${serial}@example.org`;
          const raw = Buffer.from(
            `From: x@example.org\nSubject: live ${serial}\nMessage-ID: <${id}>\n\nbody of ${serial}\n` + 'more\n'.repeat(serial % 4),
            'latin1',
          );
          // Out of order on purpose: a later delivery can sort before an earlier one.
          const sec = 1700000000 + serial * 10 - (serial % 3 === 0 ? 15 : 0);
          let base = `${sec}.M${(serial * 7919) % 1000000}P${serial}.livehost`;
          if (serial % 2 === 0) base += `,S=${raw.length},W=${crlfSize(raw)}`;
          await fs.writeFile(path.join(box, 'new', base), raw, { mode: 0o644 });
          live.add(id);
          sizeOf.set(id, crlfSize(raw));
        }
      };
      await deliver(4);
      dc = await startDovecot({ maildirRoot: pop.maildirRoot, users }); // chowns the maildir

      const servers = { dovecot: dc.port, poplar: pop.port } as const;
      const uidlOfId = new Map<string, string>();
      const idOfUidl = new Map<string, string>();
      let uidValidity: string | undefined;
      let maxUid = 0;

      /** One session: UIDL + TOP n 0 for every message, check it against what is known, DELE some. */
      const session = async (which: keyof typeof servers, deleteIds: (seen: Seen[]) => string[]): Promise<Seen[]> => {
        const w = await loggedIn(servers[which]);
        const seen: Seen[] = [];
        try {
          const u = await w.cmdLines('UIDL');
          expect(isOk(u.status), which).toBe(true);
          const sizes = (await w.cmdLines('LIST')).lines.map((l) => Number(l.split(' ')[1]));
          expect(sizes).toHaveLength(u.lines.length);
          for (const [i, line] of u.lines.entries()) {
            const [n, uidl] = line.split(' ') as [string, string];
            const top = await w.cmdMulti(`TOP ${n} 0`);
            expect(isOk(top.status), `${which} TOP ${n}`).toBe(true);
            seen.push({ uidl, id: messageId(top.body), size: sizes[i]! });
          }
          const toDelete = new Set(deleteIds(seen));
          for (let i = 0; i < seen.length; i++) {
            if (toDelete.has(seen[i]!.id)) expect(isOk(await w.cmd(`DELE ${i + 1}`))).toBe(true);
          }
          await quit(w);
          for (const id of toDelete) live.delete(id);
        } finally {
          w.close();
        }
        if (which === 'poplar') await chownForDovecot(box); // see the file header

        // What is listed is exactly what was delivered and not deleted (before this session's DELEs).
        const ids = seen.map((s) => s.id);
        expect(new Set(ids).size, `${which}: duplicate messages`).toBe(ids.length);
        // Listed in UID order.
        const uids = seen.map((s) => uidOf(s.uidl));
        expect([...uids].sort((a, b) => a - b), which).toEqual(uids);
        let newMax = maxUid;
        for (const s of seen) {
          expect(s.size, `${which}: LIST size of ${s.id}`).toBe(sizeOf.get(s.id));
          const v = s.uidl.slice(8);
          uidValidity ??= v;
          expect(v, `${which}: UIDVALIDITY changed`).toBe(uidValidity);
          const known = uidlOfId.get(s.id);
          if (known !== undefined) {
            expect(s.uidl, `${which}: UIDL of ${s.id} changed`).toBe(known);
          } else {
            // A message never seen before gets a UID above every UID ever handed out.
            expect(uidOf(s.uidl), `${which}: UID of new ${s.id} reused`).toBeGreaterThan(maxUid);
            expect(idOfUidl.has(s.uidl), `${which}: UIDL ${s.uidl} reused`).toBe(false);
            uidlOfId.set(s.id, s.uidl);
            idOfUidl.set(s.uidl, s.id);
            newMax = Math.max(newMax, uidOf(s.uidl));
          }
        }
        maxUid = newMax;
        return seen;
      };

      const order: (keyof typeof servers)[] = ['dovecot', 'poplar'];
      for (let round = 0; round < 8; round++) {
        const first = order[round % 2]!;
        const second = order[(round + 1) % 2]!;
        if (round > 0) await deliver(1 + (round % 3));
        const expected = new Set(live);
        // The first server sees the new mail first and assigns its UIDs.
        const a = await session(first, () => []);
        expect(new Set(a.map((s) => s.id)), `round ${round} ${first}`).toEqual(expected);
        // The second must list exactly the same; then it deletes the oldest and
        // the newest (the highest UID: it must not come back for new mail).
        const b = await session(second, (seen) => {
          if (seen.length < 3) return [];
          return round % 3 === 2 ? [seen[seen.length - 1]!.id] : [seen[0]!.id, seen[seen.length - 1]!.id];
        });
        expect(b, `round ${round}: ${second} disagrees with ${first}`).toEqual(a);
        // Deletions made through the second server are gone on the first one.
        const c = await session(first, () => []);
        expect(new Set(c.map((s) => s.id)), `round ${round} ${first} after DELE`).toEqual(live);
        expect(c).toEqual(a.filter((s) => live.has(s.id)));
      }

      // Last word from each: identical, and Dovecot never complained.
      const lastD = await session('dovecot', () => []);
      const lastP = await session('poplar', () => []);
      expect(lastP).toEqual(lastD);
      expect(new Set(lastD.map((s) => s.id))).toEqual(live);
      expect(serial).toBeGreaterThan(15);

      const uidlist = parseUidlist(await fs.readFile(path.join(box, 'dovecot-uidlist'), 'utf8'));
      expect(uidlist.nextUid).toBeGreaterThan(maxUid);
      expect(uidlist.uidValidity.toString(16).padStart(8, '0')).toBe(uidValidity);
      const log = await dovecotLog(dc);
      expect(log).toMatch(/pop3\(alice\)/); // the log is really the one Dovecot writes
      expect(logProblems(log)).toEqual([]);
    } finally {
      await pop?.stop();
      await dc?.stop();
      await fs.rm(root, { recursive: true, force: true });
    }
  }, 180_000);
});
