/**
 * `npm run bench:lmtp`: LMTP deliveries per second with durability on
 * (Maildir: fsync of the file and of new/; PostgreSQL: COMMIT), into
 * Poplar's Maildir store, Poplar's PostgreSQL store, and a private Dovecot
 * LMTP (dovecot-lmtpd) delivering into Maildir on the same machine, with the
 * same users, message and load. Reported as rates and as ratios to Dovecot.
 *
 *   npm run bench:lmtp -- [--seconds 10] [--rounds 3] [--clients 16] [--users 50] [--size 4096] [--only maildir,postgres,dovecot]
 *                         [--dovecot-fsync optimized|always]
 *
 * Dovecot runs with its default mail_fsync = optimized (it fsyncs a delivered
 * message before answering) unless told otherwise.
 *
 * Each client keeps one LMTP connection and delivers one message after
 * another (MAIL, RCPT, DATA pipelined; the body after 354), each to one
 * user, round robin. All servers run at once and take turns, round after
 * round, so a machine that gets busier or quieter meanwhile moves them alike;
 * the medians are reported.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { dovecotAvailable, startDovecot } from '../test/helpers/dovecot.js';
import { startLmtpPoplar, type StoreKind } from '../test/helpers/lmtp.js';
import { lacksPostgresQuietly } from './lmtp-pg.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    clients: { type: 'string', default: '16' },
    users: { type: 'string', default: '50' },
    size: { type: 'string', default: '4096' },
    only: { type: 'string' },
    rounds: { type: 'string', default: '3' },
    'dovecot-fsync': { type: 'string', default: 'optimized' },
  },
});
const SECONDS = Number(values.seconds);
const CLIENTS = Number(values.clients);
const USERS = Number(values.users);
const SIZE = Number(values.size);
const ROUNDS = Number(values.rounds);

function message(size: number): Buffer {
  const head = `From: bench@example.net\r\nTo: user@example.org\r\nSubject: lmtp bench\r\nMessage-ID: <${randomBytes(8).toString('hex')}@bench>\r\n\r\n`;
  const lines: string[] = [];
  let n = head.length;
  while (n < size) {
    const l = randomBytes(36).toString('base64');
    lines.push(l);
    n += l.length + 2;
  }
  return Buffer.from(`${head}${lines.join('\r\n')}\r\n`);
}

/** Reads SMTP replies off a socket, one complete reply (last line `NNN `) at a time. */
class Replies {
  #buf = '';
  #waiting: ((line: string) => void)[] = [];
  #ready: string[] = [];
  constructor(sock: net.Socket) {
    sock.setEncoding('latin1');
    sock.on('data', (d: string) => {
      this.#buf += d;
      for (let i = this.#buf.indexOf('\r\n'); i !== -1; i = this.#buf.indexOf('\r\n')) {
        const line = this.#buf.slice(0, i);
        this.#buf = this.#buf.slice(i + 2);
        if (line[3] === '-') continue;
        const w = this.#waiting.shift();
        if (w) w(line);
        else this.#ready.push(line);
      }
    });
  }
  next(): Promise<string> {
    const r = this.#ready.shift();
    if (r !== undefined) return Promise.resolve(r);
    return new Promise((resolve) => this.#waiting.push(resolve));
  }
}

async function client(target: { host?: string; port?: number; path?: string }, users: string[], offset: number, body: Buffer, until: number): Promise<{ ok: number; failed: number }> {
  const sock = target.path !== undefined ? net.connect(target.path) : net.connect(target.port!, target.host!);
  sock.setNoDelay(true);
  await new Promise((r, j) => sock.once('connect', r).once('error', j));
  const replies = new Replies(sock);
  await replies.next();
  sock.write('LHLO bench.test\r\n');
  await replies.next();
  let ok = 0;
  let failed = 0;
  const data = Buffer.concat([body, Buffer.from('.\r\n')]);
  for (let i = offset; Date.now() < until; i++) {
    const user = users[i % users.length]!;
    sock.write(`MAIL FROM:<bench@example.net>\r\nRCPT TO:<${user}>\r\nDATA\r\n`);
    const [m, r, d] = [await replies.next(), await replies.next(), await replies.next()];
    if (!m.startsWith('250') || !r.startsWith('250') || !d.startsWith('354')) throw new Error(`refused: ${m} | ${r} | ${d}`);
    sock.write(data);
    if ((await replies.next()).startsWith('250')) ok++;
    else failed++;
  }
  sock.end('QUIT\r\n');
  return { ok, failed };
}

async function measure(name: string, target: { host?: string; port?: number; path?: string }, users: string[], body: Buffer): Promise<number> {
  // A short warm-up, then the measured run.
  const warm = Date.now() + 1000;
  await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(target, users, c, body, warm)));
  const t0 = performance.now();
  const until = Date.now() + SECONDS * 1000;
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(target, users, c * 7, body, until)));
  const secs = (performance.now() - t0) / 1000;
  const ok = results.reduce((a, r) => a + r.ok, 0);
  const failed = results.reduce((a, r) => a + r.failed, 0);
  const rate = ok / secs;
  console.log(`${name.padEnd(58)} ${rate.toFixed(0).padStart(7)} deliveries/s  (${ok} in ${secs.toFixed(1)} s${failed ? `, ${failed} refused` : ''})`);
  return rate;
}

interface Target {
  readonly key: string;
  readonly name: string;
  readonly port: number;
  stop(): Promise<void>;
}

async function startTargets(users: string[], want: (k: string) => boolean): Promise<Target[]> {
  const targets: Target[] = [];
  for (const kind of ['maildir', 'postgres'] as StoreKind[]) {
    if (!want(kind)) continue;
    if (kind === 'postgres' && (await lacksPostgresQuietly())) {
      console.log('poplar (PostgreSQL): skipped, no PostgreSQL on 127.0.0.1:5432');
      continue;
    }
    // As bin/poplar starts it: 16 threads for file-system calls, so concurrent fsyncs share the disk's flushes.
    const p = await startLmtpPoplar(kind, users.map((name) => ({ name })), { env: { UV_THREADPOOL_SIZE: process.env['UV_THREADPOOL_SIZE'] ?? '16' } });
    targets.push({ key: kind, name: `poplar (${kind === 'maildir' ? 'Maildir' : 'PostgreSQL'})`, port: p.lmtpPort, stop: () => p.stop() });
  }
  if (want('dovecot')) {
    if (!dovecotAvailable() || !(await fs.stat('/usr/lib/dovecot/lmtp').then(() => true, () => false))) {
      console.log('dovecot LMTP: skipped, dovecot-lmtpd is not installed');
      return targets;
    }
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-bench-lmtp-'));
    const lmtpPort = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const port = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(port));
      });
    });
    const root = path.join(dir, 'mail');
    await fs.mkdir(root);
    const d = await startDovecot({
      maildirRoot: root,
      users: users.map((name) => ({ name, password: 'secret' })),
      highPerformance: true,
      extraConf: [
        'protocols = pop3 lmtp',
        'info_log_path = /dev/null',
        'auth_verbose = no',
        `mail_fsync = ${values['dovecot-fsync']}`,
        'service lmtp {',
        '  inet_listener lmtp {',
        '    address = 127.0.0.1',
        `    port = ${lmtpPort}`,
        '  }',
        '  service_count = 0',
        `  process_min_avail = ${os.availableParallelism()}`,
        '  client_limit = 1',
        '}',
      ].join('\n'),
    });
    targets.push({
      key: 'dovecot',
      name: `dovecot LMTP (Maildir, mail_fsync=${values['dovecot-fsync']})`,
      port: lmtpPort,
      stop: async () => {
        await d.stop();
        await fs.rm(dir, { recursive: true, force: true });
      },
    });
  }
  return targets;
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

async function main(): Promise<void> {
  const users = Array.from({ length: USERS }, (_, i) => `bench${i}`);
  const body = message(SIZE);
  console.log(
    `LMTP delivery bench: ${CLIENTS} clients, ${USERS} users, ${body.length}-octet message, ${ROUNDS} rounds of ${SECONDS} s per target (targets take turns), ${os.availableParallelism()} CPUs, durability on`,
  );
  const only = values.only?.split(',');
  const targets = await startTargets(users, (k) => only === undefined || only.includes(k));
  const rates = new Map<string, number[]>(targets.map((t) => [t.key, []]));
  try {
    for (let round = 1; round <= ROUNDS; round++) {
      for (const t of targets) rates.get(t.key)!.push(await measure(`round ${round} ${t.name}`, { host: '127.0.0.1', port: t.port }, users, body));
    }
  } finally {
    for (const t of targets) await t.stop();
  }
  console.log('');
  for (const t of targets) console.log(`${t.name.padEnd(50)} median ${median(rates.get(t.key)!).toFixed(0).padStart(6)} deliveries/s`);
  const dv = rates.get('dovecot');
  if (dv === undefined) return;
  for (const t of targets) {
    if (t.key === 'dovecot') continue;
    const per = rates.get(t.key)!.map((r, i) => r / dv[i]!);
    console.log(`poplar ${t.key} / dovecot: median of the rounds' ratios ${median(per).toFixed(2)}x (rounds: ${per.map((x) => x.toFixed(2)).join(' ')})${t.key === 'maildir' ? '; target >= 1.5x' : ''}`);
  }
}

await main();
