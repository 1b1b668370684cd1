/**
 * What `poplar migrate` shows while it runs: a progress bar per user on a
 * terminal (cli-progress), plain lines otherwise (a start line, a line every
 * few seconds, an end line per user), all on standard error.
 */
import cliProgress from 'cli-progress';
import { formatBytes } from '../fetch/progress.js';
import type { Progress, UserReport } from './run.js';

export function endLine(r: UserReport): string {
  const parts = [`${r.moved} moved (${formatBytes(r.bytes)})`, `${r.present} already there`];
  if (r.skipped > 0) parts.push(`${r.skipped} skipped`);
  return `${r.user}: ${parts.join(', ')}${r.error !== undefined ? `; failed: ${r.error}` : ''}`;
}

/** A bar per user on a terminal. */
export class BarProgress implements Progress {
  readonly #bar: cliProgress.SingleBar;
  readonly #out: NodeJS.WriteStream;
  #active = false;
  #octets = 0;

  constructor(out: NodeJS.WriteStream) {
    this.#out = out;
    this.#bar = new cliProgress.SingleBar(
      {
        stream: out,
        format: '{user} [{bar}] {value}/{total} messages | {moved} | {eta_formatted}',
        hideCursor: true,
        clearOnComplete: true,
        etaBuffer: 50,
      },
      cliProgress.Presets.shades_classic,
    );
  }

  user(user: string, toMove: number): void {
    this.#octets = 0;
    this.#bar.start(toMove, 0, { user, moved: formatBytes(0) });
    this.#active = true;
  }

  message(octets: number): void {
    this.#octets += octets;
    this.#bar.increment(1, { moved: formatBytes(this.#octets) });
  }

  done(r: UserReport): void {
    if (this.#active) this.#bar.stop();
    this.#active = false;
    this.#out.write(`poplar migrate: ${endLine(r)}\n`);
  }

  close(): void {
    if (this.#active) this.#bar.stop();
    this.#active = false;
  }
}

/** Plain lines, for logs and pipes. */
export class LineProgress implements Progress {
  readonly #out: NodeJS.WritableStream;
  readonly #everyMs: number;
  #user = '';
  #total = 0;
  #done = 0;
  #last = 0;

  constructor(out: NodeJS.WritableStream, everyMs = 5000) {
    this.#out = out;
    this.#everyMs = everyMs;
  }

  user(user: string, toMove: number, octets: number): void {
    this.#user = user;
    this.#total = toMove;
    this.#done = 0;
    this.#last = Date.now();
    this.#out.write(`poplar migrate: ${user}: ${toMove} messages (${formatBytes(octets)}) to move\n`);
  }

  message(): void {
    this.#done++;
    const now = Date.now();
    if (now - this.#last >= this.#everyMs) {
      this.#last = now;
      this.#out.write(`poplar migrate: ${this.#user}: ${this.#done}/${this.#total}\n`);
    }
  }

  done(r: UserReport): void {
    this.#out.write(`poplar migrate: ${endLine(r)}\n`);
  }

  close(): void {}
}

/** Nothing but the end lines (--quiet is not offered; used by --dry-run). */
export class SilentProgress implements Progress {
  user(): void {}
  message(): void {}
  done(): void {}
  close(): void {}
}
