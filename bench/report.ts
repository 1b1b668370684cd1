/**
 * Result types of bench/run.ts and the report it prints and writes to
 * docs/benchmarks.md.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { MachineInfo, MemorySample } from './procfs.js';
import { BIG_MESSAGES, RETR_MESSAGES, RETR_MESSAGE_SIZE, SESSION_MESSAGES, SESSION_USERS, type Manifest } from './data.js';

export type ServerKey = 'poplar' | 'dovecot';
export type Figure = 'idle' | 'sessions' | 'retr' | 'bigdrop' | 'hold' | 'scaling';

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
  settings?: string;
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

export function markdown(r: Results, mi: MachineInfo, o: Options, m: Manifest, runtimeS: number, when: Date): string {
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
npm run bench -- --only sessions,retr  # a subset of: idle, sessions, retr, bigdrop, hold, scaling (report to bench/.work/)
npm run bench -- --server poplar       # one server only (report to bench/.work/)
npm run bench -- --cold                # also measure the 100k maildrop's first login without caches (minutes)
npm run bench -- --cpu-prof            # Poplar's sessions/s under node --cpu-prof; prints where the time goes
npm run bench -- --workers 4           # number of load generator processes
\`\`\`

It needs root and Dovecot 2.3 (\`/usr/sbin/dovecot\`), as the Dovecot comparison tests do.
It runs \`npm run build\` when \`dist/\` is missing or older than \`src/\`, and keeps its data in
\`bench/.work/\` (git-ignored). The first run generates the template maildirs and copies the
100,000-message maildrop once per server, which takes several minutes, mostly for Poplar's
first login on that maildrop (see below); later runs reuse them.

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

## What is measured

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
