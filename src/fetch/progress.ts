/**
 * What a fetch shows: a progress bar on a terminal (messages, octets, rate),
 * a one-line summary otherwise, or a JSON summary for scripts.
 */
import type { AccountReport, ProgressListener } from './report.js';

export interface RunSummary {
  ok: boolean;
  exitCode: number;
  elapsedMs: number;
  /** A stop was requested (SIGTERM/SIGINT) before every account finished. */
  stopped: boolean;
  accounts: AccountReport[];
  totals: { onServer: number; delivered: number; discarded: number; skipped: number; deleted: number; bytes: number; recovered: number; failed: number };
}

export function summarize(reports: AccountReport[], elapsedMs: number, stopped: boolean, exitCode: number): RunSummary {
  const sum = (k: 'onServer' | 'delivered' | 'discarded' | 'skipped' | 'deleted' | 'bytes' | 'recovered'): number => reports.reduce((t, r) => t + r[k], 0);
  return {
    ok: exitCode === 0,
    exitCode,
    elapsedMs: Math.round(elapsedMs),
    stopped,
    accounts: reports,
    totals: {
      onServer: sum('onServer'),
      delivered: sum('delivered'),
      discarded: sum('discarded'),
      skipped: sum('skipped'),
      deleted: sum('deleted'),
      bytes: sum('bytes'),
      recovered: sum('recovered'),
      failed: reports.filter((r) => !r.ok).length,
    },
  };
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]!}`;
}

const plural = (n: number, word: string): string => `${n} ${word}${n === 1 ? '' : 's'}`;

export function summaryLine(s: RunSummary): string {
  const t = s.totals;
  const secs = s.elapsedMs / 1000;
  const parts = [`${plural(t.delivered, 'message')} (${formatBytes(t.bytes)}) delivered`];
  if (t.discarded) parts.push(`${t.discarded} discarded`);
  if (t.skipped) parts.push(`${t.skipped} skipped`);
  if (t.deleted) parts.push(`${t.deleted} deleted`);
  if (t.recovered) parts.push(`${t.recovered} recovered`);
  const rate = secs > 0 && t.bytes > 0 ? `, ${formatBytes(t.bytes / secs)}/s` : '';
  const failed = t.failed ? `; ${t.failed} of ${plural(s.accounts.length, 'account')} failed` : '';
  const stopped = s.stopped ? '; stopped early' : '';
  return `${plural(s.accounts.length, 'account')}: ${parts.join(', ')} in ${secs.toFixed(1)} s${rate}${failed}${stopped}`;
}

/** A single-line bar redrawn on a terminal at most every 100 ms. */
export class ProgressBar implements ProgressListener {
  readonly #out: NodeJS.WriteStream;
  readonly #start = performance.now();
  #messages = 0;
  #octets = 0;
  #doneMessages = 0;
  #doneOctets = 0;
  #last = 0;
  #drawn = false;

  constructor(out: NodeJS.WriteStream) {
    this.#out = out;
  }

  accountStarted(_account: string, messages: number, octets: number): void {
    this.#messages += messages;
    this.#octets += octets;
    this.#draw(true);
  }

  messageDone(_account: string, octets: number): void {
    this.#doneMessages++;
    this.#doneOctets += octets;
    this.#draw(false);
  }

  /** Remove the bar (before the summary line). */
  clear(): void {
    if (this.#drawn) this.#out.write('\r\x1b[2K');
    this.#drawn = false;
  }

  #draw(force: boolean): void {
    const now = performance.now();
    if (!force && now - this.#last < 100) return;
    this.#last = now;
    const width = 20;
    const frac = this.#messages > 0 ? this.#doneMessages / this.#messages : 0;
    const fill = Math.round(frac * width);
    const secs = (now - this.#start) / 1000;
    const rate = secs > 0 ? `${formatBytes(this.#doneOctets / secs)}/s` : '';
    const line = `[${'#'.repeat(fill)}${'-'.repeat(width - fill)}] ${this.#doneMessages}/${this.#messages} msgs  ${formatBytes(this.#doneOctets)} of ${formatBytes(this.#octets)}  ${rate}`;
    const cols = this.#out.columns > 0 ? this.#out.columns : 80;
    this.#out.write(`\r\x1b[2K${line.slice(0, cols - 1)}`);
    this.#drawn = true;
  }
}
