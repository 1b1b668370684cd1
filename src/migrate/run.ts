/**
 * The migration loop: for each user, open the source (locked like a POP3
 * session), open the target, and add every message whose UIDL the target
 * does not hold yet, in the source's POP3 order. Idempotent and resumable:
 * the target skips what it has (MigrationTarget.add), so a rerun after a kill
 * at any point moves only the rest.
 */
import type { Readable } from 'node:stream';
import { UIDL } from '../store/maildir/entry.js';
import type { MigratedMessage, MigrationSource, MigrationTarget } from '../store/migration.js';

export interface UserReport {
  user: string;
  /** Messages the source holds (or a POP3 server listed). */
  listed: number;
  /** Added to the target in this run. */
  moved: number;
  /** Already in the target (an earlier run). */
  present: number;
  /** Left behind, with the reasons in `skips`. */
  skipped: number;
  /** Octets added in this run (as stored). */
  bytes: number;
  skips: string[];
  error?: string;
  exitCode?: number;
}

export interface Progress {
  user(user: string, toMove: number, octets: number): void;
  message(octets: number): void;
  done(report: UserReport): void;
  close(): void;
}

export interface UserEndpoints {
  /** `skip`: a message the source left out (a POP3 server's bad listing), by number, and why. */
  openSource(skip: (number: number, why: string) => void): Promise<MigrationSource & { listed?: number }>;
  openTarget(): Promise<MigrationTarget>;
}

export interface RunOptions {
  /** Messages larger than this are left behind (reported). */
  maxMessageOctets: number;
  progress: Progress;
  signal?: AbortSignal | undefined;
  /** Test aid: the process kills itself (SIGKILL) after adding this many messages. */
  crashAfter?: number | undefined;
}

let addedInProcess = 0;

async function collect(stream: Readable, limit: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > limit) {
      stream.destroy();
      throw new RangeError(`message is larger than the limit (${limit} octets)`);
    }
    parts.push(chunk);
  }
  return Buffer.concat(parts, n);
}

/** Messages the source offers that can be stored: a valid UIDL, listed once, within the size limit. */
export function checkMessages(messages: readonly MigratedMessage[], maxOctets: number, skip: (why: string) => void): number[] {
  const seen = new Map<string, number>();
  for (const m of messages) seen.set(m.uidl, (seen.get(m.uidl) ?? 0) + 1);
  const out: number[] = [];
  messages.forEach((m, i) => {
    const shown = JSON.stringify(m.uidl.slice(0, 80));
    if (!UIDL.test(m.uidl)) skip(`message ${i + 1}: its UIDL ${shown} is not valid (RFC 1939: 1 to 70 characters from 0x21 to 0x7E)`);
    else if (seen.get(m.uidl)! > 1) skip(`message ${i + 1}: its UIDL ${shown} is listed for more than one message`);
    else if (!Number.isSafeInteger(m.size) || m.size < 0) skip(`message ${i + 1}: no usable size`);
    else if (m.size > maxOctets) skip(`message ${i + 1}: ${m.size} octets is larger than the limit (${maxOctets}, --max-message-size)`);
    else out.push(i);
  });
  return out;
}

/** Migrate one user's maildrop. Never throws: a failure is in the report. */
export async function migrateUser(user: string, ends: UserEndpoints, opts: RunOptions, classify: (e: unknown) => number): Promise<UserReport> {
  const report: UserReport = { user, listed: 0, moved: 0, present: 0, skipped: 0, bytes: 0, skips: [] };
  const skip = (why: string): void => {
    report.skipped++;
    if (report.skips.length < 1000) report.skips.push(why);
  };
  let source: (MigrationSource & { listed?: number }) | undefined;
  let target: MigrationTarget | undefined;
  try {
    source = await ends.openSource((n, why) => skip(`message ${n}: ${why}`));
    report.listed = source.listed ?? source.messages.length;
    const indexes = checkMessages(source.messages, opts.maxMessageOctets, skip);
    target = await ends.openTarget();
    const have = await target.uidls();
    const todo = indexes.filter((i) => {
      if (!have.has(source!.messages[i]!.uidl)) return true;
      report.present++;
      return false;
    });
    opts.progress.user(user, todo.length, todo.reduce((t, i) => t + source!.messages[i]!.size, 0));
    for (const i of todo) {
      opts.signal?.throwIfAborted();
      const m = source.messages[i]!;
      const limit = m.size + Math.max(64 * 1024, Math.ceil(m.size / 10));
      let body: Buffer;
      try {
        body = await collect(await source.read(i, opts.signal), Math.min(limit, opts.maxMessageOctets + 64 * 1024));
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        skip(`message ${i + 1} (UIDL ${m.uidl}): ${e.message}`);
        continue;
      }
      const r = await target.add(m, body);
      if (r === 'added') {
        report.moved++;
        report.bytes += body.length;
        addedInProcess++;
        if (opts.crashAfter !== undefined && addedInProcess >= opts.crashAfter) process.kill(process.pid, 'SIGKILL');
      } else report.present++;
      opts.progress.message(body.length);
    }
    await target.close();
    target = undefined;
  } catch (e) {
    report.error = e instanceof Error ? e.message : String(e);
    report.exitCode = classify(e);
  } finally {
    await target?.close().catch(() => undefined);
    await source?.close().catch(() => undefined);
  }
  opts.progress.done(report);
  return report;
}
