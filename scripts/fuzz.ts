/**
 * `npm run fuzz -- --minutes N [--target NAME] [--seed S] [--out FILE]`
 *
 * Runs the parser fuzz targets of test/fuzz/targets.ts round-robin for N
 * minutes (default 5), in slices of a few seconds each, and writes a summary
 * (default fuzz-results/summary.json):
 *
 *   { "started": ISO time, "minutes": N, "seed": S, "node": version,
 *     "targets": [ { "target", "inputs", "failures": [ { error, input, seed, path } ], "ms", "maxHeapGrowth" } ],
 *     "totals": { "inputs", "failures" } }
 *
 * The slices run in a child process watched from here: a slice that does not
 * end (a parser stuck in a loop) has the child killed and counts as a hang.
 * The exit status is 1 when any target failed.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fork, type ChildProcess } from 'node:child_process';
import type { Failure, TargetResult } from '../test/fuzz/harness.js';

const SLICE_MS = 5_000;
/** A slice that has not finished this long after its time is over is stuck. */
const HANG_GRACE_MS = 30_000;

interface SliceJob {
  target: string;
  ms: number;
  seed: number;
}

/** The child: runs the slices it is sent, one at a time. */
async function child(): Promise<void> {
  const { fuzzTarget } = await import('../test/fuzz/harness.js');
  const { TARGETS } = await import('../test/fuzz/targets.js');
  process.on('message', (job: SliceJob) => {
    const t = TARGETS.find((x) => x.name === job.target)!;
    void fuzzTarget(t, { timeLimitMs: job.ms, seed: job.seed }).then((r) => process.send!(r));
  });
  process.send!('ready');
}

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

let current: ChildProcess | undefined;

function slicer(): Promise<ChildProcess> {
  if (current !== undefined && current.exitCode === null && current.signalCode === null) return Promise.resolve(current);
  const c = fork(fileURLToPath(import.meta.url), ['--child'], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  current = c;
  return new Promise((resolve, reject) => {
    c.once('message', () => resolve(c));
    c.once('exit', (code) => reject(new Error(`the fuzzing process exited with ${code} before it was ready`)));
  });
}

async function runSlice(job: SliceJob): Promise<TargetResult> {
  const c = await slicer();
  const failed = (error: string): TargetResult => ({ target: job.target, inputs: 0, failures: [{ error, input: '', seed: job.seed, path: undefined }], ms: job.ms, heapGrowth: 0 });
  return new Promise((resolve) => {
    const finish = (r: TargetResult): void => {
      clearTimeout(timer);
      c.off('message', onMessage);
      c.off('exit', onExit);
      resolve(r);
    };
    const onMessage = (r: TargetResult): void => finish(r);
    const onExit = (code: number | null, signal: string | null): void => finish(failed(`the fuzzing process died (${signal ?? code}); replay with --target ${job.target} --seed ${job.seed}`));
    const timer = setTimeout(() => {
      c.kill('SIGKILL');
      finish(failed(`Hang: the slice did not end ${HANG_GRACE_MS} ms after its time; replay with --target ${job.target} --seed ${job.seed}`));
    }, job.ms + HANG_GRACE_MS);
    c.on('message', onMessage);
    c.on('exit', onExit);
    c.send(job);
  });
}

/** The fuzzing section of docs/reliability.md: what each target read and how it ended. */
async function writeDocs(targets: { target: string; inputs: number; failures: Failure[]; ms: number; maxHeapGrowth: number }[], started: Date, minutes: number): Promise<void> {
  const { replaceSection } = await import('../tools/reliability/doc.js');
  const n = (x: number): string => x.toLocaleString('en-US');
  const total = targets.reduce((s, t) => s + t.inputs, 0);
  const failures = targets.reduce((s, t) => s + t.failures.length, 0);
  await replaceSection(
    'fuzz',
    [
      `Last run: ${started.toISOString().slice(0, 16).replace('T', ' ')} UTC, \`npm run fuzz -- --minutes ${minutes}\` on ${os.cpus().length} cores ` +
        `(load average ${os.loadavg().map((l) => l.toFixed(1)).join(' / ')} at the end), Node ${process.version}: ${n(total)} inputs, ` +
        `${failures === 0 ? 'no failure' : `**${failures} failure(s)**`}. A failure is an exception that is not the parser's own typed error, ` +
        'a run over the time bound (a hang), or heap growth over the bound. Inputs are mutations of valid seeds (bit flips, truncation, ' +
        'splices, repeats, NULs, CR/LF games, overlong numbers) and random bytes; every failure found is kept as a fixed case in ' +
        'test/fuzz/regressions.test.ts.',
      '',
      '| Target | Inputs | Failures | Largest heap growth (MB) |',
      '|---|--:|--:|--:|',
      ...targets.map((t) => `| ${t.target} | ${n(t.inputs)} | ${t.failures.length} | ${(t.maxHeapGrowth / 1048576).toFixed(1)} |`),
    ].join('\n'),
  );
}

async function main(): Promise<void> {
  const minutes = Number(arg('minutes') ?? 5);
  const only = arg('target');
  const out = path.resolve(arg('out') ?? 'fuzz-results/summary.json');
  let seed = Number(arg('seed') ?? Math.floor(Math.random() * 0x7fffffff)) >>> 0;
  const { TARGETS } = await import('../test/fuzz/targets.js');
  const names = TARGETS.map((t) => t.name).filter((n) => only === undefined || only.split(',').includes(n));
  if (names.length === 0) {
    console.error(`no target ${only}; targets: ${TARGETS.map((t) => t.name).join(', ')}`);
    process.exit(64);
  }
  const totals = new Map<string, { target: string; inputs: number; failures: Failure[]; ms: number; maxHeapGrowth: number }>();
  for (const n of names) totals.set(n, { target: n, inputs: 0, failures: [], ms: 0, maxHeapGrowth: 0 });
  const started = new Date();
  const end = Date.now() + minutes * 60_000;
  const write = (): void => {
    const targets = [...totals.values()];
    const summary = {
      started: started.toISOString(),
      minutes,
      seed,
      node: process.version,
      targets,
      totals: { inputs: targets.reduce((s, t) => s + t.inputs, 0), failures: targets.reduce((s, t) => s + t.failures.length, 0) },
    };
    mkdirSync(path.dirname(out), { recursive: true });
    writeFileSync(out, `${JSON.stringify(summary, null, 2)}\n`);
  };
  let i = 0;
  do {
    const name = names[i++ % names.length]!;
    const ms = Math.max(500, Math.min(SLICE_MS, end - Date.now()));
    const r = await runSlice({ target: name, ms, seed: seed++ });
    const t = totals.get(name)!;
    t.inputs += r.inputs;
    t.ms += r.ms;
    t.maxHeapGrowth = Math.max(t.maxHeapGrowth, r.heapGrowth);
    t.failures.push(...r.failures);
    for (const f of r.failures) console.error(`${name}: ${f.error.split('\n')[0]}\n  input: ${f.input.slice(0, 300)}\n  seed: ${f.seed} path: ${f.path}`);
    console.log(`${name}: ${r.inputs} inputs in ${r.ms} ms${r.failures.length ? `, ${r.failures.length} failure(s)` : ''}`);
    write();
  } while (Date.now() < end);
  write();
  current?.kill();
  const failed = [...totals.values()].filter((t) => t.failures.length > 0);
  if (only === undefined && !process.argv.includes('--no-docs')) await writeDocs([...totals.values()], started, minutes);
  console.log(`\n${[...totals.values()].map((t) => `${t.target.padEnd(24)} ${String(t.inputs).padStart(9)} inputs  ${t.failures.length} failure(s)`).join('\n')}\nsummary: ${out}`);
  process.exit(failed.length > 0 ? 1 : 0);
}

if (process.argv.includes('--child')) await child();
else await main();
