/**
 * `npm run soak -- --minutes N`: a real `poplar serve --workers 2` under a
 * steady mixed load for N minutes, then an account of every message.
 *
 * Load: concurrent clients doing random sessions (right logins by USER/PASS
 * and AUTH PLAIN, on the plain port with and without STLS and on the TLS
 * port; STAT/LIST/UIDL/RETR/TOP; DELE with QUIT, DELE then a dropped
 * connection, DELE then RSET; connections cut in the middle of a RETR;
 * pipelined commands), failing logins from other loopback addresses,
 * deliveries over LMTP into the same maildrops, and `poplar fetch --delete`
 * pulling some of the maildrops into Maildirs of its own.
 *
 * At the end every message delivered with a 250 is accounted for: removed by
 * a session whose QUIT got +OK, fetched into a fetcher's Maildir, or still on
 * the server; exactly once, byte-exact. No maildrop may be left locked: each
 * must open within 2 s of the load stopping.
 * Resident memory, open descriptors and the time a logged-in NOOP takes
 * (which includes the worker's event-loop delay) are sampled every second
 * and reported per minute; descriptors must come back to where they started.
 *
 * Exit status 0 when nothing was lost, duplicated, resurrected, corrupted or
 * left locked and the resources came back; 1 otherwise. The summary goes to
 * soak-results/summary.json (and `--out DIR`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createWriteStream, promises as fs, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { replaceSection } from '../reliability/doc.js';
import { poplarArgs, ROOT } from '../../test/helpers/cli.js';
import { lmtpDeliver } from './lmtp-client.js';
import { unstuff, Wire } from '../../test/helpers/wire.js';

const { values: flags } = parseArgs({
  options: {
    minutes: { type: 'string', default: '2' },
    clients: { type: 'string', default: '16' },
    users: { type: 'string', default: '40' },
    workers: { type: 'string', default: '2' },
    out: { type: 'string', default: path.join(ROOT, 'soak-results') },
    keep: { type: 'boolean', default: false },
    'no-docs': { type: 'boolean', default: false },
  },
});
const MINUTES = Number(flags.minutes);
const CLIENTS = Number(flags.clients);
const USERS = Number(flags.users);
const WORKERS = Number(flags.workers);
if (!(MINUTES > 0) || !(CLIENTS > 0) || !(USERS >= 4) || !(WORKERS >= 1)) {
  process.stderr.write('usage: npm run soak -- [--minutes N] [--clients N] [--users N>=4] [--workers N] [--out DIR] [--keep] [--no-docs]\n');
  process.exit(64);
}

// ---------------------------------------------------------------- messages

const users = Array.from({ length: USERS }, (_, i) => `u${String(i).padStart(2, '0')}`);
/** Maildrops that `poplar fetch --delete` pulls: sessions only read them. */
const fetched = new Set(users.slice(0, 2));
const password = (u: string): string => `pw-${u}-soak`;
const SIZES = [300, 1_500, 4_000, 9_000, 30_000, 120_000];

function bodyOf(id: number): string {
  const size = SIZES[id % SIZES.length]!;
  const lines: string[] = [];
  let n = 0;
  for (let i = 0; n < size; i++) {
    // Every seventh line starts with a dot: the dot-stuffing path on every hop.
    const l = `${i % 7 === 0 ? '.' : ''}line ${i} of message ${id} ${'x'.repeat((id * 31 + i) % 60)}`;
    lines.push(l);
    n += l.length + 2;
  }
  return lines.join('\r\n') + '\r\n';
}
const bodyHashes = new Map<number, string>();
function bodyHash(id: number): string {
  let h = bodyHashes.get(id);
  if (h === undefined) bodyHashes.set(id, (h = createHash('sha256').update(bodyOf(id), 'latin1').digest('hex')));
  return h;
}
function messageOf(id: number): string {
  return `Message-ID: <soak-${id}@soak.test>\r\nX-Soak-Id: ${id}\r\nFrom: soak@soak.test\r\nSubject: soak ${id}\r\n\r\n${bodyOf(id)}`;
}

/** The message's soak id, after checking its body is byte-exact; null for a corrupt message. */
function identify(raw: Buffer): number | null {
  const text = raw.toString('latin1');
  const end = text.indexOf('\r\n\r\n');
  if (end === -1) return null;
  const m = /^X-Soak-Id: (\d+)\r$/m.exec(text.slice(0, end + 2));
  if (!m) return null;
  const id = Number(m[1]);
  return createHash('sha256').update(text.slice(end + 4), 'latin1').digest('hex') === bodyHash(id) ? id : null;
}

// ---------------------------------------------------------------- accounting

type Key = string; // `${user}/${id}`
const delivered = new Map<Key, 'yes' | 'unknown'>();
const removedByQuit = new Map<Key, number>();
/** DELE marks whose QUIT did not get an answer: removed or not, never twice. */
const maybeRemoved = new Set<Key>();
const problems: string[] = [];
function problem(s: string): void {
  if (problems.length < 200) problems.push(s);
}

interface MinuteStats {
  sessions: number;
  logins: number;
  inUse: number;
  badLogins: number;
  retrs: number;
  retrBytes: number;
  deleted: number;
  deliveries: number;
  fetchRuns: number;
  fetchRefused: number;
  errors: number;
  noopMs: number[];
  /** The workers' event-loop delay (99th percentile, from the admin listener's /metrics). */
  loopMs: number[];
  rssMb: number[];
  fds: number[];
}
const minutes: MinuteStats[] = [];
const started = Date.now();
function now(): MinuteStats {
  const i = Math.floor((Date.now() - started) / 60_000);
  while (minutes.length <= i)
    minutes.push({ sessions: 0, logins: 0, inUse: 0, badLogins: 0, retrs: 0, retrBytes: 0, deleted: 0, deliveries: 0, fetchRuns: 0, fetchRefused: 0, errors: 0, noopMs: [], loopMs: [], rssMb: [], fds: [] });
  return minutes[i]!;
}

const rand = (n: number): number => Math.floor(Math.random() * n);
const pick = <T>(a: readonly T[]): T => a[rand(a.length)]!;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- the server

const dir = await fs.mkdtemp(path.join(process.env.SOAK_DIR ?? '/var/tmp', 'poplar-soak-'));
const mailRoot = path.join(dir, 'mail');
await fs.writeFile(path.join(dir, 'users'), [...users, 'probe'].map((u) => `${u}:{PLAIN}${password(u)}\n`).join(''), { mode: 0o600 });
await ensureSelfSignedCertificate(path.join(dir, 'cert.pem'), path.join(dir, 'key.pem'), 'localhost');
await fs.writeFile(
  path.join(dir, 'poplar.toml'),
  [
    `data_dir = ${JSON.stringify(dir)}`,
    'log_format = "json"',
    'log_level = "warn"',
    '[server]',
    'listen = ["127.0.0.1:0"]',
    'listen_tls = ["127.0.0.1:0"]',
    'auth_failure_delay = 1',
    'auth_failure_max_delay = 4',
    '[tls]',
    `cert = ${JSON.stringify(path.join(dir, 'cert.pem'))}`,
    `key = ${JSON.stringify(path.join(dir, 'key.pem'))}`,
    '[auth]',
    `users = ${JSON.stringify(path.join(dir, 'users'))}`,
    '[store]',
    `maildir_root = ${JSON.stringify(mailRoot)}`,
    '[lmtp]',
    'listen = ["127.0.0.1:0"]',
    '[admin]',
    'listen = "127.0.0.1:0"',
    '',
  ].join('\n'),
);

const serverLog = path.join(dir, 'server.log');
const logStream = createWriteStream(serverLog);
const server: ChildProcess = spawn(process.execPath, poplarArgs(['serve', '--config', path.join(dir, 'poplar.toml'), '--workers', String(WORKERS), '--log-level', 'info', ...(process.getuid?.() === 0 ? ['--allow-root'] : [])]), {
  cwd: dir,
  stdio: ['ignore', 'ignore', 'pipe'],
});
let serverExit: string | null = null;
server.on('exit', (code, signal) => (serverExit = `code ${code} signal ${signal}`));
const ports = await new Promise<{ plain: number; tls: number; lmtp: number; admin: number }>((resolve, reject) => {
  const found = { plain: 0, tls: 0, lmtp: 0, admin: 0 };
  let pending = '';
  const t = setTimeout(() => reject(new Error(`server did not start; see ${serverLog}`)), 60_000);
  server.stderr!.on('data', (d: Buffer) => {
    logStream.write(d);
    pending += d.toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) {
      const l = /"lmtp":"127\.0\.0\.1:(\d+)"/.exec(line);
      if (l && line.includes('lmtp listening')) found.lmtp = Number(l[1]);
      const a = /"admin":"127\.0\.0\.1:(\d+)"/.exec(line);
      if (a) found.admin = Number(a[1]);
      if (line.includes('"listening"')) {
        try {
          const j = JSON.parse(line) as { port: number; tls: string };
          if (j.tls === 'stls') found.plain = j.port;
          if (j.tls === 'implicit') found.tls = j.port;
        } catch {
          // not JSON
        }
      }
    }
    if (found.plain && found.tls && found.lmtp && found.admin) {
      clearTimeout(t);
      resolve(found);
    }
  });
  server.on('exit', () => reject(new Error(`server exited at start; see ${serverLog}`)));
});

/** The primary and its workers. */
function serverPids(): number[] {
  const primary = server.pid!;
  const pids = [primary];
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'latin1');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === primary) pids.push(Number(e));
    } catch {
      // gone
    }
  }
  return pids;
}
function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}
function fdCount(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).filter((f) => {
      try {
        readlinkSync(`/proc/${pid}/fd/${f}`);
        return true;
      } catch {
        return false;
      }
    }).length;
  } catch {
    return 0;
  }
}
const resources = (): { pids: number[]; rss: number; fds: number } => {
  const pids = serverPids();
  return { pids, rss: pids.reduce((s, p) => s + rssMb(p), 0), fds: pids.reduce((s, p) => s + fdCount(p), 0) };
};

// ---------------------------------------------------------------- sessions

let stopping = false;

/** Logs in; returns false for [IN-USE] (another session holds the maildrop). */
async function login(w: Wire, user: string): Promise<boolean> {
  const greeting = await w.line();
  if (!greeting.startsWith('+OK')) throw new Error(`greeting: ${greeting}`);
  let reply: string;
  if (Math.random() < 0.5) {
    const u = await w.cmd(`USER ${user}`);
    if (!u.startsWith('+OK')) throw new Error(`USER: ${u}`);
    reply = await w.cmd(`PASS ${password(user)}`);
  } else {
    reply = await w.cmd(`AUTH PLAIN ${Buffer.from(`\0${user}\0${password(user)}`).toString('base64')}`);
  }
  if (reply.startsWith('+OK')) {
    now().logins++;
    return true;
  }
  if (reply.includes('[IN-USE]')) {
    now().inUse++;
    w.send('QUIT');
    await w.closed();
    return false;
  }
  throw new Error(`login of ${user}: ${reply}`);
}

async function open(user: string): Promise<Wire | null> {
  const how = rand(3);
  const w = await Wire.connect(how === 2 ? ports.tls : ports.plain, { tls: how === 2 });
  if (how === 1) {
    const greeting = await w.line();
    if (!greeting.startsWith('+OK')) throw new Error(`greeting: ${greeting}`);
    const r = await w.cmd('STLS');
    if (!r.startsWith('+OK')) throw new Error(`STLS: ${r}`);
    await w.upgrade();
    // After STLS there is no new greeting: log in at once.
    const u = await w.cmd(`USER ${user}`);
    if (!u.startsWith('+OK')) throw new Error(`USER after STLS: ${u}`);
    const p = await w.cmd(`PASS ${password(user)}`);
    if (p.includes('[IN-USE]')) {
      now().inUse++;
      w.close();
      return null;
    }
    if (!p.startsWith('+OK')) throw new Error(`PASS after STLS: ${p}`);
    now().logins++;
    return w;
  }
  if (!(await login(w, user))) return null;
  return w;
}

async function uidl(w: Wire): Promise<{ n: number; uidl: string }[]> {
  w.send('UIDL');
  const r = await w.multiLines();
  if (!r.status.startsWith('+OK')) throw new Error(`UIDL: ${r.status}`);
  return r.lines.map((l) => {
    const [n, u] = l.split(' ');
    return { n: Number(n), uidl: u! };
  });
}

async function retr(w: Wire, user: string, n: number): Promise<number> {
  w.send(`RETR ${n}`);
  const r = await w.multi();
  if (!r.status.startsWith('+OK')) throw new Error(`RETR ${n}: ${r.status}`);
  const id = identify(unstuff(r.body));
  if (id === null) throw new Error(`RETR ${n} of ${user}: a message that is not byte-exact`);
  const st = now();
  st.retrs++;
  st.retrBytes += r.body.length;
  return id;
}

function sample<T>(a: readonly T[], k: number): T[] {
  const c = [...a];
  const out: T[] = [];
  while (out.length < k && c.length > 0) out.push(c.splice(rand(c.length), 1)[0]!);
  return out;
}

type Action = (user: string) => Promise<void>;

const read: Action = async (user) => {
  const w = await open(user);
  if (!w) return;
  if (!(await w.cmd('STAT')).startsWith('+OK')) throw new Error('STAT');
  w.send('LIST');
  const list = await w.multiLines();
  const ids = await uidl(w);
  if (list.lines.length !== ids.length) throw new Error(`LIST has ${list.lines.length} lines, UIDL ${ids.length}`);
  for (const m of sample(ids, 3)) await retr(w, user, m.n);
  if (ids.length > 0) {
    w.send(`TOP ${pick(ids).n} 0`);
    const top = await w.multi();
    if (!top.status.startsWith('+OK') || !/^X-Soak-Id: \d+\r$/m.test(top.body.toString('latin1'))) throw new Error('TOP');
  }
  if (!(await w.cmd('QUIT')).startsWith('+OK')) throw new Error('QUIT');
  w.close();
};

/** DELE, then QUIT (`end` = 'quit'), a cut connection ('drop') or RSET and QUIT ('rset'). */
function deleting(end: 'quit' | 'drop' | 'rset'): Action {
  return async (user) => {
    const w = await open(user);
    if (!w) return;
    const ids = await uidl(w);
    const keys: Key[] = [];
    for (const m of sample(ids, 1 + rand(5))) {
      const id = await retr(w, user, m.n);
      const r = await w.cmd(`DELE ${m.n}`);
      if (!r.startsWith('+OK')) throw new Error(`DELE: ${r}`);
      keys.push(`${user}/${id}`);
    }
    if (end === 'drop') {
      w.close();
      return;
    }
    if (end === 'rset') {
      if (!(await w.cmd('RSET')).startsWith('+OK')) throw new Error('RSET');
    }
    w.send('QUIT');
    let q: string;
    try {
      q = await w.line();
    } catch (e) {
      if (end === 'quit') for (const k of keys) maybeRemoved.add(k);
      throw e;
    }
    w.close();
    if (!q.startsWith('+OK')) {
      if (end === 'quit') for (const k of keys) maybeRemoved.add(k);
      throw new Error(`QUIT: ${q}`);
    }
    if (end === 'quit') {
      for (const k of keys) removedByQuit.set(k, (removedByQuit.get(k) ?? 0) + 1);
      now().deleted += keys.length;
    }
  };
}

const cutRetr: Action = async (user) => {
  const w = await open(user);
  if (!w) return;
  const ids = await uidl(w);
  if (ids.length === 0) return w.close();
  w.send(`RETR ${pick(ids).n}`);
  // Cut at once or a moment later: before, during or after the first bytes of the message.
  await sleep(rand(20));
  w.close();
};

const pipelined: Action = async (user) => {
  const w = await open(user);
  if (!w) return;
  w.send('STAT\r\nLIST\r\nUIDL\r\nNOOP\r\nLIST 999999\r\nQUIT');
  if (!(await w.line()).startsWith('+OK')) throw new Error('pipelined STAT');
  if (!(await w.multi()).status.startsWith('+OK')) throw new Error('pipelined LIST');
  if (!(await w.multi()).status.startsWith('+OK')) throw new Error('pipelined UIDL');
  if (!(await w.line()).startsWith('+OK')) throw new Error('pipelined NOOP');
  if (!(await w.line()).startsWith('-ERR')) throw new Error('pipelined LIST of no message');
  if (!(await w.line()).startsWith('+OK')) throw new Error('pipelined QUIT');
  w.close();
};

const readOnly: [Action, number][] = [
  [read, 40],
  [cutRetr, 5],
  [pipelined, 10],
  [deleting('rset'), 5],
  [deleting('drop'), 5],
];
const writing: [Action, number][] = [...readOnly, [deleting('quit'), 35]];
function choose(actions: [Action, number][]): Action {
  let r = rand(actions.reduce((s, [, w]) => s + w, 0));
  for (const [a, w] of actions) if ((r -= w) < 0) return a;
  return actions[0]![0];
}

async function clientLoop(): Promise<void> {
  while (!stopping) {
    const user = pick(users);
    const action = choose(fetched.has(user) ? readOnly : writing);
    now().sessions++;
    try {
      await action(user);
    } catch (e) {
      now().errors++;
      problem(`session of ${user}: ${(e as Error).message}`);
    }
  }
}

/** Wrong passwords and unknown users from addresses of their own (127.0.0.2-254). */
async function attackerLoop(): Promise<void> {
  while (!stopping) {
    now().sessions++;
    try {
      const w = await Wire.connect(ports.plain, { localAddress: `127.0.0.${2 + rand(253)}` });
      await w.line();
      const user = Math.random() < 0.5 ? pick(users) : `nobody${rand(1000)}`;
      await w.cmd(`USER ${user}`);
      const r = await w.cmd('PASS wrong', 90_000);
      if (r.startsWith('+OK')) problem(`a wrong password logged in as ${user}`);
      else now().badLogins++;
      w.close();
    } catch (e) {
      now().errors++;
      problem(`attacker: ${(e as Error).message}`);
    }
  }
}

let nextId = 1;
async function deliveryLoop(): Promise<void> {
  while (!stopping) {
    const id = nextId++;
    const rcpts = sample(users, 1 + (Math.random() < 0.3 ? 1 + rand(2) : 0));
    try {
      const outcomes = await lmtpDeliver(ports.lmtp, rcpts, messageOf(id));
      for (const [i, o] of outcomes.entries()) {
        if (o === 'refused') problem(`LMTP refused ${rcpts[i]}/${id}`);
        else {
          delivered.set(`${rcpts[i]}/${id}`, o === 'delivered' ? 'yes' : 'unknown');
          if (o === 'delivered') now().deliveries++;
        }
      }
    } catch (e) {
      now().errors++;
      problem(`LMTP: ${(e as Error).message}`);
    }
    await sleep(20 + rand(60));
  }
}

/** `poplar fetch --delete` of one maildrop into its own Maildir; the exit code. */
function fetchOnce(user: string): Promise<number | null> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      poplarArgs([
        'fetch', '--host', '127.0.0.1', '--port', String(ports.plain), '--tls', 'none', '--user', user,
        '--password-env', 'SOAK_PASSWORD', '--delete', '--maildir', path.join(dir, 'fetched', user),
        '--state', path.join(dir, 'fetched', `${user}.ledger`), '--quiet',
      ]),
      { env: { ...process.env, SOAK_PASSWORD: password(user) }, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    child.on('exit', (code, signal) => {
      if (signal !== null) problem(`poplar fetch of ${user} died of ${signal}: ${err}`);
      else if (code !== 0 && !/IN-USE/i.test(err)) problem(`poplar fetch of ${user} exited ${code}: ${err.trim()}`);
      resolve(code);
    });
  });
}

async function fetchLoop(): Promise<void> {
  let i = 0;
  while (!stopping) {
    const user = [...fetched][i++ % fetched.size]!;
    const code = await fetchOnce(user);
    now().fetchRuns++;
    if (code !== 0) now().fetchRefused++;
    await sleep(3_000 + rand(3_000));
  }
}

/** The largest event-loop delay p99 the workers report (prom-client's default metrics), in ms. */
async function eventLoopDelayMs(): Promise<number | null> {
  try {
    const text = await (await fetch(`http://127.0.0.1:${ports.admin}/metrics`, { signal: AbortSignal.timeout(5_000) })).text();
    const values = [...text.matchAll(/^nodejs_eventloop_lag_p99_seconds(?:\{[^}]*\})? ([0-9.e+-]+)$/gm)].map((m) => Number(m[1]) * 1000);
    return values.length === 0 ? null : Math.max(...values);
  } catch {
    return null;
  }
}

/** A logged-in session that sends NOOP every second: the time it takes, and the server's memory and descriptors. */
async function probeLoop(): Promise<void> {
  const w = await Wire.connect(ports.plain);
  await login(w, 'probe');
  while (!stopping) {
    const t = performance.now();
    try {
      const r = await w.cmd('NOOP', 10_000);
      if (!r.startsWith('+OK')) throw new Error(r);
      now().noopMs.push(performance.now() - t);
    } catch (e) {
      now().errors++;
      problem(`probe NOOP: ${(e as Error).message}`);
      return;
    }
    const loop = await eventLoopDelayMs();
    if (loop !== null) now().loopMs.push(loop);
    const res = resources();
    now().rssMb.push(res.rss);
    now().fds.push(res.fds);
    await sleep(1_000);
  }
  await w.cmd('QUIT');
  w.close();
}

// ---------------------------------------------------------------- run

await sleep(1_000);
const loadAtStart = os.loadavg();
const before = resources();
process.stderr.write(`soak: ${MINUTES} min, ${CLIENTS} clients, ${users.length} users, ${WORKERS} workers, in ${dir}\n`);
const loops = [
  probeLoop(),
  ...Array.from({ length: CLIENTS }, clientLoop),
  attackerLoop(),
  attackerLoop(),
  deliveryLoop(),
  deliveryLoop(),
  fetchLoop(),
];
const ticker = setInterval(() => {
  const m = minutes[minutes.length - 1];
  if (m) process.stderr.write(`soak: minute ${minutes.length}: ${m.sessions} sessions, ${m.logins} logins, ${m.inUse} [IN-USE], ${m.deliveries} deliveries, ${m.retrs} RETRs, ${m.errors} errors\n`);
}, 30_000);
await sleep(MINUTES * 60_000);
stopping = true;
await Promise.all(loops);
clearInterval(ticker);

// Every fetched maildrop once more, until a run gets the maildrop.
for (const u of fetched) {
  for (let i = 0; i < 20 && (await fetchOnce(u)) !== 0; i++) await sleep(500);
}

// What is left on the server: every maildrop read to the end (without deleting).
const present = new Map<Key, number>();
const phantoms: string[] = [];
for (const u of users) {
  let w: Wire | null = null;
  for (let i = 0; i < 5 && w === null; i++) {
    const c = await Wire.connect(ports.plain);
    if (await login(c, u).catch(() => false)) w = c;
    else await sleep(500);
  }
  if (w === null) {
    problem(`${u}: still locked ([IN-USE]) 2 s after the load stopped`);
    continue;
  }
  for (const m of await uidl(w)) {
    const id = await retr(w, u, m.n).catch((e: Error) => (problem(e.message), null));
    if (id === null) continue;
    const k = `${u}/${id}`;
    present.set(k, (present.get(k) ?? 0) + 1);
    if (!delivered.has(k)) phantoms.push(k);
  }
  await w.cmd('QUIT');
  w.close();
}

// What the fetcher delivered.
const fetchedCount = new Map<Key, number>();
for (const u of fetched) {
  for (const sub of ['new', 'cur']) {
    const d = path.join(dir, 'fetched', u, sub);
    for (const f of await fs.readdir(d).catch(() => [] as string[])) {
      // Maildir files end lines with LF alone: back to the wire's CRLF.
      const id = identify(Buffer.from((await fs.readFile(path.join(d, f), 'latin1')).replace(/\r?\n/g, '\r\n'), 'latin1'));
      if (id === null) {
        problem(`fetched ${u}/${sub}/${f}: not byte-exact`);
        continue;
      }
      const k = `${u}/${id}`;
      fetchedCount.set(k, (fetchedCount.get(k) ?? 0) + 1);
      if (!delivered.has(k)) phantoms.push(k);
    }
  }
}

let lost = 0;
let duplicated = 0;
let resurrected = 0;
for (const [k, how] of delivered) {
  const onServer = present.get(k) ?? 0;
  const total = onServer + (removedByQuit.get(k) ?? 0) + (fetchedCount.get(k) ?? 0);
  if (onServer > 0 && (removedByQuit.get(k) ?? 0) > 0) {
    resurrected++;
    problem(`${k}: removed by a QUIT that got +OK, and still on the server`);
  } else if (total > 1) {
    duplicated++;
    problem(`${k}: ${total} copies (server ${onServer}, fetched ${fetchedCount.get(k) ?? 0}, removed ${removedByQuit.get(k) ?? 0})`);
  } else if (total === 0 && how === 'yes' && !maybeRemoved.has(k)) {
    lost++;
    problem(`${k}: delivered with 250 and found nowhere`);
  }
}
for (const k of phantoms) problem(`${k}: found but never delivered`);

await sleep(2_000);
const after = resources();
if (after.pids.length !== before.pids.length) problem(`server processes: ${before.pids.length} at the start, ${after.pids.length} at the end`);
if (serverExit !== null) problem(`the server exited during the run: ${serverExit}`);
// The probe's connection is closed now; the listeners and pools are what is left.
const fdSlack = 4 * after.pids.length;
if (after.fds > before.fds + fdSlack) problem(`open descriptors: ${before.fds} at the start, ${after.fds} at the end (more than ${fdSlack} more)`);
const steady = minutes.length > 1 ? minutes[1]! : minutes[0]!;
const last = minutes[minutes.length - 1]!;
const maxOf = (a: number[]): number => (a.length === 0 ? 0 : Math.max(...a));
const rssBound = maxOf(steady.rssMb) * 1.5 + 32;
if (maxOf(last.rssMb) > rssBound) problem(`resident memory grew: ${maxOf(steady.rssMb).toFixed(0)} MB in minute 2, ${maxOf(last.rssMb).toFixed(0)} MB in the last`);
if (minutes.some((m) => maxOf(m.noopMs) > 5_000)) problem('a NOOP took more than 5 s');
if (minutes.some((m) => maxOf(m.loopMs) > 2_000)) problem("a worker's event-loop delay (p99) passed 2 s");
if (minutes.every((m) => m.loopMs.length === 0)) problem('the admin listener never answered /metrics');

const stopCode = await new Promise<number | null>((resolve) => {
  if (server.exitCode !== null) return resolve(server.exitCode);
  server.once('exit', (code) => resolve(code));
  server.kill('SIGTERM');
});
if (stopCode !== 0) problem(`poplar serve exited ${stopCode} on SIGTERM`);

const pct = (a: number[], p: number): number => {
  if (a.length === 0) return 0;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const perMinute = minutes.map((m, i) => ({
  minute: i + 1,
  sessions: m.sessions,
  logins: m.logins,
  inUse: m.inUse,
  badLogins: m.badLogins,
  retrs: m.retrs,
  retrMB: +(m.retrBytes / 1e6).toFixed(1),
  deleted: m.deleted,
  deliveries: m.deliveries,
  fetchRuns: m.fetchRuns,
  errors: m.errors,
  rssMbMax: +maxOf(m.rssMb).toFixed(1),
  fdsMax: maxOf(m.fds),
  noopMsP50: +pct(m.noopMs, 50).toFixed(2),
  noopMsMax: +maxOf(m.noopMs).toFixed(2),
  loopMsP99Max: +maxOf(m.loopMs).toFixed(2),
}));
const summary = {
  finished: new Date().toISOString(),
  minutes: MINUTES,
  clients: CLIENTS,
  workers: WORKERS,
  users: users.length,
  delivered: [...delivered.values()].filter((v) => v === 'yes').length,
  deliveredUnknown: [...delivered.values()].filter((v) => v === 'unknown').length,
  removedByQuit: [...removedByQuit.values()].reduce((a, b) => a + b, 0),
  fetched: [...fetchedCount.values()].reduce((a, b) => a + b, 0),
  stillOnServer: [...present.values()].reduce((a, b) => a + b, 0),
  sessions: minutes.reduce((s, m) => s + m.sessions, 0),
  retrs: minutes.reduce((s, m) => s + m.retrs, 0),
  lost,
  duplicated,
  resurrected,
  phantoms: phantoms.length,
  
  sessionErrors: minutes.reduce((s, m) => s + m.errors, 0),
  fdsBefore: before.fds,
  fdsAfter: after.fds,
  problems,
  perMinute,
};
await fs.mkdir(flags.out!, { recursive: true });
await fs.writeFile(path.join(flags.out!, 'summary.json'), JSON.stringify(summary, null, 2) + '\n');

const table = [
  '| minute | sessions | logins | [IN-USE] | failed logins | RETRs | MB | deleted | deliveries | fetch runs | errors | RSS MB (max) | fds (max) | NOOP ms p50 | NOOP ms max | event-loop delay p99 ms (max) |',
  '|' + '--:|'.repeat(16),
  ...perMinute.map((m) => `| ${Object.values(m).join(' | ')} |`),
].join('\n');
const outcome = `lost ${lost}, duplicated ${duplicated}, resurrected ${resurrected}, phantoms ${phantoms.length}, session errors ${summary.sessionErrors}, descriptors ${before.fds} → ${after.fds}`;
process.stdout.write(
  [
    table,
    '',
    `delivered ${summary.delivered} (+${summary.deliveredUnknown} unknown), removed by QUIT ${summary.removedByQuit}, fetched ${summary.fetched}, still on the server ${summary.stillOnServer}`,
    outcome,
    ...problems.slice(0, 30).map((p) => `problem: ${p}`),
    '',
  ].join('\n'),
);
if (!flags['no-docs']) {
  await replaceSection(
    'soak',
    [
      `Last run: ${summary.finished.slice(0, 16).replace('T', ' ')} UTC, \`npm run soak -- --minutes ${MINUTES}\` on ${os.cpus().length} cores ` +
        `(load average ${loadAtStart.map((l) => l.toFixed(1)).join(' / ')} at the start): ${CLIENTS} clients and 2 failing-login clients, ` +
        `${users.length} users, \`poplar serve --workers ${WORKERS}\` on Maildir, LMTP deliveries from 2 clients, \`poplar fetch --delete\` of ${fetched.size} maildrops.`,
      '',
      `**${problems.length === 0 ? 'Passed' : 'FAILED'}**: ${summary.sessions.toLocaleString('en-US')} sessions, ${summary.retrs.toLocaleString('en-US')} RETRs, ` +
        `${summary.delivered.toLocaleString('en-US')} messages delivered; of them ${summary.removedByQuit.toLocaleString('en-US')} removed by a QUIT answered +OK, ` +
        `${summary.fetched.toLocaleString('en-US')} fetched, ${summary.stillOnServer.toLocaleString('en-US')} still on the server. ${outcome}.`,
      '',
      table,
    ].join('\n'),
  );
}
logStream.end();
if (!flags.keep && problems.length === 0) await fs.rm(dir, { recursive: true, force: true });
else process.stderr.write(`soak: files kept in ${dir}\n`);
process.exit(problems.length === 0 ? 0 : 1);
