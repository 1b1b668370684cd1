/**
 * A live fuzzer against a real `poplar serve` process: more than 100 000
 * random and mutated command lines and SASL exchanges over real sockets,
 * pipelined many to a connection, in every state (before login, logged in,
 * mid-AUTH, after STLS). Afterwards the process must still serve a normal
 * session with the right message, hold no more descriptors than before, be
 * back within a memory bound, and never have logged a command or session
 * that failed with an unexpected error.
 */
import { promises as fs, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';
import { prng } from './harness.js';

const LINES = 100_000;
const USERS = 6;
/** Resident memory may end at most this far above where it started. */
const RSS_BOUND = 256 * 1024 * 1024;

const MECHS = ['PLAIN', 'LOGIN', 'CRAM-MD5', 'SCRAM-SHA-1', 'SCRAM-SHA-256', 'SCRAM-SHA-256-PLUS', 'EXTERNAL', 'XOAUTH2', 'OAUTHBEARER', 'GSSAPI', 'plain', ''];
// Logins here fail with a wrong password of a real user: a right one would wait for the maildrop another
// connection holds, and an unknown user costs a dummy argon2id check (answers to failures wait as long).
const AUTH_CMDS = ['USER user0', 'PASS wrong', 'PASS', 'APOP user0 0123456789abcdef0123456789abcdef', 'CAPA', 'NOOP', 'AUTH', 'USER', 'PASS', 'USER a b c'];
// No QUIT and no lone DELE without a later RSET: the maildrops must stay as they are.
const MAIL_CMDS = ['STAT', 'LIST', 'LIST 1', 'LIST 2', 'LIST 0', 'LIST -1', 'LIST 99999999999999999999', 'UIDL', 'UIDL 1', 'RETR 1', 'RETR 2', 'TOP 1 0', 'TOP 1 5', 'TOP 1 -1', 'TOP 1 1e9', 'TOP 1', 'DELE 1', 'DELE 1', 'RSET', 'NOOP', 'CAPA', 'USER x', 'LIST 1 2', 'RETR', 'UIDL 1 ', 'STAT x'];

class Gen {
  readonly r: () => number;
  constructor(seed: number) {
    this.r = prng(seed);
  }
  int(n: number): number {
    return Math.floor(this.r() * n);
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number, noLf = true): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) {
      let v = this.int(256);
      if (noLf && v === 10) v = 11;
      b[i] = v;
    }
    return b;
  }
  b64(n: number): string {
    return this.bytes(n, false).toString('base64');
  }
  mutate(s: string): Buffer {
    const b = Buffer.from(s);
    for (let k = 1 + this.int(3); k > 0 && b.length > 0; k--) {
      const i = this.int(b.length);
      switch (this.int(5)) {
        case 0:
          b[i] = b[i]! ^ (1 << this.int(8));
          break;
        case 1:
          b[i] = this.pick([0, 13, 32, 9, 0xff, 0x2e]);
          break;
        default:
          b[i] = 0x21 + this.int(94);
      }
      if (b[i] === 10) b[i] = 11;
    }
    const t = this.int(10);
    if (t === 0) return b.subarray(0, this.int(b.length + 1));
    if (t === 1) return Buffer.concat([b, Buffer.from(` ${'9'.repeat(1 + this.int(40))}`)]);
    return b;
  }
  /** One SASL exchange: the AUTH line, then zero to three client responses (garbage, "*", "="). */
  auth(): string[] {
    const m = this.pick(MECHS);
    const out = [`AUTH ${m}${this.int(2) ? ` ${this.int(8) === 0 ? '=' : this.b64(this.int(120))}` : ''}`];
    for (let n = this.int(4); n > 0; n--) out.push(this.pick(['*', '=', '', this.b64(this.int(300)), 'not base64!', `${this.b64(40)}==`, 'biwsbj11c2VyMCxyPWFiYw==']));
    return out;
  }
  eol(): string {
    return this.pick(['\r\n', '\r\n', '\r\n', '\n', '\r\r\n']);
  }
  /** Command lines in a given state; each element is one line to send (with its line end). */
  lines(loggedIn: boolean): Buffer[] {
    const k = this.int(100);
    if (k < 30) return [Buffer.from(this.pick(loggedIn ? MAIL_CMDS : AUTH_CMDS) + this.eol())];
    if (k < 55) return [Buffer.concat([this.mutate(this.pick(loggedIn ? MAIL_CMDS : AUTH_CMDS)), Buffer.from(this.eol())])];
    if (k < 70 && !loggedIn) return this.auth().map((l) => Buffer.from(l + '\r\n'));
    if (k < 80) return [Buffer.concat([this.bytes(1 + this.int(200)), Buffer.from('\r\n')])];
    if (k < 84) return [Buffer.from(`${this.pick(['USER', 'PASS', 'LIST', 'NOOP', 'AUTH PLAIN'])} ${'A'.repeat(4000 + this.int(20_000))}\r\n`)];
    if (k < 88) return [Buffer.from(`${this.pick(['NO\0OP', 'STAT\r', 'LI\rST', '\0', '\r', '\r\r', ' ', 'CAPA\0\r'])}\r\n`)];
    if (k < 92) return [Buffer.from(this.pick(['PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n', 'PROXY UNKNOWN\r\n', 'PROXY TCP6 ::1 ::1 99999 1\r\n']))];
    if (k < 94) return [Buffer.concat([Buffer.from('\r\n\r\n\0\r\n\0\r\nQUIT\n', 'latin1').subarray(0, 12), Buffer.from('\r\n')])];
    return [Buffer.from(`${this.pick(['CAPA', 'NOOP', 'STAT'])}\r\n`)];
  }
}

interface Outcome {
  sent: number;
  /** The server answered the final QUIT (every line before it was read and answered). */
  completed: boolean;
  output: string;
}

function connect(port: number, useTls: boolean): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = useTls ? tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }) : net.connect({ host: '127.0.0.1', port });
    s.once(useTls ? 'secureConnect' : 'connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** One pipelined connection: a burst of lines in one state, then RSET and QUIT, read until the server closes. */
async function pipelined(port: number, tlsPort: number, g: Gen, user: string, count: number): Promise<Outcome> {
  const useTls = g.int(6) === 0;
  const sock = await connect(useTls ? tlsPort : port, useTls);
  sock.on('error', () => undefined);
  let output = '';
  let outLen = 0;
  sock.on('data', (d: Buffer) => {
    // Keep the start and the end of what came back (RETR replies repeat).
    outLen += d.length;
    output = output.length < 4096 ? output + d.toString('latin1') : output.slice(0, 2048) + (output.slice(2048) + d.toString('latin1')).slice(-2048);
  });
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  const loggedIn = g.int(2) === 0;
  const parts: Buffer[] = [];
  let sent = 0;
  if (loggedIn) {
    parts.push(Buffer.from(`USER ${user}\r\nPASS secret\r\n`));
    sent += 2;
  }
  while (sent < count) {
    for (const l of g.lines(loggedIn)) {
      parts.push(l);
      sent++;
    }
  }
  // A line end (for a line left open), "*" (ends an AUTH exchange still waiting for a response:
  // "RSET" and "QUIT" are valid base64 and would be taken as one), then RSET and QUIT.
  parts.push(Buffer.from('\r\n*\r\nRSET\r\nQUIT\r\n'));
  sent += 2;
  // Written in pieces, so the server meets both whole bursts and lines split across reads.
  const all = Buffer.concat(parts);
  for (let at = 0; at < all.length && !sock.destroyed; ) {
    const n = 1 + g.int(64 * 1024);
    if (!sock.write(all.subarray(at, at + n))) await new Promise((r) => sock.once('drain', r));
    at += n;
  }
  const t0 = Date.now();
  const byServer = await Promise.race([closed.then(() => true), sleep(90_000).then(() => false)]);
  sock.destroy();
  const last = output.trimEnd().split('\n').at(-1) ?? '';
  const how = `${useTls ? 'tls' : 'plain'} ${loggedIn ? 'logged in' : 'login state'}, ${sent} lines, ${byServer ? 'closed by the server' : 'no answer'} after ${Date.now() - t0} ms: `;
  return { sent, completed: last.startsWith('+OK') && outLen > 0, output: how + output.slice(-300) };
}

/** The ways a connection ends other than QUIT: STLS then garbage, cut mid-line, a handshake abandoned. */
async function rude(port: number, tlsPort: number, g: Gen): Promise<number> {
  const kind = g.int(4);
  const sock = await connect(kind === 3 ? tlsPort : port, kind === 3).catch(() => undefined);
  if (sock === undefined) return 0;
  sock.on('error', () => undefined);
  sock.resume();
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  let sent = 0;
  if (kind === 0) {
    sock.write(`CAPA\r\nSTLS\r\n`);
    sock.write(g.bytes(1 + g.int(2000), false));
    sent = 3;
  } else if (kind === 1) {
    sock.write(`USER user0\r\nPASS sec`);
    sent = 1;
    sock.destroy();
  } else if (kind === 2) {
    sock.write('STLS\r\n');
    await sleep(5);
    const t = tls.connect({ socket: sock, rejectUnauthorized: false });
    t.on('error', () => undefined);
    await sleep(g.int(20));
    t.destroy();
    sent = 1;
  } else {
    sock.write(`AUTH PLAIN\r\n${g.b64(50)}\r\n${g.bytes(100).toString('latin1')}`);
    sent = 2;
    sock.end();
  }
  await Promise.race([closed, sleep(5000)]);
  sock.destroy();
  return sent;
}

function procStatus(pid: number, key: string): number {
  const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]) * 1024;
}
const fdCount = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;
function fdTargets(pid: number): string[] {
  const out: string[] = [];
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      out.push(`${fd} ${readlinkSync(`/proc/${pid}/fd/${fd}`)}`);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

describe('poplar serve under a live fuzzer', () => {
  let dir: string;
  let srv: ServeProcess;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-livefuzz-'));
    const users: string[] = [];
    for (let u = 0; u < USERS; u++) {
      users.push(`user${u}:{PLAIN}secret::::::\n`);
      const md = path.join(dir, 'mail', `user${u}`);
      for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(md, sub), { recursive: true });
      await fs.writeFile(path.join(md, 'new', `1700000000.M1P1.fuzz`), `Subject: fuzz-check-${u}\r\n\r\nline one\r\n.dotted\r\n`);
    }
    await fs.writeFile(path.join(dir, 'users'), users.join(''), { mode: 0o600 });
    await fs.writeFile(
      path.join(dir, 'poplar.toml'),
      [
        'data_dir = "data"',
        'log_level = "info"',
        'log_format = "json"',
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = ["127.0.0.1:0"]',
        'max_bad_commands = 1000000',
        'max_connections_per_ip = 10000',
        'auth_failure_delay = 0',
        'auth_failure_max_delay = 0',
        'auth_block_after = 0',
        // Shorter than the default, so abandoned TLS handshakes are given up sooner and the descriptors counted.
        'login_timeout = 20',
        'login_deadline = 0',
        '[store]',
        'maildir_root = "mail"',
        'fsync = false',
        '[auth]',
        'users = "users"',
        '',
      ].join('\n'),
    );
    srv = await startServe(['--config', 'poplar.toml'], { cwd: dir });
  });
  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it(`takes ${LINES} hostile lines and still serves the right message, with its descriptors and memory back`, { timeout: 180_000 }, async () => {
    const pid = srv.child.pid!;
    // Warm up what opens descriptors once (TLS, a maildrop, the users file).
    for (let u = 0; u < USERS; u++) {
      const warm = await Wire.connect(u % 2 === 0 ? srv.tlsPort : srv.plainPort, { tls: u % 2 === 0 });
      await warm.line();
      await warm.login(`user${u}`, 'secret');
      await warm.cmd('QUIT');
      await warm.closed();
    }
    await sleep(300);
    const fd0 = fdCount(pid);
    const fds0 = fdTargets(pid);
    const rss0 = procStatus(pid, 'VmRSS');

    const seed = Number(process.env.POPLAR_FUZZ_SEED ?? 0x1ee7) >>> 0;
    let sent = 0;
    let completed = 0;
    let connections = 0;
    const unanswered: string[] = [];
    const worker = async (w: number): Promise<void> => {
      const g = new Gen(seed + w * 7919);
      while (sent < LINES) {
        connections++;
        if (g.int(8) === 0) {
          sent += await rude(srv.plainPort, srv.tlsPort, g);
          continue;
        }
        const o = await pipelined(srv.plainPort, srv.tlsPort, g, `user${w}`, 200 + g.int(3000));
        if (o.completed) {
          sent += o.sent;
          completed++;
        } else if (unanswered.length < 3) unanswered.push(o.output.slice(0, 500));
      }
    };
    await Promise.all(Array.from({ length: USERS }, (_, w) => worker(w)));
    expect(sent).toBeGreaterThanOrEqual(LINES);
    // Pipelined connections end with QUIT: the server must have read and answered every one.
    expect(unanswered).toEqual([]);
    expect(completed).toBeGreaterThan(20);

    // Every connection is gone: descriptors come back to where they were.
    let fd = fdCount(pid);
    // A TLS handshake a client abandoned is given up after login_timeout (20 s) at the latest.
    for (let i = 0; i < 250 && fd > fd0; i++) {
      await sleep(100);
      fd = fdCount(pid);
    }
    expect({ fd, more: fd > fd0 ? fdTargets(pid).filter((t) => !fds0.includes(t)) : [] }).toEqual({ fd: expect.any(Number), more: [] });
    expect(fd).toBeLessThanOrEqual(fd0);
    const rss = procStatus(pid, 'VmRSS');
    expect(rss - rss0).toBeLessThan(RSS_BOUND);

    // No command and no session ended in an unexpected error.
    const failures = srv.stderr().split('\n').filter((l) => /"(command|session) failed"|uncaught|unhandled/i.test(l));
    expect(failures.slice(0, 3)).toEqual([]);
    expect(srv.child.exitCode).toBeNull();

    // A normal session still works, and every maildrop still holds its message.
    for (let u = 0; u < USERS; u++) {
      const w = await Wire.connect(srv.plainPort);
      expect(await w.line()).toMatch(/^\+OK/);
      await w.login(`user${u}`, 'secret');
      expect(await w.cmd('STAT')).toMatch(/^\+OK 1 \d+$/);
      const m = await w.cmdMulti('RETR 1');
      expect(m.body.toString()).toBe(`Subject: fuzz-check-${u}\r\n\r\nline one\r\n..dotted\r\n.\r\n`);
      expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
      await w.closed();
    }
    console.log(`live fuzz: ${sent} lines over ${connections} connections (${completed} pipelined to QUIT); fds ${fd0} -> ${fd}; RSS ${Math.round(rss0 / 1048576)} -> ${Math.round(rss / 1048576)} MB`);
  });
});
