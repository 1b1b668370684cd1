/**
 * Result types of bench/run.ts and the report it prints and writes to
 * docs/benchmarks.md.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { MachineInfo, MemorySample } from './procfs.js';
import { BIG_MESSAGES, RETR_MESSAGES, RETR_MESSAGE_SIZE, SESSION_MESSAGES, SESSION_USERS, type Manifest } from './data.js';

export type ServerKey = 'poplar' | 'dovecot' | 'poplar-pg';
export type Figure = 'idle' | 'sessions' | 'retr' | 'bigdrop' | 'hold' | 'scaling' | 'nodes';

export interface Params {
  sessionClients: number;
  sessionWarmupMs: number;
  sessionDurationMs: number;
  retrClients: number;
  retrWindow: number;
  retrWarmupMs: number;
  retrDurationMs: number;
  bigRuns: number;
  idleConnections: number;
  /** Connections held at once by the `hold` figure. */
  holdConnections: number;
  /** sessions/s and RETR: the compiled generators (bench/sessload.c, bench/retrload.c) when a C compiler is there; false: the Node one. */
  compiledLoad: boolean;
  /** Which generator the sessions/s figure actually used (set while running). */
  sessionLoad?: 'compiled' | 'node';
  /** Which generator the RETR figure actually used (set while running): bench/retrload.c or the Node one. */
  retrLoad?: 'compiled' | 'node';
}

export interface Options {
  figures: Figure[];
  servers: ServerKey[];
  /** --server was given (a server that cannot run is an error then, not left out). */
  serversGiven: boolean;
  params: Params;
  workers: number;
  /** `poplar serve --workers N` for the run (Dovecot runs its own process pool). */
  poplarWorkers: number;
  cpuProf: boolean;
  quick: boolean;
  cold: boolean;
}

/** CPU accounting of one measuring window. */
export interface WindowCpu {
  windowS: number;
  /** The server's processes. */
  serverCpuS: number;
  /** The load generator processes (their own process.cpuUsage()). */
  genCpuS: number;
  /** Everything else on the machine (other users of the CPU), from /proc/stat. */
  otherCpuS: number;
  /** 1-minute load average when the figure started. */
  load1: number;
}

export interface SessionsFigure extends WindowCpu {
  rate: number;
  sessions: number;
  p50Ms: number;
  p99Ms: number;
  errors: number;
  errorSamples: string[];
}

export interface RetrFigure extends WindowCpu {
  mbps: number;
  /** Every window's rate, lowest first (the figure is the median one's). */
  roundsMbps?: number[];
  bytes: number;
  messages: number;
  sessions: number;
  errors: number;
  mismatches: number;
  errorSamples: string[];
}

export interface ColdRecord {
  ms: number;
  date: string;
}

export interface BigDropFigure {
  /** The first login of this run (cold when `firstWasCold`). */
  firstMs: number;
  firstWasCold: boolean;
  medianMs: number;
  runsMs: number[];
  loginMedianMs: number;
  statMedianMs: number;
  genCpuS: number;
  load1: number;
}

export interface IdleFigure {
  connections: number;
  opened: number;
  errors: number;
  errorSamples: string[];
  before: MemorySample;
  after: MemorySample;
  rssPerConn: number;
  pssPerConn: number;
  genCpuS: number;
  load1: number;
}

export interface HoldFigure {
  connections: number;
  /** Greeted and still open once all were opened. */
  opened: number;
  /** Answered CAPA completely after being held. */
  answered: number;
  errors: number;
  errorSamples: string[];
  heldS: number;
  before: MemorySample;
  after: MemorySample;
  openS: number;
  /** Each connection logged in as a user of its own (TRANSACTION state) and checked with STAT instead of CAPA. */
  loggedIn?: boolean;
  /** Poplar on PostgreSQL: the database connections of Poplar's processes (pg_stat_activity, application_name = 'poplar'). */
  db?: DbConnections;
}

export interface DbConnections {
  /** `[store.postgres] pool_size` (per process). */
  poolSize: number;
  /** Poplar processes that serve sessions (workers), each with its own pool. */
  serving: number;
  /** Most connections seen at once while the connections were opened, logged in and held. */
  maxTotal: number;
  /** Most of them running a query or in a transaction at once (state other than idle). */
  maxBusy: number;
  /** Connections while all sessions sat idle, just before the check. */
  whileIdle: number;
  busyWhileIdle: number;
  samples: number;
}

/** Sessions/s through HAProxy to N Poplar-on-PostgreSQL nodes. */
export interface NodesPoint {
  nodes: number;
  rate: number;
  p50Ms: number;
  p99Ms: number;
  sessions: number;
  errors: number;
  errorSamples: string[];
  /** All nodes' processes. */
  serverCpuS: number;
  haproxyCpuS: number;
  genCpuS: number;
  /** Everything else, PostgreSQL included. */
  otherCpuS: number;
  windowS: number;
}

/** Poplar's sessions/s with `serve --workers N`, for N = 1 .. cores. */
export interface ScalingPoint {
  workers: number;
  rate: number;
  p99Ms: number;
  serverCpuS: number;
  genCpuS: number;
  otherCpuS: number;
}

export interface ServerResults {
  sessions?: SessionsFigure;
  retr?: RetrFigure;
  bigdrop?: BigDropFigure;
  idle?: IdleFigure;
  hold?: HoldFigure;
  scaling?: ScalingPoint[];
  nodes?: NodesPoint[];
  settings?: string;
  /** Poplar on PostgreSQL: when the bench schema was loaded and how long it took. */
  pgLoad?: { loadedAt: string; loadS: number };
  /** Poplar on PostgreSQL: the HAProxy configuration of the nodes figure. */
  haproxy?: string;
  /** The last cold first login on the 100k maildrop (this run or an earlier one). */
  cold?: ColdRecord;
}

export type Results = Record<ServerKey, ServerResults>;

// ---------------------------------------------------------------------------

export function fmtBytes(n: number): string {
  const a = Math.abs(n);
  if (a >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (a >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n.toFixed(0)} B`;
}

function num(x: number | undefined, digits: number): string {
  if (x === undefined || !Number.isFinite(x)) return 'n/a';
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

export interface Row {
  figure: string;
  unit: string;
  poplar: number | undefined;
  dovecot: number | undefined;
  digits: number;
  better: 'higher' | 'lower';
}

export function rows(r: Results, p: Params): Row[] {
  const P = r.poplar;
  const D = r.dovecot;
  const perSession = (s: SessionsFigure | undefined): number | undefined => (s && s.sessions > 0 ? (s.serverCpuS * 1000) / s.sessions : undefined);
  const perMB = (s: RetrFigure | undefined): number | undefined => (s && s.bytes > 0 ? (s.serverCpuS * 1000) / (s.bytes / 1e6) : undefined);
  return [
    { figure: `Sessions per second (connect, USER, PASS, STAT, QUIT; ${p.sessionClients} clients, ${SESSION_USERS} users)`, unit: 'sessions/s', poplar: P.sessions?.rate, dovecot: D.sessions?.rate, digits: 0, better: 'higher' },
    { figure: 'Session latency, median', unit: 'ms', poplar: P.sessions?.p50Ms, dovecot: D.sessions?.p50Ms, digits: 1, better: 'lower' },
    { figure: 'Session latency, 99th percentile', unit: 'ms', poplar: P.sessions?.p99Ms, dovecot: D.sessions?.p99Ms, digits: 1, better: 'lower' },
    { figure: 'Server CPU time per session', unit: 'ms', poplar: perSession(P.sessions), dovecot: perSession(D.sessions), digits: 2, better: 'lower' },
    { figure: `RETR throughput (${p.retrClients} clients, ${RETR_MESSAGE_SIZE / 2 ** 20} MiB messages, ${p.retrWindow} RETRs in flight)`, unit: 'MB/s', poplar: P.retr?.mbps, dovecot: D.retr?.mbps, digits: 1, better: 'higher' },
    { figure: 'Server CPU time per MB retrieved', unit: 'ms', poplar: perMB(P.retr), dovecot: perMB(D.retr), digits: 2, better: 'lower' },
    { figure: `${num(BIG_MESSAGES, 0)}-message maildrop: login + STAT + LIST, warm, median of ${p.bigRuns}`, unit: 'ms', poplar: P.bigdrop?.medianMs, dovecot: D.bigdrop?.medianMs, digits: 0, better: 'lower' },
    { figure: `${num(BIG_MESSAGES, 0)}-message maildrop: first login + STAT + LIST without caches (see the dates below)`, unit: 's', poplar: P.cold ? P.cold.ms / 1000 : undefined, dovecot: D.cold ? D.cold.ms / 1000 : undefined, digits: 1, better: 'lower' },
    { figure: `Memory per idle connection (${num(p.idleConnections, 0)} greeted, pre-login), PSS`, unit: 'bytes', poplar: P.idle?.pssPerConn, dovecot: D.idle?.pssPerConn, digits: 0, better: 'lower' },
    { figure: `Memory per idle connection (${num(p.idleConnections, 0)} greeted, pre-login), RSS`, unit: 'bytes', poplar: P.idle?.rssPerConn, dovecot: D.idle?.rssPerConn, digits: 0, better: 'lower' },
    { figure: `Connections held at once (${num(p.holdConnections, 0)} opened, each answers CAPA after ${P.hold?.heldS ?? D.hold?.heldS ?? 5} s)`, unit: 'connections', poplar: P.hold?.answered, dovecot: D.hold?.answered, digits: 0, better: 'higher' },
  ];
}

function ratio(row: Row): string {
  if (row.poplar === undefined || row.dovecot === undefined || !Number.isFinite(row.poplar) || !Number.isFinite(row.dovecot) || row.dovecot === 0) return 'n/a';
  return (row.poplar / row.dovecot).toFixed(2);
}

export function markdownTable(rs: Row[]): string {
  const lines = ['| Figure | Unit | Poplar | Dovecot | Poplar/Dovecot | Better |', '|---|---|--:|--:|--:|---|'];
  for (const r of rs) lines.push(`| ${r.figure} | ${r.unit} | ${num(r.poplar, r.digits)} | ${num(r.dovecot, r.digits)} | ${ratio(r)} | ${r.better} |`);
  return lines.join('\n');
}

export function plainTable(rs: Row[]): string {
  const head = ['Figure', 'Poplar', 'Dovecot', 'P/D', 'better'];
  const body = rs.map((r) => [`${r.figure} [${r.unit}]`, num(r.poplar, r.digits), num(r.dovecot, r.digits), ratio(r), r.better]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const fmt = (cols: string[]): string => cols.map((c, i) => (i === 0 || i === 4 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [fmt(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(fmt)].join('\n');
}

function cpuTable(r: Results): string {
  const s = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : `${x.toFixed(2)} s`);
  const l = (x: number | undefined): string => (x === undefined ? 'n/a' : x.toFixed(2));
  const lines = ['| Figure | Server | Window | Server CPU | Load generator CPU | Other processes CPU | Load average at start |', '|---|---|--:|--:|--:|--:|--:|'];
  for (const key of ['poplar', 'dovecot'] as const) {
    const name = key === 'poplar' ? 'Poplar' : 'Dovecot';
    const x = r[key].sessions;
    if (x) lines.push(`| sessions/s | ${name} | ${x.windowS} s | ${s(x.serverCpuS)} | ${s(x.genCpuS)} | ${s(x.otherCpuS)} | ${l(x.load1)} |`);
  }
  for (const key of ['poplar', 'dovecot'] as const) {
    const name = key === 'poplar' ? 'Poplar' : 'Dovecot';
    const x = r[key].retr;
    if (x) lines.push(`| RETR MB/s | ${name} | ${x.windowS} s | ${s(x.serverCpuS)} | ${s(x.genCpuS)} | ${s(x.otherCpuS)} | ${l(x.load1)} |`);
  }
  for (const key of ['poplar', 'dovecot'] as const) {
    const b = r[key].bigdrop;
    if (b) lines.push(`| 100k maildrop, warm runs | ${key === 'poplar' ? 'Poplar' : 'Dovecot'} | — | — | ${s(b.genCpuS)} | — | ${l(b.load1)} |`);
  }
  for (const key of ['poplar', 'dovecot'] as const) {
    const i = r[key].idle;
    if (i) lines.push(`| opening the idle connections | ${key === 'poplar' ? 'Poplar' : 'Dovecot'} | — | — | ${s(i.genCpuS)} | — | ${l(i.load1)} |`);
  }
  return lines.join('\n');
}

export function details(r: Results): string {
  const out: string[] = [];
  for (const key of ['poplar', 'dovecot'] as const) {
    const x = r[key];
    const name = key === 'poplar' ? 'Poplar' : 'Dovecot';
    if (x.sessions) out.push(`- ${name}, sessions: ${x.sessions.sessions} sessions in ${x.sessions.windowS} s, ${x.sessions.errors} failed${x.sessions.errorSamples.length ? ` (${x.sessions.errorSamples.join('; ')})` : ''}.`);
    if (x.retr) {
      out.push(
        `- ${name}, RETR: ${x.retr.roundsMbps ? `windows of ${x.retr.roundsMbps.map((v) => v.toFixed(0)).join(', ')} MB/s; the median one: ` : ''}${(x.retr.bytes / 1e6).toFixed(0)} MB in ${x.retr.windowS} s, ${x.retr.messages} messages, ${x.retr.sessions} sessions, ${x.retr.errors} errors, ${x.retr.mismatches} replies of the wrong length${x.retr.errorSamples.length ? ` (${x.retr.errorSamples.join('; ')})` : ''}.`,
      );
    }
    if (x.bigdrop) {
      const b = x.bigdrop;
      out.push(
        `- ${name}, 100k maildrop: first login of this run ${(b.firstMs / 1000).toFixed(2)} s (${b.firstWasCold ? 'without caches' : 'with the caches of an earlier run'}); warm runs ${b.runsMs.map((v) => v.toFixed(0)).join(', ')} ms; the +OK to PASS came after ${b.loginMedianMs.toFixed(0)} ms and the STAT reply after ${b.statMedianMs.toFixed(0)} ms (medians).`,
      );
    }
    if (x.cold) out.push(`- ${name}, 100k maildrop without caches: ${(x.cold.ms / 1000).toFixed(1)} s, measured ${x.cold.date}.`);
    if (x.hold) {
      const h = x.hold;
      out.push(
        `- ${name}, ${h.connections} connections held: ${h.opened} greeted and open after ${h.openS.toFixed(1)} s of opening, ${h.answered} answered CAPA after ${h.heldS} s; ${h.before.processes} → ${h.after.processes} processes; RSS ${fmtBytes(h.before.rss)} → ${fmtBytes(h.after.rss)} (${fmtBytes((h.after.rss - h.before.rss) / Math.max(1, h.opened))} per connection)${h.errors ? `; ${h.errors} errors (${h.errorSamples.join('; ')})` : '; no errors'}.`,
      );
    }
    if (x.scaling) {
      out.push(
        `- ${name}, sessions/s by \`serve --workers N\`: ${x.scaling.map((s) => `N=${s.workers}: ${s.rate.toFixed(0)}/s (p99 ${s.p99Ms.toFixed(1)} ms; CPU server ${s.serverCpuS.toFixed(1)} s, generator ${s.genCpuS.toFixed(1)} s, other ${s.otherCpuS.toFixed(1)} s)`).join('; ')}.`,
      );
    }
    if (x.idle) {
      const i = x.idle;
      out.push(
        `- ${name}, idle connections: ${i.opened} of ${i.connections} open; ${i.before.processes} → ${i.after.processes} processes; PSS ${fmtBytes(i.before.pss)} → ${fmtBytes(i.after.pss)}; RSS ${fmtBytes(i.before.rss)} → ${fmtBytes(i.after.rss)}${i.errors ? `; ${i.errors} errors (${i.errorSamples.join('; ')})` : ''}.`,
      );
    }
  }
  return out.join('\n');
}

function machineLines(mi: MachineInfo): string {
  return [
    `- CPU: ${mi.cpu}, ${mi.cores} logical cores`,
    `- RAM: ${mi.ramGiB} GiB`,
    `- Kernel: ${mi.kernel}; OS: ${mi.os}`,
    `- Node.js: ${mi.node}`,
    `- Dovecot: ${mi.dovecot}`,
  ].join('\n');
}

export function markdown(r: Results, mi: MachineInfo, o: Options, m: Manifest, runtimeS: number, when: Date, pgText?: string): string {
  const p = o.params;
  const rs = rows(r, p);
  const busy = (['poplar', 'dovecot'] as const).some((k) => (r[k].sessions?.otherCpuS ?? 0) > 0.1 * (r[k].sessions?.windowS ?? 1) || (r[k].retr?.otherCpuS ?? 0) > 0.1 * (r[k].retr?.windowS ?? 1));
  return `# Benchmarks: Poplar and Dovecot

This file is written by \`npm run bench\` (bench/run.ts); change the script, not this file.
Last run: ${when.toISOString().replace(/\.\d+Z$/, 'Z')}, ${runtimeS.toFixed(0)} s.

## How to run

\`\`\`sh
npm run bench                          # full run (1–2 minutes once the data exists); rewrites this file
npm run bench -- --quick               # shorter windows; the report goes to bench/.work/last-run.md
npm run bench -- --only sessions,retr  # a subset of: idle, sessions, retr, bigdrop, hold, scaling, nodes (report to bench/.work/)
npm run bench -- --server poplar       # some servers only, of: poplar, poplar-pg, dovecot (report to bench/.work/)
npm run bench -- --only sessions,retr,bigdrop,hold,nodes  # without --quick: rewrites the PostgreSQL section below
npm run bench -- --cold                # also measure the 100k maildrop's first login without caches (minutes)
npm run bench -- --cpu-prof            # Poplar's sessions/s under node --cpu-prof; prints where the time goes
npm run bench -- --workers 4           # number of load generator processes
\`\`\`

It needs root and Dovecot 2.3 (\`/usr/sbin/dovecot\`), as the Dovecot comparison tests do; Poplar on
PostgreSQL (\`poplar-pg\`) is measured when the database answers (\`POPLAR_BENCH_PG_URL\`, default
\`postgres://postgres@127.0.0.1:5432/test\`, schema \`poplar_bench\`), its nodes figure needs HAProxy.
It runs \`npm run build\` when \`dist/\` is missing or older than \`src/\`, and keeps its data in
\`bench/.work/\` (git-ignored). The first run generates the template maildirs and copies the
100,000-message maildrop once per server, which takes several minutes, mostly for Poplar's
first login on that maildrop (see below), and loads the template into PostgreSQL with
\`poplar migrate\` (once per template; tens of minutes on a busy 2-core machine); later runs reuse them.

## Machine

${machineLines(mi)}

## Results

${markdownTable(rs)}

"Poplar/Dovecot" is Poplar's figure divided by Dovecot's: where higher is better, above 1
favours Poplar; where lower is better, below 1 favours Poplar. MB = 10^6 bytes.

CPU time during each measuring window: the server (all its processes, from \`/proc/<pid>/stat\`),
the load generator (${loadCpuText(p, o.workers)}), and the rest of the machine
(\`/proc/stat\` minus those two):

${cpuTable(r)}

${
  busy
    ? `**Caution:** other processes used a noticeable share of the ${mi.cores} cores while this run measured
(the "Other processes" column). Servers, load generator and those processes compete for the same
cores, so the rates (and even their Poplar/Dovecot ratios) are low and vary from run to run;
the CPU time per session / per MB and the memory figures are steadier. Run again on an idle
machine for figures to quote.`
    : `Servers and load generator share the same ${mi.cores} cores, so the rates are whole-machine figures;
the CPU time per session / per MB depends less on the machine.`
}

Details:

${details(r)}

${pgText ?? ''}## What is measured

Both servers run on 127.0.0.1 with plaintext USER/PASS, passwd-file users with \`{PLAIN}\`
passwords (the same cheap check on both sides) and one Maildir per user under a common root.
Both are started before the first figure; each figure runs against Poplar and then against
Dovecot, so the two runs of a figure are close in time. The load generator (bench/load.ts) is
${o.workers} separate Node processes speaking raw POP3 over TCP sockets${compiledText(p, o.workers)}.

1. **Sessions per second.** ${p.sessionClients} clients, each in a loop: connect, read the greeting,
   USER, PASS, STAT, QUIT, wait until the server closes the connection. Every command waits
   for its reply. ${SESSION_USERS} users with ${SESSION_MESSAGES} messages each (1.5–7.5 kB); a client always takes a user
   that no other client is using at that moment (Poplar locks the maildrop per session).
   ${p.sessionWarmupMs / 1000} s of warm-up (which also lets each server build its caches for these maildrops), then
   ${p.sessionDurationMs / 1000} s measured: sessions that end inside the window count; latency is from connect() to
   the reply to QUIT.
2. **RETR throughput.** ${p.retrClients} clients, each with its own user whose maildrop holds ${RETR_MESSAGES} messages of
   ${RETR_MESSAGE_SIZE / 2 ** 20} MiB (LF line ends on disk, so both servers convert to CRLF; every 97th line starts
   with "." and is dot-stuffed). Each session logs in, pipelines RETR 1..${RETR_MESSAGES} with ${p.retrWindow} commands in
   flight, parses each reply up to its terminating "." line and checks its length against the
   expected one, then QUITs; clients repeat sessions for ${p.retrWarmupMs / 1000} s of warm-up plus ${p.retrDurationMs / 1000} s measured.
   A window's figure is all bytes received in it; each server gets three windows and the table
   shows the median one (the details list all three). Servers and load generator share the
   cores, so a window's rate also depends on how the scheduler places them; the three windows
   show how much that moved in this run.
3. **${BIG_MESSAGES.toLocaleString('en-US')}-message maildrop.** One user with ${BIG_MESSAGES.toLocaleString('en-US')} small messages (${(m.bytes.big / 1e6).toFixed(0)} MB) in \`cur/\`,
   named without \`,S=\`/\`,W=\`, so each server must read every file once for its size and then
   rely on its cache (Poplar: the W fields of dovecot-uidlist; Dovecot: its index files).
   Copying 100,000 files takes long, so each server keeps its own copy in \`bench/.work/big/\`
   between runs, caches included; it is checked against the template (same file names) before
   use and moved into the server's mail root only for this figure. One warming login, then
   ${p.bigRuns} runs, each on a fresh connection, measure connect → LIST reply fully received; the
   median is reported. The first login *without* caches is measured when a copy is new or with
   \`--cold\`; the table shows the latest such measurement and the details give its date.
4. **Memory per idle connection.** After warming the accept path with 100 connections,
   ${p.idleConnections} connections are opened; each waits for the greeting and then sends nothing
   (AUTHORIZATION state). 1.5 s later the server's memory is read again. For Poplar all its
   processes (the primary and ${o.poplarWorkers} worker${o.poplarWorkers === 1 ? '' : 's'}) are summed; for Dovecot all processes of the instance (its process group: master, config, log, anvil,
   auth, pop3-login, pop3) are summed, including processes started for the new connections.
   PSS (\`/proc/<pid>/smaps_rollup\`) divides shared pages among the processes sharing them and is
   the fair figure for Dovecot's many processes; RSS (\`VmRSS\`) is shown as well.
5. **Connections held at once.** ${p.holdConnections.toLocaleString('en-US')} connections are opened (spread over the load
   generator's processes, 100 attempts in flight each) and greeted; after 5 s every one that is
   still open sends CAPA (allowed before login) and must get the whole reply. The figure is the
   number that did. This machine allows 20,000 open files per process, so a single-process server
   cannot hold 20,000 clients here (it also needs descriptors for its listeners and files): Poplar
   runs with \`--workers\`, as it does for every figure, and Dovecot spreads clients over its
   pop3-login processes.
6. **Session rate by worker count.** The sessions/s figure again, for Poplar only, with
   \`poplar serve --workers N\` for N = 1 up to the number of cores (the load generator shares
   those cores).

## Optimizations, with figures before and after

${optimizationsLog()}
## Server settings

Poplar: \`node dist/cli/main.js serve --log-level warn${o.poplarWorkers > 1 ? ` --workers ${o.poplarWorkers}` : ''}\` (one worker per core) with this configuration file. The default
\`max_connections_per_ip = 100\` would refuse the idle-connection test, and the default
\`login_timeout = 60\` ends the first login on the 100k maildrop while Poplar is still reading
it. \`[store] fsync\` stays at its default, \`true\`.

\`\`\`toml
${r.poplar.settings ?? '(not run)'}
\`\`\`

Dovecot: \`startDovecot({ highPerformance: true })\` from test/helpers/dovecot.ts (pop3-login with
\`service_count = 0\`, \`client_limit = 1000\`, \`process_min_avail\` = cores; pop3 with
\`service_count = 0\`, \`client_limit = 1\`, \`process_min_avail\` = cores; \`default_process_limit = 1024\`,
\`default_client_limit = 5000\`; auth cache), with this appended:

\`\`\`
${r.dovecot.settings ?? '(not run)'}
\`\`\`

\`info_log_path = /dev/null\` and \`auth_verbose = no\` keep Dovecot from writing a log line per
login, since Poplar at log level warn writes none either. \`mail_fsync\` stays at its default
(\`optimized\`).
`;
}

/** Whose CPU time the load generator column sums, figure by figure. */
function loadCpuText(p: Params, workers: number): string {
  const parts: string[] = [];
  if (p.sessionLoad === 'compiled') parts.push('for sessions/s one compiled process, bench/sessload.c');
  if (p.retrLoad === 'compiled') parts.push(`for RETR up to ${Math.min(workers, p.retrClients)} compiled processes, bench/retrload.c`);
  const node = `${workers} Node processes, \`process.cpuUsage()\``;
  return parts.length === 0 ? `${node}, summed` : `${parts.join('; ')}, each its own \`getrusage()\`; otherwise ${node}; summed`;
}

/** Which figures use the compiled generators instead of the Node one, and why. */
function compiledText(p: Params, workers: number): string {
  const used = [p.sessionLoad === 'compiled' ? 'sessions/s' : '', p.retrLoad === 'compiled' ? 'RETR' : ''].filter((x) => x !== '');
  if (used.length === 0) return '';
  return `; for ${used.join(' and ')} it is ${used.length === 2 ? 'bench/sessload.c and bench/retrload.c' : used[0] === 'RETR' ? 'bench/retrload.c' : 'bench/sessload.c'} instead,
the same client loops in C (epoll; RETR splits its clients over ${Math.min(workers, p.retrClients)} processes), compiled by the benchmark with the system's C
compiler. The Node generator needed about 0.6 cores of the 2 for sessions/s, and for RETR it spent
more CPU per MB received than the faster server spent sending it (\`--node-load\` uses it anyway)`;
}

/** bench/optimizations.md, kept by hand, copied into the report. */
function optimizationsLog(): string {
  try {
    return readFileSync(fileURLToPath(new URL('./optimizations.md', import.meta.url)), 'utf8');
  } catch {
    return '(bench/optimizations.md is missing)\n';
  }
}

// ---------------------------------------------------------------------------
// Poplar on PostgreSQL

export interface PgRow {
  figure: string;
  unit: string;
  pg: number | undefined;
  maildir: number | undefined;
  dovecot: number | undefined;
  digits: number;
  better: 'higher' | 'lower';
  /** The target, as the largest (lower is better) or smallest (higher) PostgreSQL/Dovecot ratio that meets it. */
  target?: number;
}

export function pgRows(r: Results, p: Params): PgRow[] {
  const G = r['poplar-pg'];
  const P = r.poplar;
  const D = r.dovecot;
  const perSession = (s: SessionsFigure | undefined): number | undefined => (s && s.sessions > 0 ? (s.serverCpuS * 1000) / s.sessions : undefined);
  const perMB = (s: RetrFigure | undefined): number | undefined => (s && s.bytes > 0 ? (s.serverCpuS * 1000) / (s.bytes / 1e6) : undefined);
  const out: PgRow[] = [
    { figure: `Sessions per second (connect, USER, PASS, STAT, QUIT; ${p.sessionClients} clients, ${SESSION_USERS} users)`, unit: 'sessions/s', pg: G.sessions?.rate, maildir: P.sessions?.rate, dovecot: D.sessions?.rate, digits: 0, better: 'higher', target: 1 },
    { figure: 'Session latency, median', unit: 'ms', pg: G.sessions?.p50Ms, maildir: P.sessions?.p50Ms, dovecot: D.sessions?.p50Ms, digits: 1, better: 'lower' },
    { figure: 'Session latency, 99th percentile', unit: 'ms', pg: G.sessions?.p99Ms, maildir: P.sessions?.p99Ms, dovecot: D.sessions?.p99Ms, digits: 1, better: 'lower' },
    { figure: 'Server CPU time per session (PostgreSQL\'s own CPU not included)', unit: 'ms', pg: perSession(G.sessions), maildir: perSession(P.sessions), dovecot: perSession(D.sessions), digits: 2, better: 'lower' },
    { figure: `RETR throughput (${p.retrClients} clients, ${RETR_MESSAGE_SIZE / 2 ** 20} MiB messages, ${p.retrWindow} RETRs in flight)`, unit: 'MB/s', pg: G.retr?.mbps, maildir: P.retr?.mbps, dovecot: D.retr?.mbps, digits: 1, better: 'higher', target: 1 },
    { figure: 'Server CPU time per MB retrieved (PostgreSQL\'s own CPU not included)', unit: 'ms', pg: perMB(G.retr), maildir: perMB(P.retr), dovecot: perMB(D.retr), digits: 2, better: 'lower' },
    { figure: `${num(BIG_MESSAGES, 0)}-message maildrop: login + STAT + LIST, warm, median of ${p.bigRuns}`, unit: 'ms', pg: G.bigdrop?.medianMs, maildir: P.bigdrop?.medianMs, dovecot: D.bigdrop?.medianMs, digits: 0, better: 'lower', target: 0.5 },
  ];
  for (const n of G.nodes ?? []) {
    out.push({ figure: `Sessions per second through HAProxy to ${n.nodes} node${n.nodes === 1 ? '' : 's'} (each \`serve --workers 1\`)`, unit: 'sessions/s', pg: n.rate, maildir: undefined, dovecot: D.sessions?.rate, digits: 0, better: 'higher' });
  }
  if (G.hold) {
    const h = G.hold;
    out.push({ figure: `Connections held at once (${num(h.connections, 0)} opened${h.loggedIn ? ', each logged in as a user of its own' : ''}, each answers ${h.loggedIn ? 'STAT' : 'CAPA'} after ${h.heldS} s)`, unit: 'connections', pg: h.answered, maildir: undefined, dovecot: undefined, digits: 0, better: 'higher' });
    if (h.db) {
      out.push({ figure: `Database connections of all Poplar processes at most, during that (pool_size = ${h.db.poolSize} per process, ${h.db.serving} serving processes)`, unit: 'connections', pg: h.db.maxTotal, maildir: undefined, dovecot: undefined, digits: 0, better: 'lower' });
      out.push({ figure: 'Of those, running a query at once, at most', unit: 'connections', pg: h.db.maxBusy, maildir: undefined, dovecot: undefined, digits: 0, better: 'lower' });
    }
  }
  return out;
}

function pgRatio(row: PgRow): number | undefined {
  if (row.pg === undefined || row.dovecot === undefined || !Number.isFinite(row.pg) || !Number.isFinite(row.dovecot) || row.dovecot === 0) return undefined;
  return row.pg / row.dovecot;
}

function targetText(row: PgRow): string {
  if (row.target === undefined) return '';
  const x = pgRatio(row);
  const want = row.better === 'higher' ? `≥ ${row.target}` : `≤ ${row.target}`;
  if (x === undefined) return want;
  const met = row.better === 'higher' ? x >= row.target : x <= row.target;
  return `${want}: ${met ? 'met' : '**missed**'}`;
}

export function pgMarkdownTable(rs: PgRow[]): string {
  const lines = ['| Figure | Unit | Poplar on PostgreSQL | Poplar on Maildir | Dovecot on Maildir | PostgreSQL/Dovecot | Target | Better |', '|---|---|--:|--:|--:|--:|---|---|'];
  for (const r of rs) {
    const x = pgRatio(r);
    lines.push(`| ${r.figure} | ${r.unit} | ${num(r.pg, r.digits)} | ${num(r.maildir, r.digits)} | ${num(r.dovecot, r.digits)} | ${x === undefined ? '—' : x.toFixed(2)} | ${targetText(r)} | ${r.better} |`);
  }
  return lines.join('\n');
}

export function pgPlainTable(rs: PgRow[]): string {
  const head = ['Figure', 'Poplar-PG', 'Poplar', 'Dovecot', 'PG/D', 'target'];
  const body = rs.map((r) => {
    const x = pgRatio(r);
    return [`${r.figure} [${r.unit}]`, num(r.pg, r.digits), num(r.maildir, r.digits), num(r.dovecot, r.digits), x === undefined ? '-' : x.toFixed(2), targetText(r).replace(/\*/g, '')];
  });
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const fmt = (cols: string[]): string => cols.map((c, i) => (i === 0 || i === 5 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [fmt(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(fmt)].join('\n');
}

/** Whether the Maildir servers' windows saw much CPU used by other processes (PostgreSQL is idle then). */
function busyPg(r: Results): boolean {
  return (['poplar', 'dovecot'] as const).some((k) => (r[k].sessions?.otherCpuS ?? 0) > 0.1 * (r[k].sessions?.windowS ?? 1) || (r[k].retr?.otherCpuS ?? 0) > 0.1 * (r[k].retr?.windowS ?? 1));
}

export const PG_SECTION_START = '<!-- bench: PostgreSQL section -->';
export const PG_SECTION_END = '<!-- bench: end of the PostgreSQL section -->';

/** The PostgreSQL section of docs/benchmarks.md (also written alone by runs that measure Poplar on PostgreSQL). */
export function pgSection(r: Results, o: Options, when: Date, runtimeS: number, env: { postgres: string; haproxy: string; cores: number }): string {
  const G = r['poplar-pg'];
  const p = o.params;
  const d: string[] = [];
  const cpuLine = (what: string, x: WindowCpu | undefined): void => {
    if (x) d.push(`- ${what}: CPU in the ${x.windowS} s window: the server ${x.serverCpuS.toFixed(2)} s, load generator ${x.genCpuS.toFixed(2)} s, everything else (PostgreSQL included) ${x.otherCpuS.toFixed(2)} s.`);
  };
  if (G.sessions) d.push(`- Poplar on PostgreSQL, sessions: ${G.sessions.sessions} sessions in ${G.sessions.windowS} s, ${G.sessions.errors} failed${G.sessions.errorSamples.length ? ` (${G.sessions.errorSamples.join('; ')})` : ''}.`);
  cpuLine('Poplar on PostgreSQL, sessions', G.sessions);
  for (const k of ['poplar', 'dovecot'] as const) cpuLine(`${k === 'poplar' ? 'Poplar on Maildir' : 'Dovecot'}, sessions`, r[k].sessions);
  if (G.retr) {
    d.push(
      `- Poplar on PostgreSQL, RETR: ${G.retr.roundsMbps ? `windows of ${G.retr.roundsMbps.map((v) => v.toFixed(0)).join(', ')} MB/s; the median one: ` : ''}${(G.retr.bytes / 1e6).toFixed(0)} MB in ${G.retr.windowS} s, ${G.retr.messages} messages, ${G.retr.sessions} sessions, ${G.retr.errors} errors, ${G.retr.mismatches} replies of the wrong length${G.retr.errorSamples.length ? ` (${G.retr.errorSamples.join('; ')})` : ''}.`,
    );
  }
  cpuLine('Poplar on PostgreSQL, RETR', G.retr);
  for (const k of ['poplar', 'dovecot'] as const) cpuLine(`${k === 'poplar' ? 'Poplar on Maildir' : 'Dovecot'}, RETR`, r[k].retr);
  if (G.bigdrop) {
    const b = G.bigdrop;
    d.push(`- Poplar on PostgreSQL, 100k maildrop: first login after the start ${b.firstMs.toFixed(0)} ms; warm runs ${b.runsMs.map((v) => v.toFixed(0)).join(', ')} ms; the +OK to PASS came after ${b.loginMedianMs.toFixed(0)} ms and the STAT reply after ${b.statMedianMs.toFixed(0)} ms (medians).`);
  }
  for (const n of G.nodes ?? []) {
    d.push(
      `- Through HAProxy to ${n.nodes} node${n.nodes === 1 ? '' : 's'}: ${n.sessions} sessions in ${n.windowS} s (p50 ${n.p50Ms.toFixed(1)} ms, p99 ${n.p99Ms.toFixed(1)} ms), ${n.errors} failed${n.errorSamples.length ? ` (${n.errorSamples.join('; ')})` : ''}; CPU: nodes ${n.serverCpuS.toFixed(2)} s, HAProxy ${n.haproxyCpuS.toFixed(2)} s, load generator ${n.genCpuS.toFixed(2)} s, everything else (PostgreSQL included) ${n.otherCpuS.toFixed(2)} s.`,
    );
  }
  if (G.hold) {
    const h = G.hold;
    d.push(
      `- Poplar on PostgreSQL, ${h.connections} connections held: ${h.opened} ${h.loggedIn ? 'logged in' : 'greeted'} and open after ${h.openS.toFixed(1)} s of opening, ${h.answered} answered ${h.loggedIn ? 'STAT' : 'CAPA'} after ${h.heldS} s; RSS ${fmtBytes(h.before.rss)} → ${fmtBytes(h.after.rss)} (${fmtBytes((h.after.rss - h.before.rss) / Math.max(1, h.opened))} per connection)${h.errors ? `; ${h.errors} errors (${h.errorSamples.join('; ')})` : '; no errors'}.`,
    );
    if (h.db) {
      d.push(
        `- Database connections (pg_stat_activity, application_name = 'poplar', ${h.db.samples} samples): at most ${h.db.maxTotal} open and ${h.db.maxBusy} busy at once while the sessions logged in; ${h.db.whileIdle} open, ${h.db.busyWhileIdle} busy while all ${h.opened} sat idle. Each serving process has a pool of pool_size = ${h.db.poolSize} plus one connection for lease renewals; the login counters use a pool of their own (at most 4 per process) and one connection that listens for failures.`,
      );
    }
  }
  if (G.pgLoad) d.push(`- The bench schema was loaded from the template maildirs with \`poplar migrate --from maildir:... --to postgres --all\` on ${G.pgLoad.loadedAt}${Number.isFinite(G.pgLoad.loadS) ? ` in ${G.pgLoad.loadS.toFixed(0)} s` : ''}.`);
  return `${PG_SECTION_START}
## Poplar on PostgreSQL

Written by \`npm run bench\` when it measures Poplar on PostgreSQL beside the two Maildir servers
(a full run, or \`--only\` with sessions, retr and bigdrop and without \`--quick\`).
Last written: ${when.toISOString().replace(/\.\d+Z$/, 'Z')} (that run took ${runtimeS.toFixed(0)} s). PostgreSQL: ${env.postgres}, on the same machine,
with the settings it was installed with (nothing tuned for the bench). HAProxy: ${env.haproxy}.
Before measuring, the bench runs \`VACUUM (ANALYZE)\` on its schema, as autovacuum (on by PostgreSQL's
default) would after a bulk load: without statistics the planner lists the 100,000-message
maildrop with a sort on disk instead of the covering primary key.
${busyPg(r) ? `
**Caution:** other processes used a large share of the ${env.cores} cores while this run measured (the
Maildir servers' windows below show it: "everything else" there is neither the server nor
PostgreSQL). The rates are low and their ratios vary from run to run; run again on an idle machine
for figures to quote.
` : ''}

${pgMarkdownTable(pgRows(r, p))}

"PostgreSQL/Dovecot" is Poplar on PostgreSQL's figure divided by Dovecot's. The targets: at least
Dovecot's sessions/s and RETR MB/s, at most half its time on the 100,000-message maildrop.
The server CPU columns count Poplar's processes only: PostgreSQL runs on the same ${env.cores} cores and
its CPU time is in "everything else" below.

What differs from the Maildir runs: the same users, passwords (the same passwd-file) and messages,
loaded once from the template maildirs into a schema of their own (\`poplar_bench\`) with
\`poplar migrate\`, which keeps their order and sizes; Poplar runs with \`[store] type = "postgres"\`
and \`serve --workers ${o.poplarWorkers}\` like Poplar on Maildir. Every login takes the maildrop's
lease and reads the listing in one named statement; QUIT releases the lease (one \`UPDATE\` for all
the QUITs of a process that come while a release is out). The login counters' check costs no
statement for an address and user without recent failures: each process hears of failures
through \`LISTEN\`.

- **Nodes.** HAProxy (mode tcp, round robin, \`send-proxy-v2\`) in front of one and then two
  \`poplar serve --workers 1\` nodes on the same database, with \`proxy_protocol = true\` and
  \`trusted_proxies = ["127.0.0.1/32"]\`; the sessions/s loop of figure 1 runs against HAProxy.
  On this ${env.cores}-core machine the nodes, HAProxy, PostgreSQL and the load generator all share
  the same cores, so the second node adds a process, not a machine: the figure shows that
  the nodes work side by side on one database (leases, no errors) and what HAProxy costs, not
  how a cluster of machines scales. The ratio column compares with Dovecot's sessions/s on
  Maildir without a proxy.
- **Held connections.** ${num(p.holdConnections, 0)} connections are opened and each logs in as a user of its own
  (${num(p.holdConnections, 0)} extra users in the passwd-file; their empty mailboxes are made at the first login),
  so every one holds a lease in the TRANSACTION state; after ${G.hold?.heldS ?? 5} s each sends STAT and must get
  \`+OK\`. Meanwhile the bench reads Poplar's database connections from \`pg_stat_activity\` every 100 ms.

Details:

${d.join('\n')}

HAProxy's configuration for two nodes (one node: the first server line only):

\`\`\`
${G.haproxy ?? '(not run)'}\`\`\`

Poplar on PostgreSQL's configuration file:

\`\`\`toml
${G.settings ?? '(not run)'}
\`\`\`
${PG_SECTION_END}
`;
}
