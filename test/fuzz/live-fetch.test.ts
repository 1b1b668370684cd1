/**
 * A live fuzzer against `poplar fetch`: a POP3 server on a real socket that
 * mutates its replies (wrong counts and sizes, duplicate UIDLs, UIDLs with
 * `/` or `..`, huge lines, connections closed mid-reply, broken dot-stuffing,
 * garbage after a terminator) while a fetch daemon and `--once` runs fetch
 * from it. Afterwards no run may have ended as a crash (only documented exit
 * codes), and once a clean run has completed every message the server has
 * is in its Maildir exactly once and no file was written outside the
 * destinations and the state directory.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { poplarArgs, ROOT, runPoplar } from '../helpers/cli.js';
import { seqCounts, seqMessage } from '../fetch/helpers.js';
import { prng } from './harness.js';

/** Accounts the daemon fetches (user0..3) and accounts of the --once runs (user4, user5). */
const DAEMON_USERS = 4;
const ONCE_USERS = [4, 5];
const MESSAGES = 5;
const HOSTILE_MS = 20_000;
/** Exit codes a hostile run may end with (docs/fetch.md): never 70, never a signal. */
const DOCUMENTED = new Set([0, 69, 75, 76, 77]);

interface Stored {
  readonly uid: string;
  readonly text: string;
}

/** Message i of user u: its X-Seq is u*100+i; one body line starts with a dot (stuffed on the wire). */
const messageOf = (u: number, i: number): string => seqMessage(u * 100 + i, 300, `X-Dot: yes\r\n`).replace('\r\n\r\n', '\r\n\r\n.leading dot\r\n');

class MutatingPop3 {
  readonly boxes = new Map<string, Stored[]>();
  hostile = true;
  connections = 0;
  mutations = 0;
  /** Messages (`user:index`) once sent as other bytes than their own. */
  readonly altered = new Set<string>();
  /** Messages (`user:index`) once left out of a whole UIDL listing (or listed under another UIDL). */
  readonly vanished = new Set<string>();
  #server: net.Server;
  #seed: number;
  port = 0;

  constructor(seed: number) {
    this.#seed = seed;
    for (let u = 0; u < 6; u++) {
      this.boxes.set(`user${u}`, Array.from({ length: MESSAGES }, (_, i) => ({ uid: `uid-${u}-${i + 1}`, text: messageOf(u, i + 1) })));
    }
    this.#server = net.createServer((s) => this.#session(s));
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.#server.listen(0, '127.0.0.1', r));
    this.port = (this.#server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    await new Promise((r) => this.#server.close(r));
  }

  /** A listing line `n uid` left out: that message's UIDL was not on the server for this session. */
  #vanish(user: string, line: string): void {
    const uid = line.split(' ')[1];
    const i = this.boxes.get(user)?.findIndex((m) => m.uid === uid) ?? -1;
    if (i >= 0) this.vanished.add(`${user}:${i}`);
  }

  #session(s: net.Socket): void {
    const r = prng(this.#seed + this.connections++);
    const hostile = this.hostile;
    const int = (n: number): number => Math.floor(r() * n);
    s.on('error', () => undefined);
    let user = '';
    let box: Stored[] = [];
    const deleted = new Set<number>();
    let closed = false;
    const close = (): void => {
      closed = true;
      s.destroy();
    };
    const send = (data: string | Buffer): void => {
      if (!closed) s.write(data);
    };
    const status = (line: string): void => {
      if (!hostile || r() > 0.3) return send(`${line}\r\n`);
      this.mutations++;
      const b = Buffer.from(`${line}\r\n`);
      switch (int(8)) {
        case 0: {
          const at = int(b.length);
          b[at] = b[at]! ^ (1 << int(8));
          return send(b);
        }
        case 1:
          send(b.subarray(0, int(b.length)));
          return close();
        case 2:
          return send('-ERR [SYS/TEMP] try later\r\n');
        case 3:
          send(`+OK ${'x'.repeat(100_000 + int(200_000))}`);
          return close();
        case 4:
          return send(line.replace(/\d+/, '99999999999999999999999') + '\r\n');
        case 5:
          return send(`${line}\0\r\n`);
        case 6:
          return send(`${line}\r`);
        default:
          return close();
      }
    };
    const live = (): number[] => box.map((_, i) => i).filter((i) => !deleted.has(i));
    const listing = (entries: string[], uidl: boolean): void => {
      let lines = entries;
      if (hostile && r() < 0.4) {
        this.mutations++;
        lines = [...entries];
        const k = int(9);
        if (k === 0 && lines.length > 1) lines.push(lines[int(lines.length)]!); // a duplicate entry
        else if (k === 1) lines.push(uidl ? `${box.length + 3} uid-ghost` : `${box.length + 3} 100`); // a message that is not there
        else if (k === 2 && lines.length > 0) {
          const [gone] = lines.splice(int(lines.length), 1); // one left out
          if (uidl) this.#vanish(user, gone!);
        } else if (k === 3 && uidl && lines.length > 0) {
          const i = int(lines.length);
          this.#vanish(user, lines[i]!);
          lines[i] = `${lines[i]!.split(' ')[0]} ${['a/b', '..', '../../escape', '.', 'x'.repeat(71), 'a b', 'tab\tuid', '\x01'][int(8)]}`;
        } else if (k === 4 && uidl && lines.length > 1) {
          this.#vanish(user, lines[1]!);
          lines[1] = `${lines[1]!.split(' ')[0]} ${lines[0]!.split(' ')[1]}`; // two messages, one UIDL
        } else if (k === 5 && !uidl && lines.length > 0) lines[int(lines.length)] = `${int(3) + 1} ${['-1', '1e9', '99999999999999999999', '', 'abc'][int(5)]}`;
        else if (k === 6) {
          send(`+OK\r\n${lines.join('\r\n')}\r\n`); // no terminator
          return close();
        } else if (k === 7) {
          send(`+OK\r\n${lines.join('\n')}\n.\n`); // bare LF line ends
          return;
        } else {
          send(`+OK\r\n${lines.join('\r\n')}\r\n.\r\n-ERR garbage after the terminator\r\n`);
          return;
        }
      }
      send(`+OK\r\n${lines.map((l) => `${l}\r\n`).join('')}.\r\n`);
    };
    const retr = (i: number, top?: number): void => {
      let text = box[i]!.text;
      if (top !== undefined) text = text.slice(0, text.indexOf('\r\n\r\n') + 4);
      const stuffed = text.replace(/^\./gm, '..');
      const size = Buffer.byteLength(text);
      if (hostile && r() < 0.4) {
        this.mutations++;
        switch (int(6)) {
          case 0:
            send(`+OK ${size} octets\r\n${stuffed.slice(0, int(stuffed.length))}`); // cut mid-message
            return close();
          case 1:
            send(`+OK ${size} octets\r\n${stuffed}`); // no terminator
            return close();
          case 2:
            this.altered.add(`${user}:${i}`);
            return send(`+OK ${size} octets\r\n${text}.\r\n`); // not dot-stuffed: other bytes than the message's
          case 3:
            return send(`+OK ${Math.max(1, size >> 3)} octets\r\n${stuffed}.\r\n`); // a size far too small
          case 4:
            send(`+OK ${size} octets\r\n${stuffed.slice(0, 40)}${'y'.repeat(300_000)}`); // a huge line, then gone
            return close();
          default:
            return send(`+OK ${size} octets\r\n${stuffed}.\r\n.\r\n+OK extra\r\n`); // garbage after the terminator
        }
      }
      send(`+OK ${size} octets\r\n${stuffed}.\r\n`);
    };

    status('+OK mutating POP3 ready');
    let buf = '';
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (let nl = buf.indexOf('\n'); nl >= 0 && !closed; nl = buf.indexOf('\n')) {
        const line = buf.slice(0, nl).replace(/\r$/, '');
        buf = buf.slice(nl + 1);
        const [verb = '', a, b] = line.split(' ');
        const n = Number(a);
        const idx = Number.isInteger(n) && n >= 1 && n <= box.length && !deleted.has(n - 1) ? n - 1 : -1;
        switch (verb.toUpperCase()) {
          case 'CAPA':
            send('+OK\r\nUSER\r\nUIDL\r\nTOP\r\nPIPELINING\r\n.\r\n');
            break;
          case 'USER':
            user = a ?? '';
            status('+OK');
            break;
          case 'PASS':
            if (!this.boxes.has(user)) {
              send('-ERR [AUTH] no\r\n');
              break;
            }
            box = this.boxes.get(user)!;
            status('+OK logged in');
            break;
          case 'STAT':
            status(`+OK ${live().length} ${live().reduce((t, i) => t + Buffer.byteLength(box[i]!.text), 0)}`);
            break;
          case 'LIST':
          case 'UIDL': {
            const uidl = verb.toUpperCase() === 'UIDL';
            const entry = (i: number): string => `${i + 1} ${uidl ? box[i]!.uid : Buffer.byteLength(box[i]!.text)}`;
            if (a === undefined) listing(live().map(entry), uidl);
            else if (idx < 0) send('-ERR no such message\r\n');
            else status(`+OK ${entry(idx)}`);
            break;
          }
          case 'RETR':
          case 'TOP':
            if (idx < 0) send('-ERR no such message\r\n');
            else retr(idx, verb.toUpperCase() === 'TOP' ? Number(b) : undefined);
            break;
          case 'DELE':
            if (idx < 0) send('-ERR no such message\r\n');
            else {
              deleted.add(idx);
              status('+OK');
            }
            break;
          case 'RSET':
            deleted.clear();
            status('+OK');
            break;
          case 'NOOP':
            status('+OK');
            break;
          case 'QUIT': {
            // The UPDATE state happens whatever becomes of the reply.
            const keep = box.filter((_, i) => !deleted.has(i));
            if (user !== '' && this.boxes.has(user)) this.boxes.set(user, keep);
            status('+OK bye');
            s.end();
            closed = true;
            break;
          }
          default:
            send('-ERR unknown command\r\n');
        }
      }
    });
  }
}

function accountLines(u: number, port: number, keep: boolean): string[] {
  return [
    '[[account]]',
    `name = "a${u}"`,
    'host = "127.0.0.1"',
    `port = ${port}`,
    'tls = "none"',
    `user = "user${u}"`,
    'password = "pw"',
    'auth = "USER"',
    'timeout = 2',
    `keep = ${keep}`,
    `sink = { type = "maildir", path = "dest/a${u}" }`,
    '',
  ];
}

const lf = (s: string): string => s.replace(/\r\n/g, '\n');

/** The messages of a Maildir (new/ and cur/), line ends as LF. */
async function maildirTexts(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const sub of ['new', 'cur']) {
    for (const f of await fs.readdir(path.join(dir, sub)).catch(() => [])) out.push(lf(await fs.readFile(path.join(dir, sub, f), 'latin1')));
  }
  return out;
}

/** Every file under `dir`, relative to it. */
async function walk(dir: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await fs.readdir(path.join(dir, rel), { withFileTypes: true })) {
    const p = path.join(rel, e.name);
    if (e.isDirectory()) out.push(...(await walk(dir, p)));
    else out.push(p);
  }
  return out;
}

describe('poplar fetch against a server that mutates its replies', () => {
  let tmp: string;
  let srv: MutatingPop3;
  beforeAll(async () => {
    // The fetch runs inside `work`; everything else under tmp must stay untouched.
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetchfuzz-'));
    srv = new MutatingPop3(Number(process.env.POPLAR_FUZZ_SEED ?? 0xf00d) >>> 0);
    await srv.start();
  });
  afterAll(async () => {
    await srv?.stop();
    if (process.env.POPLAR_FUZZ_KEEP === '1') console.log(`kept ${tmp}`);
    else await fs.rm(tmp, { recursive: true, force: true });
  });

  it('never crashes, loses or duplicates no message, and writes only into its destinations', { timeout: 240_000 }, async () => {
    const work = path.join(tmp, 'work');
    await fs.mkdir(work);
    await fs.writeFile(path.join(tmp, 'outside-marker'), 'x');
    const daemonFile = path.join(work, 'daemon.toml');
    await fs.writeFile(
      daemonFile,
      ['[fetch]', 'state_dir = "state"', 'interval = 0.2', 'jitter = 0.1', '', ...Array.from({ length: DAEMON_USERS }, (_, u) => accountLines(u, srv.port, u % 2 === 0)).flat()].join('\n'),
    );
    const onceFile = path.join(work, 'once.toml');
    await fs.writeFile(onceFile, ['[fetch]', 'state_dir = "state-once"', '', ...ONCE_USERS.map((u) => accountLines(u, srv.port, u % 2 === 0)).flat()].join('\n'));

    const daemon = spawn(process.execPath, poplarArgs(['fetch', '--daemon', '--config', daemonFile]), { cwd: work, stdio: ['ignore', 'pipe', 'pipe'] });
    let daemonErr = '';
    daemon.stderr.on('data', (d: Buffer) => (daemonErr += d.toString()));
    daemon.stdout.resume();
    const daemonExit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => daemon.on('close', (code, signal) => r({ code, signal })));

    // Hostile --once runs meanwhile, each exit code checked.
    const onceCodes: (number | null)[] = [];
    const onceErr: string[] = [];
    const started = Date.now();
    while (Date.now() - started < HOSTILE_MS) {
      const r = await runPoplar(['fetch', '--once', '--config', onceFile, '--json'], { cwd: work, timeoutMs: 60_000 });
      onceCodes.push(r.signal === null ? r.code : -1);
      if (process.env.POPLAR_FUZZ_KEEP === '1') await fs.appendFile(path.join(tmp, 'once.log'), `--- exit ${r.code}\n${r.stdout}\n${r.stderr}\n`);
      if (!DOCUMENTED.has(r.code ?? -1)) onceErr.push(r.stderr.slice(-2000));
    }
    expect(onceErr).toEqual([]);
    expect(daemon.exitCode).toBeNull();
    expect(srv.mutations).toBeGreaterThan(10);

    // Clean from now on: a daemon cycle and a --once run must bring everything in, once.
    srv.hostile = false;
    const clean = await runPoplar(['fetch', '--once', '--config', onceFile, '--json'], { cwd: work, timeoutMs: 60_000 });
    expect({ code: clean.code, stderr: clean.code === 0 ? '' : clean.stderr.slice(-2000) }).toEqual({ code: 0, stderr: '' });
    const complete = async (): Promise<boolean> => {
      for (let u = 0; u < DAEMON_USERS; u++) if ((await seqCounts(path.join(work, 'dest', `a${u}`))).size < MESSAGES) return false;
      return true;
    };
    for (let i = 0; i < 300 && !(await complete()); i++) await sleep(100);
    // One more whole cycle after that, so a duplicate would have been made by now.
    const connections = srv.connections;
    for (let i = 0; i < 200 && srv.connections < connections + DAEMON_USERS + 1; i++) await sleep(50);
    await sleep(500);
    daemon.kill('SIGTERM');
    const exit = await daemonExit;
    expect(exit).toEqual({ code: 0, signal: null });
    expect(daemonErr).not.toMatch(/"kind":"internal"|TypeError|RangeError|ReferenceError|uncaught|unhandled/i);

    let altered = 0;
    for (let u = 0; u < 6; u++) {
      // Every message exactly once as the server has it. A server that once sent other bytes for a
      // message (not dot-stuffed, ended early by a bare "."), and then the true ones, may leave that
      // altered copy too: a client cannot tell it from another message.
      const exact = new Map<number, number>();
      for (const text of await maildirTexts(path.join(work, 'dest', `a${u}`))) {
        const i = Array.from({ length: MESSAGES }, (_, k) => k).find((k) => text === lf(messageOf(u, k + 1)));
        if (i === undefined) altered++;
        else exact.set(u * 100 + i + 1, (exact.get(u * 100 + i + 1) ?? 0) + 1);
      }
      // Once, as the server has it; a message the server once sent altered (a different message to
      // any client) or left out of a listing: at least once in some form, never lost.
      const seqs = await seqCounts(path.join(work, 'dest', `a${u}`));
      const got = new Map<number, number | string>();
      const want = new Map<number, number | string>();
      for (let i = 0; i < MESSAGES; i++) {
        const seq = u * 100 + i + 1;
        // docs/fetch.md: ledger entries the server no longer lists are forgotten, so a message a listing
        // left out and a later one lists again is new to the fetcher.
        if (srv.altered.has(`user${u}:${i}`) || srv.vanished.has(`user${u}:${i}`)) {
          got.set(seq, (seqs.get(seq) ?? 0) >= 1 ? 'present' : 'lost');
          want.set(seq, 'present');
        } else {
          got.set(seq, `${exact.get(seq) ?? 0} exact of ${seqs.get(seq) ?? 0}`);
          want.set(seq, '1 exact of 1');
        }
      }
      expect({ user: u, got }).toEqual({ user: u, got: want });
      // keep = false: what the server no longer has was delivered (checked above); all of it was deleted in the end.
      if (u % 2 === 1) expect(srv.boxes.get(`user${u}`)!.length).toBe(0);
      else expect(srv.boxes.get(`user${u}`)!.length).toBe(MESSAGES);
    }

    // Nothing outside: under tmp only the marker and the work dir; under work only configs, state and the Maildirs' own files.
    const files = await walk(tmp);
    const stray = files.filter(
      (f) =>
        f !== 'outside-marker' &&
        !/^work\/(daemon|once)\.toml$/.test(f) &&
        !/^work\/state(-once)?\/[^/]+$/.test(f) &&
        !/^work\/dest\/a\d\/(cur|new|tmp)\/[^/.][^/]*$/.test(f),
    );
    expect(stray).toEqual([]);
    console.log(`fetch fuzz: ${srv.connections} connections, ${srv.mutations} mutated replies, ${altered} altered copies (${srv.altered.size} messages sent altered, ${srv.vanished.size} left out of a listing), --once exit codes ${JSON.stringify(onceCodes)}`);
  });
});
