/**
 * Consecutive logins on the 100,000-message maildrop under `poplar serve
 * --workers N`, side by side with a tuned Dovecot: `npm run bench:logins`.
 *
 * Each round starts both servers afresh, makes one warm-up login, then times
 * `--runs` sessions (connect, USER, PASS, STAT, LIST, QUIT) `--gap` ms apart,
 * and prints every session's time: the first login each worker serves, and
 * any later one that scans or loads the maildrop again, shows up here where a
 * median would hide it. Needs root and Dovecot 2.3, like `npm run bench`, and
 * dist/ built (`npm run build`; `--dist DIR` runs another build).
 *
 * The maildrops are this script's own copies of bench/.work/template (made by
 * `npm run bench`, or here if missing), kept under bench/.work/logins/ with
 * the caches each server built, as `npm run bench` keeps its copies.
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { dovecotAvailable } from '../test/helpers/dovecot.js';
import { BIG_MESSAGES, BIG_USER, ensureTemplate, moveDir, prepareBigCopy } from './data.js';
import { Pop3Reader } from './pop3-reader.js';
import type { BenchUser } from './protocol.js';
import { startDovecotBench, startPoplar, type BenchServer } from './servers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const WORK = path.join(ROOT, 'bench', '.work');
const TEMPLATE = path.join(WORK, 'template');
const OWN = path.join(WORK, 'logins');

const USAGE = `usage: npm run bench:logins -- [options]
  --runs N           timed sessions per round after the warm-up login (default 20)
  --gap MS           pause between sessions (default 300)
  --rounds N         rounds, each with freshly started servers (default 1)
  --settle MS        wait after a server greets, so that every worker has started (default 5000)
  --poplar-workers N poplar serve --workers N (default: the number of cores)
  --server S         poplar or dovecot only (default both)
  --cold             drop the servers' caches in the maildrops first (the warm-up login then scans)
  --dist DIR         a package root whose dist/ holds the Poplar to run (default: this checkout)
`;

interface Session {
  /** Connect to the +OK after PASS. */
  loginMs: number;
  /** Connect to the end of LIST. */
  totalMs: number;
  messages: number;
}

const log = (s: string): void => void process.stdout.write(s + '\n');
const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

/** One session: USER, PASS, STAT, LIST (counted), QUIT. */
function session(port: number, user: BenchUser, timeoutMs: number): Promise<Session> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const r: Session = { loginMs: 0, totalMs: 0, messages: 0 };
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.setNoDelay(true);
    let step = 0; // greeting, USER, PASS, STAT, LIST, QUIT
    let done = false;
    const timer = setTimeout(() => finish(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    function finish(err: Error | null): void {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(r);
    }
    const send = (line: string, multi = false): void => {
      reader.expect(multi, multi);
      sock.write(line + '\r\n');
    };
    const reader = new Pop3Reader({
      status: (line) => {
        if (!line.startsWith('+OK')) return finish(new Error(`step ${step}: ${line}`));
        switch (step++) {
          case 0:
            return send(`USER ${user.name}`);
          case 1:
            return send(`PASS ${user.password}`);
          case 2:
            r.loginMs = ms(t0);
            return send('STAT');
          case 3:
            r.messages = Number(line.split(' ')[1]);
            return send('LIST', true);
          case 5:
            return finish(null);
        }
      },
      bodyEnd: (_bytes, body) => {
        r.totalMs = ms(t0);
        let lines = 0;
        if (body !== undefined) for (let i = body.indexOf(0x0a); i >= 0; i = body.indexOf(0x0a, i + 1)) lines++;
        if (lines !== r.messages) return finish(new Error(`LIST gave ${lines} lines, STAT ${r.messages} messages`));
        send('QUIT');
      },
    });
    reader.expect(false);
    sock.on('data', (d: Buffer) => {
      try {
        reader.push(d);
      } catch (e) {
        finish(e as Error);
      }
    });
    sock.on('error', (e) => finish(e));
    sock.on('close', () => finish(new Error('connection closed by the server')));
  });
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

interface RoundResult {
  warmup: Session;
  runs: Session[];
}

async function measure(server: BenchServer, user: BenchUser, runs: number, gapMs: number): Promise<RoundResult> {
  const warmup = await session(server.port, user, 900_000);
  if (warmup.messages !== BIG_MESSAGES) throw new Error(`${server.name}: STAT says ${warmup.messages} messages, expected ${BIG_MESSAGES}`);
  const out: Session[] = [];
  for (let i = 0; i < runs; i++) {
    await sleep(gapMs);
    out.push(await session(server.port, user, 120_000));
  }
  return { warmup, runs: out };
}

const fmt = (xs: readonly number[]): string => xs.map((x) => x.toFixed(0)).join(' ');

function report(name: string, r: RoundResult): void {
  const totals = r.runs.map((s) => s.totalMs);
  log(`  ${name.padEnd(7)} warm-up ${r.warmup.totalMs.toFixed(0)} ms (login ${r.warmup.loginMs.toFixed(0)} ms)`);
  log(`  ${name.padEnd(7)} login ms:            ${fmt(r.runs.map((s) => s.loginMs))}`);
  log(`  ${name.padEnd(7)} login+STAT+LIST ms:  ${fmt(totals)}`);
  log(`  ${name.padEnd(7)} median ${median(totals).toFixed(0)} ms, slowest ${Math.max(...totals).toFixed(0)} ms`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '20' },
      gap: { type: 'string', default: '300' },
      rounds: { type: 'string', default: '1' },
      settle: { type: 'string', default: '5000' },
      'poplar-workers': { type: 'string', default: String(os.availableParallelism()) },
      server: { type: 'string' },
      cold: { type: 'boolean', default: false },
      dist: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return void process.stdout.write(USAGE);
  const int = (s: string, what: string): number => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) throw new Error(`--${what} wants a positive integer, not ${s}`);
    return n;
  };
  const runs = int(values.runs, 'runs');
  const gap = int(values.gap, 'gap');
  const rounds = int(values.rounds, 'rounds');
  const settle = Number(values.settle);
  if (!Number.isInteger(settle) || settle < 0) throw new Error(`--settle wants milliseconds, not ${values.settle}`);
  const workers = int(values['poplar-workers'], 'poplar-workers');
  const only = values.server;
  if (only !== undefined && only !== 'poplar' && only !== 'dovecot') throw new Error('--server is poplar or dovecot');
  const distRoot = path.resolve(values.dist ?? ROOT);
  if (!existsSync(path.join(distRoot, 'dist', 'cli', 'main.js'))) throw new Error(`no ${distRoot}/dist/cli/main.js: run npm run build`);
  if (only !== 'poplar' && !dovecotAvailable()) throw new Error('Dovecot is not installed (or use --server poplar)');

  const manifest = ensureTemplate(TEMPLATE, log);
  const user = manifest.bigUser;
  const results: Record<'poplar' | 'dovecot', RoundResult[]> = { poplar: [], dovecot: [] };
  for (let round = 1; round <= rounds; round++) {
    log(`round ${round}/${rounds}: ${runs} sessions ${gap} ms apart after one warm-up login; poplar serve --workers ${workers}`);
    for (const key of ['poplar', 'dovecot'] as const) {
      if (only !== undefined && only !== key) continue;
      const home = path.join(OWN, key, 'home');
      const mail = path.join(OWN, key, 'mail');
      // A copy left in the mail root by an interrupted run goes home first.
      if (existsSync(path.join(mail, BIG_USER)) && !existsSync(path.join(home, BIG_USER))) moveDir(path.join(mail, BIG_USER), path.join(home, BIG_USER));
      rmSync(mail, { recursive: true, force: true });
      mkdirSync(mail, { recursive: true });
      const big = prepareBigCopy(TEMPLATE, home, { dropCaches: values.cold, log });
      const server =
        key === 'poplar'
          ? await startPoplar({ root: distRoot, workDir: path.join(OWN, key, 'server'), maildirRoot: mail, users: [user], serverWorkers: workers })
          : await startDovecotBench(mail, [user]);
      try {
        if (big.fresh) server.adopt(big.dir);
        moveDir(big.dir, path.join(mail, BIG_USER));
        // The first worker greets; the others may still be starting (seconds on a busy machine).
        await sleep(settle);
        try {
          const r = await measure(server, user, runs, gap);
          results[key].push(r);
          report(server.name, r);
        } finally {
          await server.stop();
          moveDir(path.join(mail, BIG_USER), big.dir);
        }
      } catch (e) {
        await server.stop().catch(() => undefined);
        throw e;
      }
    }
    const p = results.poplar[round - 1];
    const d = results.dovecot[round - 1];
    if (p !== undefined && d !== undefined) {
      const pt = p.runs.map((s) => s.totalMs);
      const dm = median(d.runs.map((s) => s.totalMs));
      log(
        `  Poplar/Dovecot: median ${(median(pt) / dm).toFixed(2)}x, slowest ${(Math.max(...pt) / dm).toFixed(2)}x of Dovecot's median ` +
          `(slowest vs slowest ${(Math.max(...pt) / Math.max(...d.runs.map((s) => s.totalMs))).toFixed(2)}x); every session: ${fmt(pt.map((t) => t / dm).map((x) => x * 100))} (% of Dovecot's median)`,
      );
    }
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
