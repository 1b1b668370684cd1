/**
 * Settling deliveries a crash left undecided. An intent line says a message
 * was about to be handed to a sink; no record line says whether the sink
 * finished. The fetcher fetches each such message again and asks the sink it
 * was going to (`Sink.findDelivered`); what a sink finds is recorded, the
 * rest is delivered again.
 *
 * - Maildir (here, through MaildirSink.findDelivered): the message is there
 *   if a file written since the intent holds the same content (compared
 *   after CRLF → LF, the form the Maildir sink stores by default, so either
 *   line-end setting matches). The file name's `,S=` size narrows the
 *   candidates before any file is read.
 * - mbox (MboxSink.findDelivered): a scan of the whole mbox under its locks,
 *   comparing what follows each From_ line with the message as the sink
 *   would write it; a torn last message is cut off (see mbox.ts).
 * - MDA and LMTP cannot be asked: their pending messages are delivered
 *   again. To keep that to at most one message per crash, the fetcher
 *   records deliveries to such sinks one at a time (see session.ts).
 *
 * Byte-identical messages are matched as a multiset: two pending copies and
 * one stored copy mean one delivered and one not.
 */
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { crlfToLf } from './sinks/util.js';

/** Clock and file-system timestamp granularity. */
const SLACK_MS = 2_000;

/** A pending delivery as the Maildir check sees it. */
export interface MaildirPending {
  readonly uidl: string;
  /** Real time the intent was written. */
  readonly since: number;
  /** Maildir directories the message may have gone to (the folder's directory, not new/). */
  readonly dirs: readonly string[];
  /** The message as the server sends it now. */
  readonly content: Buffer;
}

/** UIDLs among `pending` whose message is in one of its Maildirs. */
export async function findInMaildirs(pending: readonly MaildirPending[]): Promise<Set<string>> {
  const found = new Set<string>();
  if (pending.length === 0) return found;
  const since = Math.min(...pending.map((p) => p.since)) - SLACK_MS;
  const sizes = new Set<number>();
  const wanted = pending.map((p) => {
    const lf = crlfToLf(p.content);
    sizes.add(lf.length).add(p.content.length);
    return { p, key: digest(lf) };
  });
  // digest of the LF form → files holding it, over every directory concerned; each file is read once.
  const index = new Map<string, string[]>();
  const seenDirs = new Set<string>();
  for (const dir of new Set(pending.flatMap((p) => p.dirs))) {
    if (seenDirs.has(dir)) continue;
    seenDirs.add(dir);
    for (const sub of ['new', 'cur']) {
      let names: string[];
      try {
        names = await fs.readdir(path.join(dir, sub));
      } catch {
        continue;
      }
      for (const n of names) {
        const m = /,S=(\d+)/.exec(n);
        if (m !== null && !sizes.has(Number(m[1]))) continue;
        const file = path.join(dir, sub, n);
        const st = await fs.stat(file).catch(() => undefined);
        if (st === undefined || !st.isFile() || st.mtimeMs < since || !sizes.has(st.size)) continue;
        const body = await fs.readFile(file).catch(() => undefined);
        if (body === undefined) continue;
        const k = digest(crlfToLf(body));
        const l = index.get(k) ?? [];
        l.push(`${dir}\0${file}`);
        index.set(k, l);
      }
    }
  }
  for (const { p, key } of wanted) {
    const l = index.get(key);
    const i = l?.findIndex((f) => p.dirs.includes(f.slice(0, f.indexOf('\0')))) ?? -1;
    if (l !== undefined && i >= 0) {
      l.splice(i, 1); // claimed: identical copies match one file each
      found.add(p.uidl);
    }
  }
  return found;
}

function digest(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}
