/**
 * Running accounts: once (all accounts, at most `max_concurrent` at a time)
 * or as a daemon (each account on its own interval with jitter, exponential
 * backoff after errors). A soft stop lets every running session finish its
 * current message, commit and QUIT.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ResolvedAccount, ResolvedFetchConfig } from './config.js';
import { classify } from './exit-status.js';
import { summarize, type RunSummary } from './progress.js';
import { fetchAccount, newReport, type AccountReport, type SessionDeps } from './session.js';
import { EX_TEMPFAIL } from '../cli/exit-codes.js';

/** A counting semaphore. */
class Limit {
  #free: number;
  readonly #waiting: (() => void)[] = [];
  constructor(n: number) {
    this.#free = n;
  }
  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#free > 0) this.#free--;
    else await new Promise<void>((r) => this.#waiting.push(r));
    try {
      return await fn();
    } finally {
      const next = this.#waiting.shift();
      if (next) next();
      else this.#free++;
    }
  }
}

/** Fetch one account, turning a failure into a report (never rejects). */
export async function runAccount(acct: ResolvedAccount, deps: SessionDeps): Promise<AccountReport> {
  const report = newReport(acct.name);
  try {
    await fetchAccount(acct, deps, report);
  } catch (e) {
    const f = classify(e);
    report.ok = false;
    report.exitCode = f.exitCode;
    report.error = `${f.kind}: ${f.message}`;
  }
  return report;
}

export async function runOnce(cfg: ResolvedFetchConfig, deps: SessionDeps): Promise<RunSummary> {
  const started = performance.now();
  const limit = new Limit(cfg.fetch.max_concurrent);
  const reports = await Promise.all(cfg.accounts.map((a) => limit.run(() => (deps.stop?.aborted ? Promise.resolve(skippedReport(a)) : runAccount(a, deps)))));
  const stopped = deps.stop?.aborted === true;
  // The first failing account (in config order) decides; a run cut short by a stop is incomplete.
  const exitCode = reports.find((r) => !r.ok)?.exitCode ?? (stopped ? EX_TEMPFAIL : 0);
  return summarize(reports, performance.now() - started, stopped, exitCode);
}

function skippedReport(a: ResolvedAccount): AccountReport {
  const r = newReport(a.name);
  r.stopped = true;
  r.ok = true;
  return r;
}

export interface DaemonHooks {
  /** After each fetch of an account. */
  onReport?(report: AccountReport, nextInMs: number): void;
  random?: () => number;
}

/** Delay before the next fetch: the interval, or the backoff after `failures` errors in a row, spread by ±jitter. */
export function nextDelayMs(fetchCfg: ResolvedFetchConfig['fetch'], failures: number, random: () => number = Math.random): number {
  const base = failures === 0 ? fetchCfg.interval : Math.min(fetchCfg.backoff_max, fetchCfg.backoff_initial * 2 ** (failures - 1));
  return Math.max(0, base * (1 + fetchCfg.jitter * (2 * random() - 1)) * 1000);
}

/** Runs until `deps.stop` fires; then lets running sessions finish cleanly and resolves. */
export async function runDaemon(cfg: ResolvedFetchConfig, deps: SessionDeps, hooks: DaemonHooks = {}): Promise<void> {
  const limit = new Limit(cfg.fetch.max_concurrent);
  const random = hooks.random ?? Math.random;
  const loop = async (acct: ResolvedAccount, index: number): Promise<void> => {
    let failures = 0;
    // Spread the first fetches a little so that many accounts do not start in the same instant.
    const stagger = Math.min(cfg.fetch.interval * 1000, index * 200);
    if (stagger > 0) await sleep(stagger, undefined, { signal: deps.stop }).catch(() => undefined);
    while (deps.stop?.aborted !== true) {
      const report = await limit.run(() => (deps.stop?.aborted ? Promise.resolve(skippedReport(acct)) : runAccount(acct, deps)));
      failures = report.ok ? 0 : failures + 1;
      const delay = nextDelayMs(cfg.fetch, failures, random);
      hooks.onReport?.(report, delay);
      await sleep(delay, undefined, { signal: deps.stop }).catch(() => undefined);
    }
  };
  await Promise.all(cfg.accounts.map((a, i) => loop(a, i)));
}
