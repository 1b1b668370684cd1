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
 *   records deliveries to such sinks one at a time (see deliver.ts).
 *
 * Byte-identical messages are matched as a multiset: two pending copies and
 * one stored copy mean one delivered and one not.
 */
import { constants as C, promises as fs } from 'node:fs';
import path from 'node:path';
import type { MessageSource } from './sinks/types.js';
import { digestOf, fileRange, lfOf } from './sinks/util.js';

/** Clock and file-system timestamp granularity. */
const SLACK_MS = 2_000;

/** A pending delivery as the Maildir check sees it. */
export interface MaildirPending {
  readonly uidl: string;
  /** Real time the intent was written. */
  readonly since: number;
  /** Maildir directories the message may have gone to (the folder's directory, not new/). */
  readonly dirs: readonly string[];
  /** The message as the server sends it now (read as a stream: it may be of any size). */
  readonly content: MessageSource;
}

/** UIDLs among `pending` whose message is in one of its Maildirs. */
export async function findInMaildirs(pending: readonly MaildirPending[]): Promise<Set<string>> {
  const found = new Set<string>();
  if (pending.length === 0) return found;
  const since = Math.min(...pending.map((p) => p.since)) - SLACK_MS;
  const sizes = new Set<number>();
  const wanted: { p: MaildirPending; key: string }[] = [];
  for (const p of pending) {
    const { key, length } = await digestOf(lfOf(p.content.chunks()));
    sizes.add(length).add(p.content.size);
    wanted.push({ p, key });
  }
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
        const st = await fs.lstat(file).catch(() => undefined);
        if (st === undefined || !st.isFile() || st.mtimeMs < since || !sizes.has(st.size)) continue;
        const k = await fileDigest(file, st.size);
        if (k === undefined) continue;
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

/** Digest of a stored message's LF form, read in pieces (undefined when it cannot be read as a regular file). */
async function fileDigest(file: string, size: number): Promise<string | undefined> {
  const fh = await fs.open(file, C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK).catch(() => undefined);
  if (fh === undefined) return undefined;
  try {
    if (!(await fh.stat()).isFile()) return undefined;
    return (await digestOf(lfOf(fileRange(fh, 0, size)))).key;
  } catch {
    return undefined;
  } finally {
    await fh.close().catch(() => undefined);
  }
}
