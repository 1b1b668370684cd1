/**
 * Load generator process for bench/run.ts. It speaks raw POP3 over net
 * sockets, takes one job at a time over the IPC channel, and answers with the
 * figures and its own CPU time (process.cpuUsage) for the measuring window.
 *
 * Not meant to be started by hand: bench/run.ts forks it (several copies, so
 * the generator does not limit the figures) and sends it jobs.
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Pop3Reader } from './pop3-reader.js';
import type {
  BenchUser,
  BigDropJob,
  BigDropResult,
  BigDropRun,
  FromWorker,
  IdleCheckCommand,
  IdleChecked,
  IdleJob,
  IdleReady,
  RetrJob,
  RetrResult,
  SessionsJob,
  SessionsResult,
  ToWorker,
} from './protocol.js';

const HOST = '127.0.0.1';
const MAX_ERROR_SAMPLES = 5;

function send(msg: FromWorker): void {
  process.send?.(msg);
}

async function sleepUntil(epochMs: number): Promise<void> {
  const d = epochMs - Date.now();
  if (d > 0) await sleep(d);
}

function hrMs(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** CPU snapshots taken at the window's start and end (timers, so the job itself does not have to). */
function cpuWindow(tStart: number, tEnd: number): { result(): { cpuUserUs: number; cpuSystemUs: number; windowMs: number } } {
  let a: NodeJS.CpuUsage | null = null;
  let b: NodeJS.CpuUsage | null = null;
  let ta = 0;
  let tb = 0;
  const t1 = setTimeout(() => {
    a = process.cpuUsage();
    ta = Date.now();
  }, Math.max(0, tStart - Date.now()));
  const t2 = setTimeout(() => {
    b = process.cpuUsage();
    tb = Date.now();
  }, Math.max(0, tEnd - Date.now()));
  return {
    result() {
      clearTimeout(t1);
      clearTimeout(t2);
      const x = a ?? process.cpuUsage();
      const y = b ?? process.cpuUsage();
      return { cpuUserUs: y.user - x.user, cpuSystemUs: y.system - x.system, windowMs: (tb || Date.now()) - (ta || Date.now()) };
    },
  };
}

class ErrorLog {
  count = 0;
  samples: string[] = [];
  add(e: unknown): void {
    this.count++;
    const m = e instanceof Error ? e.message : String(e);
    if (this.samples.length < MAX_ERROR_SAMPLES && !this.samples.includes(m)) this.samples.push(m);
  }
}

/**
 * A scripted POP3 conversation on one connection: `step` is called with each
 * reply; it returns the next command(s) to send, or null when done (the
 * server is then expected to close the connection, or we close it).
 */
interface Conversation {
  onStatus(line: string, multi: boolean): void;
  onBody(bytes: number, body: Buffer | undefined): void;
  onData?(n: number): void;
}

function openConversation(
  port: number,
  timeoutMs: number,
  make: (sock: net.Socket, reader: Pop3Reader, finish: (err: Error | null) => void) => Conversation,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port });
    sock.setNoDelay(true);
    let done = false;
    let conv: Conversation | null = null;
    const timer = setTimeout(() => finish(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    function finish(err: Error | null): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve();
    }
    const reader = new Pop3Reader({
      status: (line, multi) => conv?.onStatus(line, multi),
      bodyEnd: (bytes, body) => conv?.onBody(bytes, body),
    });
    conv = make(sock, reader, finish);
    reader.expect(false); // greeting
    sock.on('data', (chunk: Buffer) => {
      conv?.onData?.(chunk.length);
      try {
        reader.push(chunk);
      } catch (e) {
        finish(e as Error);
      }
    });
    sock.on('error', (e) => finish(e));
    sock.on('close', () => finish(new Error('connection closed by the server')));
  });
}

/** Sends `line` and registers the shape of its reply. */
function cmd(sock: net.Socket, reader: Pop3Reader, line: string, multi = false, collect = false): void {
  reader.expect(multi, collect);
  sock.write(line + '\r\n');
}

// ---------------------------------------------------------------------------
// 1. sessions/s

/** connect → greeting → USER → PASS → STAT → QUIT → server closes. Resolves with the latency until the QUIT reply (µs). */
function oneSession(port: number, user: BenchUser): Promise<number> {
  const t0 = process.hrtime.bigint();
  let latencyUs = 0;
  return openConversation(port, 30_000, (sock, reader, finish) => {
    let step = 0;
    const script = [`USER ${user.name}`, `PASS ${user.password}`, 'STAT', 'QUIT'];
    sock.on('end', () => {
      if (step === 5) finish(null);
    });
    return {
      onStatus(line) {
        if (!line.startsWith('+OK')) {
          finish(new Error(`${['greeting', 'USER', 'PASS', 'STAT', 'QUIT'][step] ?? '?'}: ${line}`));
          return;
        }
        const next = script[step++];
        if (next !== undefined) {
          cmd(sock, reader, next);
        } else {
          latencyUs = Number(process.hrtime.bigint() - t0) / 1000;
          step = 5;
          // Both servers close after QUIT; wait for that so the server is the active closer.
        }
      },
      onBody() {
        finish(new Error('unexpected multi-line reply'));
      },
    };
  }).then(() => latencyUs);
}

async function runSessions(job: SessionsJob): Promise<SessionsResult> {
  if (job.users.length < job.clients) throw new Error(`sessions: ${job.clients} clients need at least as many users, got ${job.users.length}`);
  const free = [...job.users];
  const tWarm = job.startAt + job.warmupMs;
  const tEnd = tWarm + job.durationMs;
  const errors = new ErrorLog();
  const latencies: number[] = [];
  let sessions = 0;
  await sleepUntil(job.startAt);
  const cpu = cpuWindow(tWarm, tEnd);
  const client = async (): Promise<void> => {
    while (Date.now() < tEnd) {
      const user = free.shift();
      if (user === undefined) throw new Error('internal: user pool empty');
      try {
        const us = await oneSession(job.port, user);
        const now = Date.now();
        if (now >= tWarm && now <= tEnd) {
          sessions++;
          latencies.push(us);
        }
      } catch (e) {
        const now = Date.now();
        if (now >= tWarm && now <= tEnd) errors.add(e);
        await sleep(10);
      } finally {
        free.push(user);
      }
    }
  };
  await Promise.all(Array.from({ length: job.clients }, client));
  return { kind: 'sessions', sessions, errors: errors.count, errorSamples: errors.samples, latenciesUs: latencies, ...cpu.result() };
}

// ---------------------------------------------------------------------------
// 2. RETR MB/s

interface RetrCounters {
  bytes: number;
  messages: number;
  sessions: number;
  mismatches: number;
}

/** One session: login, RETR 1..N with `window` in flight, QUIT. Stops sending new RETRs at tEnd. */
function retrSession(job: RetrJob, user: BenchUser, expected: number[], tWarm: number, tEnd: number, c: RetrCounters, errors: ErrorLog): Promise<void> {
  const n = expected.length;
  return openConversation(job.port, 60_000, (sock, reader, finish) => {
    let phase: 'greeting' | 'user' | 'pass' | 'retr' | 'quit' | 'closing' = 'greeting';
    let next = 1; // next message number to request
    const inFlight: number[] = [];
    let quitSent = false;
    const inWindow = (): boolean => {
      const now = Date.now();
      return now >= tWarm && now <= tEnd;
    };
    const fill = (): void => {
      while (inFlight.length < job.window && next <= n && Date.now() < tEnd) {
        inFlight.push(next);
        cmd(sock, reader, `RETR ${next}`, true);
        next++;
      }
      if (inFlight.length === 0 && !quitSent) {
        quitSent = true;
        phase = 'quit';
        cmd(sock, reader, 'QUIT');
      }
    };
    sock.on('end', () => {
      if (phase === 'closing') finish(null);
    });
    return {
      onData(len) {
        if (inWindow()) c.bytes += len;
      },
      onStatus(line, multi) {
        if (!line.startsWith('+OK')) {
          finish(new Error(`${phase}: ${line}`));
          return;
        }
        switch (phase) {
          case 'greeting':
            phase = 'user';
            cmd(sock, reader, `USER ${user.name}`);
            break;
          case 'user':
            phase = 'pass';
            cmd(sock, reader, `PASS ${user.password}`);
            break;
          case 'pass':
            phase = 'retr';
            fill();
            break;
          case 'retr':
            if (!multi) finish(new Error(`RETR: single-line +OK: ${line}`));
            break;
          case 'quit':
            phase = 'closing';
            if (inWindow()) c.sessions++;
            break;
          case 'closing':
            finish(new Error(`unexpected reply after QUIT: ${line}`));
            break;
        }
      },
      onBody(bytes) {
        const msg = inFlight.shift();
        if (msg === undefined) {
          finish(new Error('RETR: body without a request'));
          return;
        }
        if (bytes !== expected[msg - 1]) {
          c.mismatches++;
          errors.add(new Error(`RETR ${msg}: ${bytes} body bytes, expected ${expected[msg - 1] ?? '?'}`));
        }
        if (inWindow()) c.messages++;
        fill();
      },
    };
  });
}

async function runRetr(job: RetrJob): Promise<RetrResult> {
  const tWarm = job.startAt + job.warmupMs;
  const tEnd = tWarm + job.durationMs;
  const errors = new ErrorLog();
  const c: RetrCounters = { bytes: 0, messages: 0, sessions: 0, mismatches: 0 };
  await sleepUntil(job.startAt);
  const cpu = cpuWindow(tWarm, tEnd);
  await Promise.all(
    job.clients.map(async ({ user, expectedBodyBytes }) => {
      while (Date.now() < tEnd) {
        try {
          await retrSession(job, user, expectedBodyBytes, tWarm, tEnd, c, errors);
        } catch (e) {
          errors.add(e);
          await sleep(10);
        }
      }
    }),
  );
  return { kind: 'retr', ...c, errors: errors.count, errorSamples: errors.samples, ...cpu.result() };
}

// ---------------------------------------------------------------------------
// 3. big maildrop: login + STAT + LIST

function bigDropRun(job: BigDropJob): Promise<BigDropRun> {
  const t0 = process.hrtime.bigint();
  const r: BigDropRun = { totalMs: 0, loginMs: 0, statMs: 0, statMessages: 0, listLines: 0 };
  return openConversation(job.port, job.timeoutMs, (sock, reader, finish) => {
    let phase: 'greeting' | 'user' | 'pass' | 'stat' | 'list' | 'quit' | 'closing' = 'greeting';
    sock.on('end', () => {
      if (phase === 'closing') finish(null);
    });
    return {
      onStatus(line) {
        if (!line.startsWith('+OK')) {
          finish(new Error(`${phase}: ${line}`));
          return;
        }
        switch (phase) {
          case 'greeting':
            phase = 'user';
            cmd(sock, reader, `USER ${job.user.name}`);
            break;
          case 'user':
            phase = 'pass';
            cmd(sock, reader, `PASS ${job.user.password}`);
            break;
          case 'pass':
            r.loginMs = hrMs(t0);
            phase = 'stat';
            cmd(sock, reader, 'STAT');
            break;
          case 'stat':
            r.statMs = hrMs(t0);
            r.statMessages = Number(line.split(' ')[1]);
            phase = 'list';
            cmd(sock, reader, 'LIST', true, true);
            break;
          case 'list':
            break; // body follows
          case 'quit':
            phase = 'closing';
            break;
          case 'closing':
            break;
        }
      },
      onBody(_bytes, body) {
        r.totalMs = hrMs(t0);
        let lines = 0;
        if (body !== undefined) {
          for (let i = body.indexOf(0x0a); i >= 0; i = body.indexOf(0x0a, i + 1)) lines++;
        }
        r.listLines = lines;
        phase = 'quit';
        cmd(sock, reader, 'QUIT');
      },
    };
  }).then(() => r);
}

async function runBigDrop(job: BigDropJob): Promise<BigDropResult> {
  const c0 = process.cpuUsage();
  const runs: BigDropRun[] = [];
  for (let i = 0; i < job.runs; i++) runs.push(await bigDropRun(job));
  const c1 = process.cpuUsage(c0);
  return { kind: 'bigdrop', runs, cpuUserUs: c1.user, cpuSystemUs: c1.system };
}

// ---------------------------------------------------------------------------
// 4. idle connections

let idleSockets: net.Socket[] = [];

/** Opens a connection and waits for the greeting; with `user`, also logs in (USER, PASS). */
function openIdle(port: number, user?: BenchUser): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port });
    let buf = '';
    // The replies still expected: greeting, then +OK to USER and to PASS when logging in.
    const steps = user === undefined ? ['greeting'] : ['greeting', 'USER', 'PASS'];
    let step = 0;
    const timer = setTimeout(() => fail(new Error(`no reply to ${steps[step]} within 30 s`)), 30_000);
    function fail(e: Error): void {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    }
    const onData = (d: Buffer): void => {
      buf += d.toString('latin1');
      for (;;) {
        const i = buf.indexOf('\r\n');
        if (i < 0) return;
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!line.startsWith('+OK')) return fail(new Error(`${steps[step]}: ${line.slice(0, 200)}`));
        step++;
        if (step === steps.length) {
          clearTimeout(timer);
          sock.removeListener('data', onData);
          return resolve(sock);
        }
        sock.write(step === 1 ? `USER ${user!.name}\r\n` : `PASS ${user!.password}\r\n`);
      }
    };
    sock.on('data', onData);
    sock.on('error', (e) => fail(e));
  });
}

async function runIdle(job: IdleJob): Promise<IdleReady> {
  const c0 = process.cpuUsage();
  const errors = new ErrorLog();
  let started = 0;
  const lane = async (): Promise<void> => {
    while (started < job.count) {
      const user = job.login?.[started];
      started++;
      try {
        const s = await openIdle(job.port, user);
        // Drop anything later (e.g. a timeout notice) and count an early close as an error in the report.
        s.on('error', () => undefined);
        idleSockets.push(s);
      } catch (e) {
        errors.add(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(job.concurrency, job.count) }, lane));
  const c1 = process.cpuUsage(c0);
  const opened = idleSockets.filter((s) => !s.destroyed).length;
  return { kind: 'idle-ready', opened, errors: errors.count, errorSamples: errors.samples, cpuUserUs: c1.user, cpuSystemUs: c1.system };
}

/** CAPA on every held connection, a few hundred at a time: all of them still served after being held. */
async function checkIdle(job: IdleCheckCommand): Promise<IdleChecked> {
  const errors = new ErrorLog();
  const socks = idleSockets.filter((s) => !s.destroyed);
  let answered = 0;
  let next = 0;
  const capa = (sock: net.Socket): Promise<void> =>
    new Promise((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => done(new Error(`no CAPA reply within ${job.timeoutMs} ms`)), job.timeoutMs);
      function done(e?: Error): void {
        clearTimeout(timer);
        sock.removeListener('data', onData);
        sock.removeListener('close', onClose);
        if (e) reject(e);
        else resolve();
      }
      const onData = (d: Buffer): void => {
        buf += d.toString('latin1');
        if (!buf.startsWith('+OK') && buf.includes('\r\n')) done(new Error(`${job.stat === true ? 'STAT' : 'CAPA'}: ${buf.slice(0, buf.indexOf('\r\n'))}`));
        else if (job.stat === true ? buf.endsWith('\r\n') : buf.endsWith('\r\n.\r\n')) done();
      };
      const onClose = (): void => done(new Error('closed by the server while held'));
      sock.on('data', onData);
      sock.on('close', onClose);
      sock.write(job.stat === true ? 'STAT\r\n' : 'CAPA\r\n');
    });
  const lane = async (): Promise<void> => {
    while (next < socks.length) {
      const s = socks[next++]!;
      try {
        await capa(s);
        answered++;
      } catch (e) {
        errors.add(e);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(200, socks.length) }, lane));
  return { kind: 'idle-checked', open: socks.length, answered, errors: errors.count, errorSamples: errors.samples };
}

async function releaseIdle(): Promise<void> {
  const socks = idleSockets;
  idleSockets = [];
  for (const s of socks) s.destroy();
  await sleep(50);
}

// ---------------------------------------------------------------------------

async function handle(msg: ToWorker): Promise<FromWorker> {
  switch (msg.kind) {
    case 'sessions':
      return runSessions(msg);
    case 'retr':
      return runRetr(msg);
    case 'bigdrop':
      return runBigDrop(msg);
    case 'idle':
      return runIdle(msg);
    case 'release':
      await releaseIdle();
      return { kind: 'released' };
    case 'idle-check':
      return checkIdle(msg);
  }
}

if (process.send === undefined) {
  process.stderr.write('bench/load.ts is started by bench/run.ts (it needs an IPC channel)\n');
  process.exit(64);
}
process.on('message', (msg: ToWorker) => {
  handle(msg).then(send, (e: unknown) => send({ kind: 'failed', message: e instanceof Error ? (e.stack ?? e.message) : String(e) }));
});
process.on('disconnect', () => process.exit(0));
send({ kind: 'ready' });
