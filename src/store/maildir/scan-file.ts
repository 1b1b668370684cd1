/**
 * A big maildrop's scan saved in the maildrop, as poplar-scan.cache, for the
 * other worker processes and the next start (scan-cache.ts decides when):
 * its format, a strict reader that is fast enough for a login (100,000
 * messages: one pass over the text, no regular expression, no string per
 * field until a field is used) and the writer.
 *
 *   poplar-scan 2 <number of messages> <key>
 *   <uid> <size> <order or -> <uidl> <file name>      one line per message, in POP3 order
 *
 * The key is no secret (anyone who can list the maildrop can stat it), so
 * the file is trusted only when this server's user owns it and nobody else
 * may write it, and even then every field is checked: a file name must be a
 * plain name of a file in cur/, and is only ever joined to cur/ (never a
 * path); sizes and UIDs are safe integers; no base name or UID twice (so no
 * file name twice either). Anything else is reported as untrusted.
 */
import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { Entry } from './entry.js';
import { readRegular, writeExclusive } from './safe-fs.js';

export const SCAN_FILE = 'poplar-scan.cache';
const HEADER = 'poplar-scan 2 ';
/** The shortest line: "1 0 - u f\n". */
const MIN_LINE = 10;

/**
 * A message of a saved scan: its numbers are fields, its strings slices of
 * the file's text made when asked for (a login that only answers STAT and
 * LIST never makes them). Never changes, like every Entry.
 */
class SavedEntry implements Entry {
  readonly uid: number;
  readonly size: number;
  readonly order: number | undefined;
  readonly #text: string;
  /** Start of the uidl; the file name starts at #name, its base name ends at #base, the line at #end. */
  readonly #uidl: number;
  readonly #name: number;
  readonly #base: number;
  readonly #end: number;

  constructor(text: string, uid: number, size: number, order: number | undefined, uidl: number, name: number, base: number, end: number) {
    this.uid = uid;
    this.size = size;
    this.order = order;
    this.#text = text;
    this.#uidl = uidl;
    this.#name = name;
    this.#base = base;
    this.#end = end;
  }

  get uidl(): string {
    return this.#text.slice(this.#uidl, this.#name - 1);
  }

  get filename(): string {
    return this.#text.slice(this.#name, this.#end);
  }

  get basename(): string {
    return this.#text.slice(this.#name, this.#base);
  }
}

/** Decimal digits text[from, to): 1 to 15 of them (a safe integer), else -1. */
function digits(text: string, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const d = text.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return -1;
    n = n * 10 + d;
  }
  return n;
}

/** FNV-1a of text[from, to), for the base-name table. */
function hashRange(text: string, from: number, to: number): number {
  let h = 0x811c9dc5;
  for (let i = from; i < to; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

function sameRange(text: string, a: number, b: number, len: number): boolean {
  for (let i = 0; i < len; i++) if (text.charCodeAt(a + i) !== text.charCodeAt(b + i)) return false;
  return true;
}

export type SavedScan = Entry[] | null | { untrusted: string };

/** Lines parsed between two turns of the event loop when reading in the background. */
const LINES_PER_TURN = 4096;

/** How a read is paced; `background` may be turned off while it runs (a login came to wait for it). */
export interface ReadPace {
  background: boolean;
}

/**
 * The saved scan if it is there under `key` (null: none, another version's
 * or an older one), or why it is not to be trusted. While `pace.background`
 * holds, a few thousand lines are parsed per turn of the event loop, so that
 * sessions of this process are not held up by a maildrop nobody waits for.
 */
export async function readScanFile(dir: string, key: string, pace: ReadPace = { background: false }): Promise<SavedScan> {
  let text: string;
  let st: Stats;
  try {
    ({ text, stat: st } = await readRegular(path.join(dir, SCAN_FILE)));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? null : { untrusted: `cannot be read as a regular file (${code ?? String(e)})` };
  }
  const euid = process.geteuid?.();
  if ((euid !== undefined && st.uid !== euid) || (st.mode & 0o022) !== 0) return { untrusted: `owned by uid ${st.uid} with mode ${(st.mode & 0o777).toString(8)}, not written by this server` };
  const steps = parseSteps(text, key);
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
    if (pace.background) await new Promise((resolve) => setImmediate(resolve));
  }
}

/** The text of a saved scan, checked line by line (see the file header). */
export function parseScanFile(text: string, key: string): SavedScan {
  const steps = parseSteps(text, key);
  for (;;) {
    const step = steps.next();
    if (step.done === true) return step.value;
  }
}

/** parseScanFile, pausing every LINES_PER_TURN lines. */
function* parseSteps(text: string, key: string): Generator<void, SavedScan> {
  const nl = text.indexOf('\n');
  if (nl < 0 || !text.startsWith(HEADER)) return null; // another version's, or torn: scan instead
  const sp = text.indexOf(' ', HEADER.length);
  if (sp < 0 || sp > nl || text.slice(sp + 1, nl) !== key) return null; // the maildrop changed since: scan instead
  const count = digits(text, HEADER.length, sp);
  // The count bounds the tables below: no more lines than the text can hold.
  if (count < 0 || count > (text.length - nl - 1) / MIN_LINE || text.charCodeAt(text.length - 1) !== 0x0a) return { untrusted: 'damaged header or last line' };
  const entries = new Array<Entry>(count);
  const uids = new Float64Array(count);
  const baseFrom = new Int32Array(count);
  const baseLen = new Int32Array(count);
  let slots = 1;
  while (slots < count * 2) slots <<= 1;
  const table = new Int32Array(slots).fill(-1);
  let n = 0;
  const bad = (why: string): { untrusted: string } => ({ untrusted: `line ${n + 2} ${why}` });
  for (let pos = nl + 1; pos < text.length; ) {
    if (n === count) return { untrusted: `more messages than the header says (${count})` };
    if (n % LINES_PER_TURN === LINES_PER_TURN - 1) yield;
    const end = text.indexOf('\n', pos);
    // <uid> <size> <order or -> <uidl> <file name>, single spaces, nothing else.
    const s1 = text.indexOf(' ', pos);
    const s2 = s1 < 0 ? -1 : text.indexOf(' ', s1 + 1);
    const s3 = s2 < 0 ? -1 : text.indexOf(' ', s2 + 1);
    const s4 = s3 < 0 ? -1 : text.indexOf(' ', s3 + 1);
    if (s4 < 0 || s4 >= end) return bad('is malformed');
    const uid = digits(text, pos, s1);
    const size = digits(text, s1 + 1, s2);
    const dash = s3 === s2 + 2 && text.charCodeAt(s2 + 1) === 0x2d;
    const order = dash ? undefined : digits(text, s2 + 1, s3);
    if (uid < 1 || text.charCodeAt(pos) === 0x30 || size < 0 || (order !== undefined && order < 0)) return bad('is malformed');
    // The uidl: 1 to 70 characters from 0x21 to 0x7e (RFC 1939 §7).
    if (s4 - s3 - 1 < 1 || s4 - s3 - 1 > 70) return bad('is malformed');
    for (let i = s3 + 1; i < s4; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x21 || c > 0x7e) return bad('is malformed');
    }
    // The file name: a plain name of cur/ (safe-fs.ts isPlainFileName), whose base name (before
    // the first ':') is a plain name as well: no '/', no control character, no space, not hidden.
    const name = s4 + 1;
    if (end - name < 1 || end - name > 255 || text.charCodeAt(name) === 0x2e || text.charCodeAt(name) === 0x3a) return bad('names no file of cur/');
    let base = end;
    let ascii = true;
    for (let i = name; i < end; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x21 || c === 0x2f || (c >= 0x7f && c <= 0x9f)) return bad(c === 0x20 ? 'is malformed' : 'names no file of cur/');
      if (c > 0x7f) ascii = false;
      if (c === 0x3a && base === end) base = i;
    }
    if (!ascii && Buffer.byteLength(text.slice(name, end)) > 255) return bad('names no file of cur/');
    // No base name twice (and so no file name twice).
    const len = base - name;
    for (let h = hashRange(text, name, base) & (slots - 1); ; h = (h + 1) & (slots - 1)) {
      const j = table[h]!;
      if (j < 0) {
        table[h] = n;
        break;
      }
      if (baseLen[j] === len && sameRange(text, baseFrom[j]!, name, len)) return bad('repeats a message');
    }
    baseFrom[n] = name;
    baseLen[n] = len;
    uids[n] = uid;
    entries[n++] = new SavedEntry(text, uid, size, order, s3 + 1, name, base, end);
    pos = end + 1;
  }
  if (n !== count) return { untrusted: `${n} messages where the header says ${count}` };
  uids.sort();
  for (let i = 1; i < n; i++) if (uids[i] === uids[i - 1]) return { untrusted: `UID ${uids[i]} given to two messages` };
  return entries;
}

/** Save the scan (atomically, through no link planted in the maildrop); no fsync: a cache. */
export async function writeScanFile(dir: string, key: string, entries: readonly Entry[]): Promise<void> {
  const lines = new Array<string>(entries.length + 2);
  lines[0] = `${HEADER}${entries.length} ${key}`;
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    lines[i + 1] = `${e.uid} ${e.size} ${e.order ?? '-'} ${e.uidl} ${e.filename}`;
  }
  lines[entries.length + 1] = '';
  // An unpredictable name, created exclusively: nothing planted in the maildrop is written through.
  const tmp = path.join(dir, `${SCAN_FILE}.${process.pid}.${randomBytes(8).toString('hex')}.tmp`);
  // A torn or stale file fails the key or the parse and is ignored.
  await writeExclusive(tmp, lines.join('\n'), { mode: 0o600 });
  try {
    await fs.rename(tmp, path.join(dir, SCAN_FILE));
  } catch (e) {
    await fs.unlink(tmp).catch(() => undefined);
    throw e;
  }
}
