/**
 * Poplar vs Dovecot benchmark: `npm run bench`. Needs root and Dovecot 2.3,
 * like the Dovecot comparison tests, and measures Poplar on PostgreSQL too
 * when the bench database answers. Writes docs/benchmarks.md, which also
 * explains what is measured; `npm run bench -- --help` lists the options.
 *
 * Layout: bench/load.ts is the load generator (separate processes, raw POP3),
 * bench/data.ts the maildirs, bench/pgdata.ts their copy in PostgreSQL,
 * bench/servers.ts starts the servers, bench/haproxy.ts the load balancer of
 * the nodes figure, bench/procfs.ts reads memory and CPU from /proc,
 * bench/report.ts formats.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { dovecotAvailable } from '../test/helpers/dovecot.js';
import { formatProfile, summariseProfile } from './cpu-profile.js';
import { allUsers, BIG_MESSAGES, BIG_USER, copyMaildirs, ensureTemplate, moveDir, prepareBigCopy, RETR_USERS, type Manifest } from './data.js';
import { haproxyAvailable, haproxyConfig, haproxyVersion, startHaproxy } from './haproxy.js';
import { benchClient, ensurePgData, freeLeases, maintain, PG_SCHEMA, postgresReachable, storeConfig } from './pgdata.js';
import { childrenOf, machineInfo, memoryOf, openFileLimit, processGroup, systemBusySeconds } from './procfs.js';
import type { BenchUser } from './protocol.js';
import type { BigDropResult, FromWorker, IdleReady, RetrJob, RetrResult, SessionsResult, ToWorker } from './protocol.js';
import {
  fmtBytes,
  markdown,
  plainTable,
  rows,
  type BigDropFigure,
  type ColdRecord,
  type Figure,
  type DbConnections,
  type HoldFigure,
  type NodesPoint,
  type IdleFigure,
  type Options,
  type Params,
  type Results,
  type RetrFigure,
  type ServerKey,
  type ScalingPoint,
  type SessionsFigure,
  type WindowCpu,
  PG_SECTION_END,
  PG_SECTION_START,
  pgPlainTable,
  pgRows,
  pgSection,
} from './report.js';
import { startDovecotBench, startPoplar, withFileLimit, type BenchServer } from './servers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.join(ROOT, 'bench', '.work');
const TEMPLATE = path.join(WORK, 'template');
const COLD_FILE = path.join(WORK, 'cold.json');
const DOC = path.join(ROOT, 'docs', 'benchmarks.md');
const LOAD = path.join(ROOT, 'bench', 'load.ts');

/** RETR windows per server; the figure is their median. */
const RETR_ROUNDS = 3;
const FIGURES: Figure[] = ['idle', 'sessions', 'retr', 'bigdrop', 'hold', 'scaling', 'nodes'];
const SERVERS: ServerKey[] = ['poplar', 'poplar-pg', 'dovecot'];
/** `[store.postgres] pool_size` of Poplar on PostgreSQL (per process; the default). */
const PG_POOL_SIZE = 10;

const FULL: Params = {
  sessionClients: 32,
  sessionWarmupMs: 2000,
  sessionDurationMs: 10_000,
  retrClients: RETR_USERS,
  retrWindow: 8,
  retrWarmupMs: 2000,
  retrDurationMs: 8000,
  bigRuns: 5,
  idleConnections: 2000,
  holdConnections: 20_000,
  compiledLoad: true,
};

const QUICK: Params = { ...FULL, sessionWarmupMs: 1000, sessionDurationMs: 3000, retrWarmupMs: 1000, retrDurationMs: 3000, bigRuns: 2 };

const USAGE = `usage: npm run bench -- [options]
  --quick                 short windows (report to bench/.work/last-run.md)
  --only LIST             figures to run, of: ${FIGURES.join(',')}
  --server LIST           servers to run, of: ${SERVERS.join(',')} (default: all; poplar-pg when PostgreSQL answers)
  --cold                  drop the 100k maildrop's caches first and measure the first login without them
  --cpu-prof              run Poplar's sessions/s figure under node --cpu-prof and summarise the profile
  --node-load             the Node load generator for sessions/s and RETR even when bench/sessload.c and retrload.c can be compiled
  --workers N             load generator processes (default: cores, at least 2, at most 4)
  --poplar-workers N      run Poplar as \`poplar serve --workers N\` (default: the number of cores)
Only a full run (all figures, all servers, no --quick) rewrites docs/benchmarks.md; a run without
--quick that measures sessions, retr and bigdrop on poplar-pg and dovecot rewrites its PostgreSQL section.
The database: POPLAR_BENCH_PG_URL (default postgres://postgres@127.0.0.1:5432/test), schema ${PG_SCHEMA}.
`;

// ---------------------------------------------------------------------------
// helpers

/** What must not outlive this process, also on Ctrl-C: servers and load generators. */
const cleanups = new Set<() => Promise<void> | void>();
let cleaning: Promise<void> = Promise.resolve();
let interrupted = false;

/** Runs the registered cleanups, newest first; a second call waits for a running one. */
function cleanUp(): Promise<void> {
  cleaning = cleaning.then(async () => {
    for (const c of [...cleanups].reverse()) {
      cleanups.delete(c);
      await Promise.resolve()
        .then(c)
        .catch((e: unknown) => log(`warning: cleanup failed: ${String(e)}`));
    }
  });
  return cleaning;
}

/**
 * Last resort on Ctrl-C: whatever this process started and has not stopped yet
 * (a server still starting, a load generator). Poplar and Dovecot lead their
 * own process groups, so the whole group goes.
 */
async function killChildren(): Promise<void> {
  const kids = childrenOf(process.pid);
  const signal = (sig: NodeJS.Signals): void => {
    for (const pid of kids) {
      try {
        if (processGroup(pid) === pid) process.kill(-pid, sig);
        else process.kill(pid, sig);
      } catch {
        // gone
      }
    }
  };
  if (kids.length === 0) return;
  signal('SIGTERM');
  await sleep(2000);
  signal('SIGKILL');
}

function log(s: string): void {
  process.stdout.write(s + '\n');
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Nearest-rank percentile of an already sorted array. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

function cpuS(r: { cpuUserUs: number; cpuSystemUs: number }): number {
  return (r.cpuUserUs + r.cpuSystemUs) / 1e6;
}

/** Runs `fn` at the given epoch time and resolves with its value. */
function at<T>(epochMs: number, fn: () => T): Promise<T> {
  return new Promise((resolve) => setTimeout(() => resolve(fn()), Math.max(0, epochMs - Date.now())));
}

function split<T>(xs: T[], parts: number): T[][] {
  const out: T[][] = Array.from({ length: parts }, () => []);
  xs.forEach((x, i) => out[i % parts]!.push(x));
  return out;
}

function shares(total: number, parts: number): number[] {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0));
}

function load1(): number {
  return os.loadavg()[0] ?? NaN;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (e.name.endsWith('.ts') && !e.name.endsWith('.test.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** `npm run build` when dist/ is missing or older than src/. */
function ensureBuilt(): void {
  const main = path.join(ROOT, 'dist', 'cli', 'main.js');
  const srcTime = Math.max(newestMtime(path.join(ROOT, 'src')), statSync(path.join(ROOT, 'tsconfig.build.json')).mtimeMs);
  if (existsSync(main) && statSync(main).mtimeMs >= srcTime) return;
  log(existsSync(main) ? 'dist/ is older than src/: running npm run build ...' : 'dist/ is missing: running npm run build ...');
  const r = spawnSync('npm', ['run', 'build'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) throw new Error(`npm run build failed (exit ${r.status ?? r.signal ?? '?'}); the benchmark runs the compiled dist/`);
}

/**
 * A compiled load generator (bench/sessload.c for sessions/s, bench/retrload.c
 * for RETR), built into bench/.work/ with the system's C compiler; undefined
 * when there is none (the Node generator in bench/load.ts is used then).
 */
function compiledLoader(name: 'sessload' | 'retrload'): string | undefined {
  const src = path.join(ROOT, 'bench', `${name}.c`);
  const bin = path.join(WORK, name);
  const newest = Math.max(statSync(src).mtimeMs, statSync(path.join(ROOT, 'bench', 'loadgen.h')).mtimeMs);
  if (existsSync(bin) && statSync(bin).mtimeMs >= newest) return bin;
  const r = spawnSync('cc', ['-O2', '-o', bin, src], { stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status === 0) return bin;
  log(`no C compiler for bench/${name}.c (${r.error?.message ?? r.stderr?.toString().split('\n')[0] ?? 'failed'}); the Node load generator is used instead`);
  return undefined;
}

/** Run a compiled generator to its end; resolves with the JSON object it prints. */
function runCompiled<T>(bin: string, args: string[]): Promise<T> {
  const name = path.basename(bin);
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code !== 0) return reject(new Error(`${name} exited with ${String(code)}: ${err.trim()}`));
      try {
        resolve(JSON.parse(out) as T);
      } catch (e) {
        reject(new Error(`${name} printed no result: ${(e as Error).message}: ${out.slice(0, 200)}`));
      }
    });
  });
}

/** One run of the compiled sessions/s generator. */
function runSessload(bin: string, port: number, users: Manifest['sessionUsers'], clients: number, startAt: number, p: Params): Promise<SessionsResult> {
  const file = path.join(WORK, 'sessload-users.txt');
  writeFileSync(file, users.map((u) => `${u.name} ${u.password}`).join('\n') + '\n', { mode: 0o600 });
  return runCompiled<SessionsResult>(bin, [String(port), String(startAt), String(p.sessionWarmupMs), String(p.sessionDurationMs), String(clients), file]);
}

/** One run of the compiled RETR generator (process `k` of several) for these clients. */
function runRetrload(bin: string, k: number, port: number, clients: RetrJob['clients'], startAt: number, p: Params): Promise<RetrResult> {
  const file = path.join(WORK, `retrload-clients-${k}.txt`);
  writeFileSync(file, clients.map((c) => `${c.user.name} ${c.user.password} ${c.expectedBodyBytes.length} ${c.expectedBodyBytes.join(' ')}`).join('\n') + '\n', { mode: 0o600 });
  return runCompiled<RetrResult>(bin, [String(port), String(startAt), String(p.retrWarmupMs), String(p.retrDurationMs), String(p.retrWindow), file]);
}

function readCold(): Partial<Record<ServerKey, ColdRecord>> {
  try {
    return JSON.parse(readFileSync(COLD_FILE, 'utf8')) as Partial<Record<ServerKey, ColdRecord>>;
  } catch {
    return {};
  }
}

function writeCold(key: ServerKey, rec: ColdRecord): void {
  writeFileSync(COLD_FILE, JSON.stringify({ ...readCold(), [key]: rec }, null, 1));
}

// ---------------------------------------------------------------------------
// load generator processes

class LoadWorker {
  readonly #child: ChildProcess;
  #waiting: { kind: FromWorker['kind']; resolve: (m: FromWorker) => void; reject: (e: Error) => void } | null = null;
  #exited = false;
  readonly #ready: Promise<void>;

  constructor(index: number) {
    // Same loader flags as this process (tsx), so bench/load.ts runs from source.
    const [cmd, args] = withFileLimit(65536, [process.execPath, ...process.execArgv.filter((a) => !a.startsWith('--cpu-prof')), LOAD]);
    this.#child = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    this.#child.on('message', (m: FromWorker) => {
      const w = this.#waiting;
      if (m.kind === 'failed') {
        this.#waiting = null;
        w?.reject(new Error(`load generator ${index}: ${m.message}`));
        return;
      }
      if (w !== null && w.kind === m.kind) {
        this.#waiting = null;
        w.resolve(m);
      }
    });
    this.#child.on('error', (e) => {
      const w = this.#waiting;
      this.#waiting = null;
      w?.reject(new Error(`load generator ${index}: ${e.message}`));
    });
    this.#child.on('exit', (code, signal) => {
      this.#exited = true;
      const w = this.#waiting;
      this.#waiting = null;
      w?.reject(new Error(`load generator ${index} exited (${code ?? signal ?? '?'})`));
    });
    this.#ready = this.#expect('ready').then(() => undefined);
  }

  #expect(kind: FromWorker['kind']): Promise<FromWorker> {
    if (this.#exited) return Promise.reject(new Error('load generator is not running'));
    if (this.#waiting !== null) return Promise.reject(new Error('load generator is busy'));
    return new Promise((resolve, reject) => (this.#waiting = { kind, resolve, reject }));
  }

  ready(): Promise<void> {
    return this.#ready;
  }

  request<K extends FromWorker['kind']>(msg: ToWorker, kind: K): Promise<Extract<FromWorker, { kind: K }>> {
    const p = this.#expect(kind);
    this.#child.send(msg, (e) => {
      if (e === null) return;
      const w = this.#waiting;
      this.#waiting = null;
      w?.reject(new Error(`load generator: cannot send the job: ${e.message}`));
    });
    return p as Promise<Extract<FromWorker, { kind: K }>>;
  }

  kill(): void {
    if (!this.#exited) this.#child.kill('SIGKILL');
  }
}

async function startWorkers(n: number): Promise<LoadWorker[]> {
  const ws = Array.from({ length: n }, (_, i) => new LoadWorker(i));
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      Promise.all(ws.map((w) => w.ready())),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('load generators did not start within 30 s')), 30_000))),
    ]);
  } catch (e) {
    for (const w of ws) w.kill();
    throw e;
  } finally {
    clearTimeout(timer);
  }
  return ws;
}

// ---------------------------------------------------------------------------
// one server instance with its maildirs

interface Instance {
  key: ServerKey;
  server: BenchServer;
  /** The server's mail root. */
  mail: string;
  /** Where its copy of the big maildrop lives between runs. */
  bigHome: string;
  /** True while that copy sits in the mail root. */
  bigInRoot: boolean;
}

/** A big maildrop left in a mail root by an interrupted run goes back to its home first. */
function rescueBig(mail: string, bigHome: string): void {
  const inRoot = path.join(mail, BIG_USER);
  if (existsSync(inRoot) && !existsSync(path.join(bigHome, BIG_USER))) moveDir(inRoot, path.join(bigHome, BIG_USER));
}

/** The users of the held-connections figure on PostgreSQL: one per connection, so each session holds a lease of its own. */
function holdUsers(n: number): BenchUser[] {
  return Array.from({ length: n }, (_, i) => {
    const name = `h${String(i + 1).padStart(5, '0')}`;
    return { name, password: `bench-${name}-secret` };
  });
}

/** Users of Poplar on PostgreSQL: the template's and the held-connections figure's. */
function pgUsers(m: Manifest, p: Params): BenchUser[] {
  return [...allUsers(m), ...holdUsers(p.holdConnections)];
}

async function startInstance(key: ServerKey, m: Manifest, nodeArgs: string[] = [], serverWorkers = 1): Promise<Instance> {
  const dir = path.join(WORK, 'run', key);
  const mail = path.join(dir, 'mail');
  const bigHome = path.join(WORK, 'big', key);
  if (key !== 'poplar-pg') rescueBig(mail, bigHome);
  rmSync(dir, { recursive: true, force: true });
  if (key !== 'poplar-pg') copyMaildirs(TEMPLATE, mail, [...m.sessionUsers.map((u) => u.name), ...m.retrUsers.map((u) => u.name)]);
  else await freeLeases(); // an interrupted run leaves its leases held until they time out
  const t0 = Date.now();
  const server =
    key === 'poplar'
      ? await startPoplar({ root: ROOT, workDir: path.join(dir, 'poplar'), maildirRoot: mail, users: allUsers(m), nodeArgs, serverWorkers })
      : key === 'poplar-pg'
        ? await startPoplar({ root: ROOT, workDir: path.join(dir, 'poplar'), postgres: { storeConfig: storeConfig(PG_POOL_SIZE) }, users: allUsers(m), nodeArgs, serverWorkers })
        : await startDovecotBench(mail, allUsers(m));
  log(`${server.name} is up on port ${server.port} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  const inst: Instance = { key, server, mail, bigHome, bigInRoot: false };
  const stop = async (): Promise<void> => {
    await server.stop().catch((e: unknown) => log(`warning: stopping ${server.name} failed: ${String(e)}`));
    if (inst.bigInRoot) {
      moveDir(path.join(mail, BIG_USER), path.join(bigHome, BIG_USER));
      inst.bigInRoot = false;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  cleanups.add(stop);
  return inst;
}

// ---------------------------------------------------------------------------
// the four figures

/** Samples CPU use of the server, the machine, at the window's start and end. */
function windowCpu(server: BenchServer, tStart: number, tEnd: number): Promise<{ serverCpuS: number; busyS: number }> {
  const a = at(tStart, () => ({ s: server.cpuSeconds(), b: systemBusySeconds() }));
  const b = at(tEnd, () => ({ s: server.cpuSeconds(), b: systemBusySeconds() }));
  return Promise.all([a, b]).then(([x, y]) => ({ serverCpuS: y.s - x.s, busyS: y.b - x.b }));
}

function windowFigures(cpu: { serverCpuS: number; busyS: number }, genCpuS: number, windowS: number, loadAtStart: number): WindowCpu {
  return { windowS, serverCpuS: cpu.serverCpuS, genCpuS, otherCpuS: Math.max(0, cpu.busyS - cpu.serverCpuS - genCpuS), load1: loadAtStart };
}

async function figIdle(server: BenchServer, ws: LoadWorker[], p: Params): Promise<IdleFigure> {
  const l1 = load1();
  // Warm the accept path first, so code loading is not charged to the connections.
  const w0 = ws[0]!;
  await w0.request({ kind: 'idle', port: server.port, count: 100, concurrency: 50 }, 'idle-ready');
  await w0.request({ kind: 'release' }, 'released');
  await sleep(1000);
  const before = memoryOf(server.pids());
  const counts = shares(p.idleConnections, ws.length);
  try {
    const ready: IdleReady[] = await Promise.all(ws.map((w, i) => w.request({ kind: 'idle', port: server.port, count: counts[i]!, concurrency: 100 }, 'idle-ready')));
    await sleep(1500);
    const after = memoryOf(server.pids());
    const opened = ready.reduce((a, r) => a + r.opened, 0);
    return {
      connections: p.idleConnections,
      opened,
      errors: ready.reduce((a, r) => a + r.errors, 0),
      errorSamples: ready.flatMap((r) => r.errorSamples),
      before,
      after,
      rssPerConn: opened > 0 ? (after.rss - before.rss) / opened : NaN,
      pssPerConn: opened > 0 ? (after.pss - before.pss) / opened : NaN,
      genCpuS: ready.reduce((a, r) => a + cpuS(r), 0),
      load1: l1,
    };
  } finally {
    await Promise.all(ws.map((w) => w.request({ kind: 'release' }, 'released')));
    await sleep(500);
  }
}

/** How long the `hold` figure keeps its connections before asking each for CAPA. */
const HOLD_S = 5;

/**
 * Samples the database connections of the server's processes every 100 ms:
 * pg_stat_activity rows of application_name 'poplar' whose client port is a
 * socket of one of those processes (`ss`), so other programs on the same
 * database are not counted.
 */
function sampleDbConnections(server: BenchServer, poolSize: number, serving: number): { mark(): void; stop(): Promise<DbConnections> } {
  let stopped = false;
  const acc = { maxTotal: 0, maxBusy: 0, whileIdle: NaN, busyWhileIdle: NaN, samples: 0 };
  let marking = false;
  const ownPorts = (): Set<number> => {
    const pids = new Set(server.pids());
    const out = new Set<number>();
    const r = spawnSync('ss', ['-tnpH', 'dport = :5432'], { encoding: 'utf8' });
    for (const line of (r.stdout ?? '').split('\n')) {
      const m = /\S+:(\d+)\s+\S+:5432\s+users:\(\("[^"]*",pid=(\d+)/.exec(line);
      if (m !== null && pids.has(Number(m[2]))) out.add(Number(m[1]));
    }
    return out;
  };
  const run = (async (): Promise<void> => {
    const c = await benchClient();
    try {
      while (!stopped) {
        const ports = ownPorts();
        const { rows } = await c.query<{ client_port: number | null; state: string | null }>(`SELECT client_port, state FROM pg_stat_activity WHERE application_name = 'poplar'`);
        const mine = rows.filter((r) => r.client_port !== null && ports.has(r.client_port));
        const busy = mine.filter((r) => r.state !== 'idle').length;
        acc.samples++;
        acc.maxTotal = Math.max(acc.maxTotal, mine.length);
        acc.maxBusy = Math.max(acc.maxBusy, busy);
        if (marking) {
          acc.whileIdle = mine.length;
          acc.busyWhileIdle = busy;
          marking = false;
        }
        await sleep(100);
      }
    } finally {
      await c.end();
    }
  })();
  return {
    mark: () => void (marking = true),
    stop: async () => {
      await sleep(250); // one more sample for a pending mark
      stopped = true;
      await run;
      return { poolSize, serving, ...acc };
    },
  };
}

async function figHold(server: BenchServer, ws: LoadWorker[], p: Params, pg?: { users: BenchUser[]; poolSize: number; serving: number }): Promise<HoldFigure> {
  const before = memoryOf(server.pids());
  const counts = shares(p.holdConnections, ws.length);
  const logins = pg === undefined ? undefined : split(pg.users.slice(0, p.holdConnections), ws.length);
  const db = pg === undefined ? undefined : sampleDbConnections(server, pg.poolSize, pg.serving);
  const t0 = Date.now();
  try {
    const ready: IdleReady[] = await Promise.all(
      ws.map((w, i) => w.request({ kind: 'idle', port: server.port, count: logins?.[i]?.length ?? counts[i]!, concurrency: 100, ...(logins ? { login: logins[i]! } : {}) }, 'idle-ready')),
    );
    const openS = (Date.now() - t0) / 1000;
    await sleep(HOLD_S * 1000);
    const after = memoryOf(server.pids());
    db?.mark();
    const dbFig = await db?.stop();
    const checked = await Promise.all(ws.map((w) => w.request({ kind: 'idle-check', timeoutMs: 30_000, stat: pg !== undefined }, 'idle-checked')));
    return {
      ...(pg !== undefined ? { loggedIn: true } : {}),
      ...(dbFig !== undefined ? { db: dbFig } : {}),
      connections: p.holdConnections,
      opened: ready.reduce((a, r) => a + r.opened, 0),
      answered: checked.reduce((a, c) => a + c.answered, 0),
      errors: ready.reduce((a, r) => a + r.errors, 0) + checked.reduce((a, c) => a + c.errors, 0),
      errorSamples: [...ready.flatMap((r) => r.errorSamples), ...checked.flatMap((c) => c.errorSamples)].slice(0, 5),
      heldS: HOLD_S,
      before,
      after,
      openS,
    };
  } finally {
    await db?.stop().catch(() => undefined);
    await Promise.all(ws.map((w) => w.request({ kind: 'release' }, 'released')));
    await sleep(pg !== undefined ? 3000 : 1000); // 20,000 sessions end and release their leases
  }
}

/** Poplar's sessions/s with --workers 1 .. cores, each a fresh server on the same maildirs. */
async function figScaling(inst: Instance, ws: LoadWorker[], m: Manifest, o: Options): Promise<ScalingPoint[]> {
  const points: ScalingPoint[] = [];
  for (let n = 1; n <= os.availableParallelism(); n++) {
    const server = await startPoplar({ root: ROOT, workDir: path.join(WORK, 'run', `poplar-scaling-${n}`), maildirRoot: inst.mail, users: allUsers(m), serverWorkers: n });
    try {
      const r = await figSessions(server, ws, m, o.params);
      points.push({ workers: n, rate: r.rate, p99Ms: r.p99Ms, serverCpuS: r.serverCpuS, genCpuS: r.genCpuS, otherCpuS: r.otherCpuS });
      log(`Poplar  scaling:  --workers ${n}: ${r.rate.toFixed(0)} sessions/s, p99 ${r.p99Ms.toFixed(1)} ms; CPU server ${r.serverCpuS.toFixed(2)} s, generator ${r.genCpuS.toFixed(2)} s, other ${r.otherCpuS.toFixed(2)} s`);
    } finally {
      await server.stop();
      rmSync(path.join(WORK, 'run', `poplar-scaling-${n}`), { recursive: true, force: true });
    }
  }
  return points;
}

/**
 * Sessions/s through HAProxy to 1 and then 2 nodes of Poplar on PostgreSQL
 * (each `serve --workers 1`, PROXY protocol v2 from HAProxy), all on the bench database.
 */
async function figNodes(m: Manifest, ws: LoadWorker[], o: Options): Promise<{ points: NodesPoint[]; config: string }> {
  const points: NodesPoint[] = [];
  const dir = path.join(WORK, 'run', 'nodes');
  let config = '';
  for (const n of [1, 2]) {
    const nodes: BenchServer[] = [];
    let hap: (BenchServer & { config: string }) | undefined;
    try {
      await freeLeases();
      for (let i = 0; i < n; i++) {
        nodes.push(await startPoplar({ root: ROOT, workDir: path.join(dir, `node${i + 1}`), postgres: { storeConfig: storeConfig(PG_POOL_SIZE) }, users: allUsers(m), serverWorkers: 1, proxyProtocol: true }));
      }
      hap = await startHaproxy(path.join(dir, 'haproxy'), nodes.map((x) => x.port));
      if (n === 2) config = hap.config;
      const all: BenchServer = {
        ...nodes[0]!,
        port: hap.port,
        pids: () => nodes.flatMap((x) => x.pids()),
        cpuSeconds: () => nodes.reduce((t, x) => t + x.cpuSeconds(), 0),
      };
      const r = await figSessions(all, ws, m, o.params, hap);
      const haproxyCpuS = r.alsoCpuS ?? 0;
      points.push({ nodes: n, rate: r.rate, p50Ms: r.p50Ms, p99Ms: r.p99Ms, sessions: r.sessions, errors: r.errors, errorSamples: r.errorSamples, serverCpuS: r.serverCpuS, haproxyCpuS, genCpuS: r.genCpuS, otherCpuS: Math.max(0, r.otherCpuS - haproxyCpuS), windowS: r.windowS });
      log(
        `Poplar-PG nodes:  ${n} behind HAProxy: ${r.rate.toFixed(0)} sessions/s, p99 ${r.p99Ms.toFixed(1)} ms; CPU nodes ${r.serverCpuS.toFixed(2)} s, HAProxy ${haproxyCpuS.toFixed(2)} s, generator ${r.genCpuS.toFixed(2)} s, other ${Math.max(0, r.otherCpuS - haproxyCpuS).toFixed(2)} s${r.errors > 0 ? `; ${r.errors} errors: ${r.errorSamples.join('; ')}` : ''}`,
      );
    } finally {
      await hap?.stop();
      for (const x of nodes) await x.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return { points, config: config || haproxyConfig(0, [0, 0]) };
}

async function figSessions(server: BenchServer, ws: LoadWorker[], m: Manifest, p: Params, also?: BenchServer): Promise<SessionsFigure & { alsoCpuS?: number }> {
  const l1 = load1();
  const startAt = Date.now() + 500;
  const tWarm = startAt + p.sessionWarmupMs;
  const tEnd = tWarm + p.sessionDurationMs;
  const userSets = split(m.sessionUsers, ws.length);
  const clients = shares(p.sessionClients, ws.length);
  const cpu = windowCpu(server, tWarm, tEnd);
  const alsoCpu = also !== undefined ? windowCpu(also, tWarm, tEnd) : undefined;
  const bin = p.compiledLoad ? compiledLoader('sessload') : undefined;
  const results: SessionsResult[] =
    bin !== undefined
      ? [await runSessload(bin, server.port, m.sessionUsers, p.sessionClients, startAt, p)]
      : await Promise.all(
          ws.map((w, i) =>
            w.request({ kind: 'sessions', port: server.port, users: userSets[i]!, clients: clients[i]!, startAt, warmupMs: p.sessionWarmupMs, durationMs: p.sessionDurationMs }, 'sessions'),
          ),
        );
  p.sessionLoad = bin !== undefined ? 'compiled' : 'node';
  const lat = results.flatMap((r) => r.latenciesUs).sort((a, b) => a - b);
  const sessions = results.reduce((a, r) => a + r.sessions, 0);
  const windowS = p.sessionDurationMs / 1000;
  return {
    rate: sessions / windowS,
    sessions,
    p50Ms: percentile(lat, 50) / 1000,
    p99Ms: percentile(lat, 99) / 1000,
    errors: results.reduce((a, r) => a + r.errors, 0),
    errorSamples: results.flatMap((r) => r.errorSamples),
    ...windowFigures(await cpu, results.reduce((a, r) => a + cpuS(r), 0), windowS, l1),
    ...(alsoCpu !== undefined ? { alsoCpuS: (await alsoCpu).serverCpuS } : {}),
  };
}

async function figRetr(server: BenchServer, ws: LoadWorker[], m: Manifest, p: Params): Promise<RetrFigure> {
  const l1 = load1();
  const startAt = Date.now() + 500;
  const tWarm = startAt + p.retrWarmupMs;
  const tEnd = tWarm + p.retrDurationMs;
  const clients = m.retrUsers.slice(0, p.retrClients).map((u) => ({ user: { name: u.name, password: u.password }, expectedBodyBytes: u.expectedBodyBytes }));
  const active = ws.slice(0, Math.min(ws.length, clients.length));
  const sets = split(clients, active.length);
  const cpu = windowCpu(server, tWarm, tEnd);
  const bin = p.compiledLoad ? compiledLoader('retrload') : undefined;
  const results: RetrResult[] = await Promise.all(
    active.map((w, i) =>
      bin !== undefined
        ? runRetrload(bin, i, server.port, sets[i]!, startAt, p)
        : w.request({ kind: 'retr', port: server.port, clients: sets[i]!, window: p.retrWindow, startAt, warmupMs: p.retrWarmupMs, durationMs: p.retrDurationMs }, 'retr'),
    ),
  );
  p.retrLoad = bin !== undefined ? 'compiled' : 'node';
  const bytes = results.reduce((a, r) => a + r.bytes, 0);
  const windowS = p.retrDurationMs / 1000;
  return {
    mbps: bytes / 1e6 / windowS,
    bytes,
    messages: results.reduce((a, r) => a + r.messages, 0),
    sessions: results.reduce((a, r) => a + r.sessions, 0),
    errors: results.reduce((a, r) => a + r.errors, 0),
    mismatches: results.reduce((a, r) => a + r.mismatches, 0),
    errorSamples: results.flatMap((r) => r.errorSamples),
    ...windowFigures(await cpu, results.reduce((a, r) => a + cpuS(r), 0), windowS, l1),
  };
}

async function figBigDrop(inst: Instance, ws: LoadWorker[], m: Manifest, o: Options): Promise<{ fig: BigDropFigure; cold?: ColdRecord }> {
  const { server } = inst;
  const l1 = load1();
  let firstIsCold = false;
  // On PostgreSQL the maildrop was loaded with the rest (bench/pgdata.ts); there are no caches to drop.
  if (inst.key !== 'poplar-pg') {
    const big = prepareBigCopy(TEMPLATE, inst.bigHome, { dropCaches: o.cold, log });
    if (big.fresh) server.adopt(big.dir);
    moveDir(big.dir, path.join(inst.mail, BIG_USER));
    inst.bigInRoot = true;
    firstIsCold = big.fresh || o.cold;
  }
  const w0 = ws[0]!;
  const check = (r: BigDropResult): void => {
    for (const run of r.runs) {
      if (run.statMessages !== BIG_MESSAGES || run.listLines !== BIG_MESSAGES) {
        throw new Error(`${server.name}: the big maildrop shows ${run.statMessages} messages in STAT and ${run.listLines} LIST lines, expected ${BIG_MESSAGES}`);
      }
    }
  };
  if (firstIsCold) log(`   ${server.name}: first login on the ${BIG_MESSAGES}-message maildrop without caches (this can take minutes) ...`);
  const first = await w0.request({ kind: 'bigdrop', port: server.port, user: m.bigUser, runs: 1, timeoutMs: 900_000 }, 'bigdrop');
  check(first);
  const warm = await w0.request({ kind: 'bigdrop', port: server.port, user: m.bigUser, runs: o.params.bigRuns, timeoutMs: 120_000 }, 'bigdrop');
  check(warm);
  const firstMs = first.runs[0]!.totalMs;
  const fig: BigDropFigure = {
    firstMs,
    firstWasCold: firstIsCold,
    medianMs: median(warm.runs.map((r) => r.totalMs)),
    runsMs: warm.runs.map((r) => r.totalMs),
    loginMedianMs: median(warm.runs.map((r) => r.loginMs)),
    statMedianMs: median(warm.runs.map((r) => r.statMs)),
    genCpuS: cpuS(warm),
    load1: l1,
  };
  return firstIsCold ? { fig, cold: { ms: firstMs, date: new Date().toISOString().replace(/\.\d+Z$/, 'Z') } } : { fig };
}

async function runFigure(f: Figure, inst: Instance, ws: LoadWorker[], m: Manifest, o: Options, out: Results): Promise<void> {
  // Write back what is still dirty (the maildirs copied when the servers started, a previous
  // figure's files) now rather than during this figure's window, for both servers alike.
  spawnSync('sync');
  const t0 = Date.now();
  const name = inst.server.name.padEnd(9);
  const res = out[inst.key];
  const errs = (n: number, samples: string[]): string => (n > 0 ? `; ${n} errors: ${samples.join('; ')}` : '');
  if (f === 'idle') {
    const r = (res.idle = await figIdle(inst.server, ws, o.params));
    log(
      `${name} idle:     ${r.opened}/${r.connections} connections: PSS +${fmtBytes(r.after.pss - r.before.pss)}, RSS +${fmtBytes(r.after.rss - r.before.rss)} (${r.before.processes}→${r.after.processes} processes) = ${r.pssPerConn.toFixed(0)} B/conn PSS, ${r.rssPerConn.toFixed(0)} B/conn RSS${errs(r.errors, r.errorSamples)}`,
    );
  } else if (f === 'hold') {
    const pg = inst.key === 'poplar-pg' ? { users: holdUsers(o.params.holdConnections), poolSize: PG_POOL_SIZE, serving: o.poplarWorkers } : undefined;
    // Poplar on PostgreSQL: an instance of its own whose passwd-file also holds the 20,000 users of
    // this figure (the other figures' instance keeps the same 55-line file as the Maildir servers).
    const holdDir = path.join(WORK, 'run', 'poplar-pg-hold');
    const server =
      pg === undefined
        ? inst.server
        : (await freeLeases(),
          await startPoplar({ root: ROOT, workDir: holdDir, postgres: { storeConfig: storeConfig(PG_POOL_SIZE) }, users: pgUsers(m, o.params), serverWorkers: o.poplarWorkers }));
    let r: HoldFigure;
    try {
      r = res.hold = await figHold(server, ws, o.params, pg);
    } finally {
      if (server !== inst.server) {
        await server.stop();
        rmSync(holdDir, { recursive: true, force: true });
      }
    }
    if (r.db) {
      log(
        `${name} hold:     database connections (pool_size ${r.db.poolSize} × ${r.db.serving} processes): at most ${r.db.maxTotal} open, ${r.db.maxBusy} busy; ${r.db.whileIdle} open, ${r.db.busyWhileIdle} busy while the ${r.opened} sessions sat idle`,
      );
    }
    log(
      `${name} hold:     ${r.opened}/${r.connections} ${r.loggedIn ? 'logged in' : 'greeted'} in ${r.openS.toFixed(1)} s, ${r.answered} answered ${r.loggedIn ? 'STAT' : 'CAPA'} after ${r.heldS} s; RSS +${fmtBytes(r.after.rss - r.before.rss)} (${r.before.processes}→${r.after.processes} processes)${errs(r.errors, r.errorSamples)}`,
    );
  } else if (f === 'scaling') {
    if (inst.key !== 'poplar') return; // Dovecot sizes its own process pool; PostgreSQL has the nodes figure
    res.scaling = await figScaling(inst, ws, m, o);
  } else if (f === 'nodes') {
    if (inst.key !== 'poplar-pg') return;
    const r = await figNodes(m, ws, o);
    res.nodes = r.points;
    res.haproxy = r.config;
  } else if (f === 'sessions') {
    const r = (res.sessions = await figSessions(inst.server, ws, m, o.params));
    log(
      `${name} sessions: ${r.rate.toFixed(0)}/s, p50 ${r.p50Ms.toFixed(1)} ms, p99 ${r.p99Ms.toFixed(1)} ms; CPU in ${r.windowS} s: server ${r.serverCpuS.toFixed(2)} s, generator ${r.genCpuS.toFixed(2)} s, other ${r.otherCpuS.toFixed(2)} s${errs(r.errors, r.errorSamples)}`,
    );
  } else if (f === 'retr') {
    // The rate of one window varies a lot on a machine whose 2 cores the servers share with the
    // load generator (800 to 1,400 MB/s for the same server, run after run): the median of three.
    const rounds: RetrFigure[] = [];
    for (let i = 0; i < RETR_ROUNDS; i++) rounds.push(await figRetr(inst.server, ws, m, o.params));
    rounds.sort((a, b) => a.mbps - b.mbps);
    const r = (res.retr = { ...rounds[Math.floor(rounds.length / 2)]!, roundsMbps: rounds.map((x) => x.mbps) });
    log(
      `${name} retr:     ${r.mbps.toFixed(1)} MB/s (${r.messages} messages, ${r.sessions} sessions); CPU in ${r.windowS} s: server ${r.serverCpuS.toFixed(2)} s, generator ${r.genCpuS.toFixed(2)} s, other ${r.otherCpuS.toFixed(2)} s${errs(r.errors, r.errorSamples)}`,
    );
  } else {
    const { fig: r, cold } = await figBigDrop(inst, ws, m, o);
    res.bigdrop = r;
    if (cold) writeCold(inst.key, cold);
    log(
      `${name} bigdrop:  first login+STAT+LIST ${(r.firstMs / 1000).toFixed(2)} s (${inst.key === 'poplar-pg' ? 'the first since the start' : r.firstWasCold ? 'no caches' : 'caches from an earlier run'}); warm median ${r.medianMs.toFixed(0)} ms (${r.runsMs.map((x) => x.toFixed(0)).join(', ')}; +OK to PASS at ${r.loginMedianMs.toFixed(0)} ms, STAT at ${r.statMedianMs.toFixed(0)} ms)`,
    );
  }
  log(`${' '.repeat(9)} (${f}: ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

// ---------------------------------------------------------------------------

function parseOptions(): Options {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      server: { type: 'string' },
      workers: { type: 'string' },
      'poplar-workers': { type: 'string' },
      cold: { type: 'boolean', default: false },
      'cpu-prof': { type: 'boolean', default: false },
      'node-load': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  let figures = FIGURES;
  if (values.only !== undefined) {
    const want = values.only.split(',').map((s) => s.trim());
    for (const w of want) if (!FIGURES.includes(w as Figure)) throw new Error(`--only: unknown figure "${w}" (known: ${FIGURES.join(', ')})`);
    figures = FIGURES.filter((f) => want.includes(f));
  }
  let servers: ServerKey[] = SERVERS;
  const serversGiven = values.server !== undefined;
  if (values.server !== undefined) {
    const want = values.server.split(',').map((x) => x.trim());
    for (const w of want) if (!SERVERS.includes(w as ServerKey)) throw new Error(`--server: unknown server "${w}" (known: ${SERVERS.join(', ')})`);
    servers = SERVERS.filter((x) => want.includes(x));
  }
  const cpuProf = values['cpu-prof'] === true;
  if (cpuProf) {
    // Poplar on Maildir unless --server names poplar-pg.
    servers = serversGiven && servers.includes('poplar-pg') ? ['poplar-pg'] : ['poplar'];
    if (values.only === undefined) figures = ['sessions'];
  }
  const cores = os.availableParallelism();
  const workers = values.workers !== undefined ? Number(values.workers) : Math.min(4, Math.max(2, cores));
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new Error('--workers: a whole number from 1 to 64');
  const poplarWorkers = values['poplar-workers'] !== undefined ? Number(values['poplar-workers']) : cpuProf ? 1 : cores;
  if (!Number.isInteger(poplarWorkers) || poplarWorkers < 1 || poplarWorkers > 64) throw new Error('--poplar-workers: a whole number from 1 to 64');
  const params = { ...(values.quick === true ? QUICK : FULL), ...(values['node-load'] === true ? { compiledLoad: false } : {}) };
  return { figures, servers, serversGiven, params, workers, poplarWorkers, cpuProf, quick: values.quick === true, cold: values.cold === true };
}

/** docs/benchmarks.md with its PostgreSQL section replaced (or added before "What is measured"). */
function replacePgSection(doc: string, section: string): string {
  const a = doc.indexOf(PG_SECTION_START);
  const b = doc.indexOf(PG_SECTION_END);
  if (a >= 0 && b > a) return doc.slice(0, a) + section.trimEnd() + doc.slice(b + PG_SECTION_END.length);
  const at = doc.indexOf('## What is measured');
  return at < 0 ? doc + '\n' + section : doc.slice(0, at) + section + '\n' + doc.slice(at);
}

let isWrapper = false;

/** Re-runs this script with a higher open-files limit (the idle-connection figure needs thousands of sockets). */
async function reexecWithFileLimit(): Promise<number> {
  isWrapper = true;
  const [cmd, args] = withFileLimit(65536, [process.execPath, ...process.execArgv, process.argv[1]!, ...process.argv.slice(2)]);
  const child = spawn(cmd, args, { stdio: 'inherit', env: { ...process.env, POPLAR_BENCH_REEXEC: '1' } });
  const fwd = (sig: NodeJS.Signals): void => void child.kill(sig);
  process.on('SIGINT', fwd);
  process.on('SIGTERM', fwd);
  return new Promise((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + (os.constants.signals[signal] ?? 0) : 1))));
}

async function main(): Promise<number> {
  const o = parseOptions();
  if (openFileLimit() < 8192 && process.env['POPLAR_BENCH_REEXEC'] === undefined) return reexecWithFileLimit();
  if (openFileLimit() < 2 * o.params.idleConnections + 1000) throw new Error(`the open-files limit is ${openFileLimit()}; raise it (ulimit -n 65536) and run again`);
  if (o.servers.includes('dovecot')) {
    if (!dovecotAvailable()) throw new Error('Dovecot is not installed (/usr/sbin/dovecot); install dovecot-pop3d, or run with --server poplar');
    if (process.getuid?.() !== 0) throw new Error('the Dovecot instance must be started as root (as in the tests); run as root, or with --server poplar');
  }
  const started = new Date();
  ensureBuilt();
  const mi = machineInfo('/usr/sbin/dovecot');
  log(`machine: ${mi.cpu}, ${mi.cores} cores, ${mi.ramGiB} GiB, ${mi.kernel}, Node ${mi.node}, ${mi.dovecot}; load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (load1() > mi.cores / 2) log(`warning: the machine is busy (load average ${load1().toFixed(2)} on ${mi.cores} cores); figures will be low and noisy`);
  mkdirSync(WORK, { recursive: true });
  const m = ensureTemplate(TEMPLATE, log);

  const results: Results = { poplar: {}, dovecot: {}, 'poplar-pg': {} };
  let pgVersion = '';
  let pgAutovacuum = '';
  if (o.servers.includes('poplar-pg')) {
    const why = await postgresReachable();
    if (why !== null && o.serversGiven) throw new Error(`poplar-pg: PostgreSQL does not answer (${why}); set POPLAR_BENCH_PG_URL or leave poplar-pg out`);
    if (why !== null) {
      log(`PostgreSQL does not answer (${why}): Poplar on PostgreSQL is left out`);
      o.servers = o.servers.filter((x) => x !== 'poplar-pg');
    } else {
      if (o.figures.includes('nodes') && !haproxyAvailable()) throw new Error('the nodes figure needs HAProxy (haproxy); install it or leave nodes out (--only)');
      const loaded = await ensurePgData({ root: ROOT, work: WORK, templateDir: TEMPLATE, manifest: m, log });
      results['poplar-pg'].pgLoad = { loadedAt: loaded.loadedAt, loadS: loaded.loadS };
      const c = await benchClient();
      const setting = async (name: string): Promise<string> => (await c.query<{ v: string }>(`SELECT current_setting($1) AS v`, [name])).rows[0]?.v ?? '?';
      pgVersion = (await setting('server_version')).split(' ')[0]!;
      pgAutovacuum = await setting('autovacuum');
      await c.end();
      const vacS = await maintain();
      log(`PostgreSQL ${pgVersion} (autovacuum = ${pgAutovacuum}); VACUUM (ANALYZE) of schema ${PG_SCHEMA} took ${vacS.toFixed(1)} s`);
    }
  }
  if (o.cpuProf) {
    const profDir = path.join(WORK, 'prof');
    rmSync(profDir, { recursive: true, force: true });
    mkdirSync(profDir, { recursive: true });
    const inst = await startInstance(o.servers[0]!, m, ['--cpu-prof', '--cpu-prof-dir', profDir], 1);
    const ws = await startWorkers(o.workers);
    cleanups.add(() => ws.forEach((w) => w.kill()));
    for (const f of o.figures) await runFigure(f, inst, ws, m, o, results);
    await cleanUp(); // Poplar writes the profile when it exits
    const files = readdirSync(profDir).filter((f) => f.endsWith('.cpuprofile'));
    if (files.length === 0) throw new Error(`Poplar wrote no .cpuprofile to ${profDir}`);
    const text = formatProfile(summariseProfile(path.join(profDir, files[0]!), ROOT, 25));
    log('\n' + text);
    writeFileSync(path.join(WORK, 'profile.txt'), text + '\n');
    log(`\nsummary in bench/.work/profile.txt; the profile itself: ${path.relative(ROOT, path.join(profDir, files[0]!))} (Chrome DevTools shows the call tree)`);
    return 0;
  }

  const insts: Instance[] = [];
  for (const s of o.servers) {
    const inst = await startInstance(s, m, [], o.poplarWorkers);
    results[s].settings = inst.server.settings;
    insts.push(inst);
  }
  const ws = await startWorkers(o.workers);
  cleanups.add(() => ws.forEach((w) => w.kill()));
  for (const f of o.figures) {
    for (const inst of insts) await runFigure(f, inst, ws, m, o, results);
  }
  await cleanUp();

  const cold = readCold();
  for (const k of ['poplar', 'dovecot'] as const) {
    const c = cold[k];
    if (c !== undefined && o.figures.includes('bigdrop')) results[k].cold = c;
  }
  const runtimeS = (Date.now() - started.getTime()) / 1000;
  log('\n' + plainTable(rows(results, o.params)));
  const withPg = o.servers.includes('poplar-pg');
  if (withPg) log('\nPoplar on PostgreSQL:\n' + pgPlainTable(pgRows(results, o.params)));
  const env = { postgres: `PostgreSQL ${pgVersion} (autovacuum = ${pgAutovacuum})`, haproxy: haproxyAvailable() ? `HAProxy ${haproxyVersion()}` : 'not installed', cores: mi.cores };
  const pgText = withPg ? pgSection(results, o, started, runtimeS, env) : undefined;
  const complete = !o.quick && o.servers.length === SERVERS.length && o.figures.length === FIGURES.length;
  const target = complete ? DOC : path.join(WORK, 'last-run.md');
  writeFileSync(target, markdown(results, mi, o, m, runtimeS, started, pgText));
  log(`\nwrote ${path.relative(process.cwd(), target) || target} (run took ${runtimeS.toFixed(0)} s)`);
  const pgComparable = withPg && o.servers.includes('dovecot') && (['sessions', 'retr', 'bigdrop'] as const).every((f) => o.figures.includes(f));
  if (!complete && !o.quick && pgComparable && pgText !== undefined) {
    writeFileSync(DOC, replacePgSection(readFileSync(DOC, 'utf8'), pgText));
    log(`rewrote the PostgreSQL section of ${path.relative(process.cwd(), DOC)}`);
  }
  const failed = SERVERS.some((k) => (results[k].sessions?.errors ?? 0) > 0 || (results[k].retr?.errors ?? 0) > 0 || (results[k].idle?.errors ?? 0) > 0 || (results[k].hold?.errors ?? 0) > 0 || (results[k].nodes ?? []).some((n) => n.errors > 0));
  if (failed) log('warning: some operations failed; see the errors above before trusting the figures');
  return 0;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.on(sig, () => {
    if (isWrapper) return; // the child has the signal too (or it was forwarded); wait for it to exit
    if (interrupted) return log(`${sig}: still stopping the servers ...`);
    interrupted = true;
    log(`\n${sig}: stopping the servers ...`);
    void cleanUp()
      .then(killChildren)
      .finally(() => process.exit(130));
  });
}

process.on('uncaughtException', (e) => {
  process.stderr.write(`bench: internal error: ${e.stack ?? e.message}\n`);
  if (interrupted) return;
  interrupted = true;
  void cleanUp()
    .then(killChildren)
    .finally(() => process.exit(70));
});

// After a signal the handler above finishes the cleanup and exits; main() failing meanwhile changes nothing.
main().then(
  async (code) => {
    await cleanUp();
    if (!interrupted) process.exit(code);
  },
  async (e: unknown) => {
    if (interrupted) return;
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    await cleanUp();
    process.exit(1);
  },
);
