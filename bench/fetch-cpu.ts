/**
 * Quick CPU figure of `poplar fetch` while working on it (no report written):
 * one private Dovecot serving the bench:fetch mailbox (2000 messages of
 * 8 KiB), then `poplar fetch` RUNS times (and mpop as many times, unless
 * `--no-mpop`) into fresh Maildirs in keep mode, alternating. Prints each
 * run's wall time and CPU time (user + system, from the reaped child) and
 * the medians per message. Needs root, Dovecot and a built dist/.
 *
 *   flock /tmp/bench.lock node --import tsx bench/fetch-cpu.ts [--runs N] [--no-mpop] [--dir DIR]
 *
 * `--profile DIR`: poplar runs with `node --cpu-prof --cpu-prof-dir DIR`.
 * `--base DIR`: also run the poplar of another checkout or copy (DIR/bin/poplar,
 * with its dist/), alternating with this one, for an A/B comparison on a busy machine.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from '../test/interop/run.js';
import { makeMaildir, MESSAGES, PASSWORD, USER, writeMailbox } from './fetch-mailbox.js';
import { startDovecotBench } from './servers.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const RUNS = Number(flag('--runs') ?? 5);
const MPOP = !process.argv.includes('--no-mpop');
const PROFILE = flag('--profile');
const BASE = flag('--base');



/** CPU seconds of this process's reaped children (cutime + cstime). */
function childrenCpu(): { user: number; sys: number } {
  const s = readFileSync('/proc/self/stat', 'latin1');
  const f = s.slice(s.lastIndexOf(')') + 2).trim().split(' ');
  return { user: Number(f[13]) / 100, sys: Number(f[14]) / 100 };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

async function main(): Promise<void> {
  const base = flag('--dir') ?? '/var/tmp';
  const dir = mkdtempSync(path.join(base, 'poplar-fetch-cpu-'));
  chmodSync(dir, 0o755);
  writeMailbox(path.join(dir, 'mail'));
  const dovecot = await startDovecotBench(path.join(dir, 'mail'), [{ name: USER, password: PASSWORD }]);
  const results: Record<string, { ms: number[]; cpu: number[] }> = { poplar: { ms: [], cpu: [] }, base: { ms: [], cpu: [] }, mpop: { ms: [], cpu: [] } };
  try {
    const env = { PATH: `${path.dirname(process.execPath)}:${process.env['PATH'] ?? '/usr/bin:/bin'}`, HOME: dir, LC_ALL: 'C', TZ: 'UTC', BENCH_PW: PASSWORD };
    // One untimed run first: Dovecot builds its index, the page cache warms.
    for (let r = -1; r < RUNS; r++) {
      for (const key of [...(BASE !== undefined ? ['base'] : []), 'poplar', ...(MPOP ? ['mpop'] : [])]) {
        execFileSync('sync');
        const d = path.join(dir, `${key}-${r + 1}`);
        const md = path.join(d, 'Maildir');
        makeMaildir(md);
        let file: string;
        let args: string[];
        if (key === 'poplar' || key === 'base') {
          const root = key === 'base' ? BASE! : ROOT;
          file = PROFILE !== undefined ? process.execPath : path.join(root, 'bin', 'poplar');
          args = [
            ...(PROFILE !== undefined ? ['--cpu-prof', '--cpu-prof-interval', '50', '--cpu-prof-dir', PROFILE, path.join(root, 'dist', 'cli', 'main.js')] : []),
            'fetch', '--once', '--json', '--no-progress', '--host', '127.0.0.1', '--port', String(dovecot.port), '--tls', 'none',
            '--user', USER, '--password-env', 'BENCH_PW', '--keep', '--maildir', md, '--state', path.join(d, 'ledger'),
          ];
        } else {
          const conf = path.join(d, 'mpoprc');
          writeFileSync(
            conf,
            [
              'account bench', 'host 127.0.0.1', `port ${dovecot.port}`, 'tls off', 'timeout 60', 'auth user', `user ${USER}`,
              `passwordeval "echo ${PASSWORD}"`, `delivery maildir ${md}`, `uidls_file ${path.join(d, 'uidls')}`, 'keep on', 'only_new off', 'received_header off', '',
            ].join('\n'),
            { mode: 0o600 },
          );
          file = 'mpop';
          args = ['-C', conf, '-q', '-a'];
        }
        const c0 = childrenCpu();
        const res = await run(file, args, { env, timeoutMs: 120_000 });
        const c1 = childrenCpu();
        const user = c1.user - c0.user;
        const sys = c1.sys - c0.sys;
        const cpu = user + sys;
        const count = readdirSync(path.join(md, 'new')).length + readdirSync(path.join(md, 'cur')).length;
        if (res.code !== 0 || count !== MESSAGES) throw new Error(`${key}: exit ${String(res.code)}, ${count} files\n${res.describe}`);
        rmSync(d, { recursive: true, force: true });
        if (r < 0) continue;
        results[key]!.ms.push(res.ms);
        results[key]!.cpu.push(cpu);
        process.stderr.write(`${key} run ${r + 1}: ${res.ms} ms, cpu ${(user * 1000).toFixed(0)}+${(sys * 1000).toFixed(0)} ms (${((cpu / MESSAGES) * 1e6).toFixed(0)} µs/msg)\n`);
      }
    }
  } finally {
    await dovecot.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  for (const [key, r] of Object.entries(results)) {
    if (r.ms.length === 0) continue;
    const cpu = median(r.cpu);
    process.stdout.write(`${key}: median ${median(r.ms)} ms, cpu ${(cpu * 1000).toFixed(0)} ms = ${((cpu / MESSAGES) * 1e6).toFixed(0)} µs/msg (cpu runs: ${r.cpu.map((c) => (c * 1000).toFixed(0)).join(' ')})\n`);
  }
  if (BASE !== undefined) {
    process.stdout.write(`poplar/base: cpu ${(median(results['poplar']!.cpu) / median(results['base']!.cpu)).toFixed(3)}×, wall ${(median(results['poplar']!.ms) / median(results['base']!.ms)).toFixed(3)}×\n`);
  }
  if (MPOP && results['mpop']!.ms.length > 0) {
    process.stdout.write(`speed poplar/mpop: ${(median(results['mpop']!.ms) / median(results['poplar']!.ms)).toFixed(2)}×, cpu ${(median(results['poplar']!.cpu) / median(results['mpop']!.cpu)).toFixed(2)}×\n`);
  }
}

await main();
