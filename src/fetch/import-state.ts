/**
 * `poplar fetch import-state`: take over what another POP3 fetcher already
 * fetched, so switching to Poplar does not deliver those messages again.
 * Three files are read, each as the tool writes it:
 *
 *   fetchmail  .fetchids         `<user>@<host> <uidl>` per line (the user may contain `@`)
 *   mpop       uidls_file        `#` comments; ` <count> <host> <user>` opens a list of `<count>` UIDLs, one a line
 *   getmail    oldmail-<server>-<port>-<user>   `<uidl>\0<seconds since the epoch>` per line
 *
 * The files are outside input: bounded in size and line length, parsed
 * strictly (anything unexpected is an ImportStateError naming the file and
 * line), and the account they describe must be the one imported into (same
 * host, case-insensitive, and user; for getmail also the port), unless the
 * caller forces it. The UIDLs are then recorded in the account's ledger as
 * delivered, exactly as if Poplar had fetched them.
 */
import { constants as C, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ResolvedAccount } from './config.js';
import { Ledger } from './ledger.js';

export type StateKind = 'fetchmail' | 'mpop' | 'getmail';
export const STATE_KINDS: readonly StateKind[] = ['fetchmail', 'mpop', 'getmail'];

/** A state file that cannot be read or used, with the file (and line) at fault. */
export class ImportStateError extends Error {
  override name = 'ImportStateError';
}

/** The largest state file read (a million UIDLs take some 30 MiB). */
export const MAX_STATE_FILE = 128 * 1024 * 1024;
/** The longest line accepted: a user, a host and a UIDL, with room to spare. */
const MAX_LINE = 4096;
/** RFC 1939 §7: 1 to 70 characters in 0x21-0x7E. */
const UIDL_RE = /^[\x21-\x7e]{1,70}$/;

export interface ForeignEntry {
  readonly uidl: string;
  /** When the other tool saw it (ms since the epoch), if it says. */
  readonly seenMs?: number;
}

/** The UIDLs a state file holds for one account of the other tool. */
export interface ForeignAccount {
  readonly host: string;
  readonly user: string;
  /** Only getmail names the port. */
  readonly port?: number;
  readonly entries: ForeignEntry[];
}

function lineError(file: string, n: number, why: string, line: string): ImportStateError {
  const shown = line.length > 80 ? `${line.slice(0, 80)}…` : line;
  return new ImportStateError(`${file}, line ${n}: ${why}: ${JSON.stringify(shown)}`);
}

/** The lines of `text`; the last must end with LF (a file cut short is refused, not half imported). */
function linesOf(text: string, file: string): string[] {
  if (text === '') return [];
  if (!text.endsWith('\n')) throw new ImportStateError(`${file}: the last line has no line end (a file cut short, or not one of this tool's files)`);
  const lines = text.slice(0, -1).split('\n');
  for (const [i, l] of lines.entries()) {
    if (l.length > MAX_LINE) throw new ImportStateError(`${file}, line ${i + 1}: longer than ${MAX_LINE} characters`);
  }
  return lines;
}

function account(map: Map<string, { host: string; user: string; port?: number; entries: ForeignEntry[] }>, host: string, user: string, port?: number): ForeignEntry[] {
  const key = `${host.toLowerCase()}\0${user}\0${port ?? ''}`;
  let a = map.get(key);
  if (a === undefined) map.set(key, (a = { host, user, ...(port !== undefined ? { port } : {}), entries: [] }));
  return a.entries;
}

/** fetchmail's `.fetchids`: `user@host uidl`, the host after the last `@` before the space. */
export function parseFetchmailIds(text: string, file: string): ForeignAccount[] {
  const out = new Map<string, ForeignAccount & { entries: ForeignEntry[] }>();
  for (const [i, line] of linesOf(text, file).entries()) {
    const m = /^([\x21-\x7e]+)@([\x21-\x3f\x41-\x7e]+) ([\x21-\x7e]+)$/.exec(line);
    if (m === null) throw lineError(file, i + 1, 'not a fetchmail UID line (user@host UIDL)', line);
    if (!UIDL_RE.test(m[3]!)) throw lineError(file, i + 1, 'not a POP3 UIDL (1-70 printable characters)', line);
    account(out, m[2]!, m[1]!).push({ uidl: m[3]! });
  }
  return [...out.values()];
}

/** mpop's UIDLs file: comments, then per account ` count host user` and that many UIDLs. */
export function parseMpopUidls(text: string, file: string): ForeignAccount[] {
  const out = new Map<string, ForeignAccount & { entries: ForeignEntry[] }>();
  const lines = linesOf(text, file);
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    if (line.startsWith('#')) {
      i++;
      continue;
    }
    const m = /^ (\d{1,9}) ([\x21-\x7e]+) ([\x20-\x7e]+)$/.exec(line);
    if (m === null) throw lineError(file, i + 1, 'expected an mpop list head (" count host user") or a # comment', line);
    const count = Number(m[1]);
    const entries = account(out, m[2]!, m[3]!);
    const head = i + 1;
    i++;
    for (let k = 0; k < count; k++, i++) {
      const u = lines[i];
      if (u === undefined) throw new ImportStateError(`${file}, line ${head}: announces ${count} UIDLs, the file ends after ${k}`);
      if (!UIDL_RE.test(u)) throw lineError(file, i + 1, `UIDL ${k + 1} of the list on line ${head} is not a POP3 UIDL`, u);
      entries.push({ uidl: u });
    }
  }
  return [...out.values()];
}

/**
 * getmail's `oldmail-<server>-<port>-<user>`: `uidl\0seconds` per line. The
 * account is only in the file's name; `expected` (made by `getmailFileName`)
 * says whose it is when it matches.
 */
export function parseGetmailOldmail(text: string, file: string, owner: { host: string; user: string; port: number } | undefined): ForeignAccount[] {
  const entries: ForeignEntry[] = [];
  for (const [i, line] of linesOf(text, file).entries()) {
    const m = /^([^\0]*)\0(\d{1,12})$/.exec(line);
    if (m === null) throw lineError(file, i + 1, 'not a getmail oldmail line (UIDL, NUL, seconds)', line.replace(/\0/g, '\\0'));
    if (!UIDL_RE.test(m[1]!)) throw lineError(file, i + 1, 'not a POP3 UIDL (1-70 printable characters)', line.replace(/\0/g, '\\0'));
    entries.push({ uidl: m[1]!, seenMs: Number(m[2]) * 1000 });
  }
  return [{ host: owner?.host ?? '?', user: owner?.user ?? '?', port: owner?.port ?? 0, entries }];
}

/** The name getmail gives the oldmail file of a POP3 account (each run of / : ; < > | made one `-`). */
export function getmailFileName(host: string, port: number, user: string): string {
  return `oldmail-${host}-${port}-${user}`.replace(/[/:;<>|]+/g, '-');
}

/** Read a state file: a regular file, not larger than MAX_STATE_FILE, as latin1 text. */
export async function readStateFile(file: string, maxOctets = MAX_STATE_FILE): Promise<string> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, C.O_RDONLY | C.O_NONBLOCK);
  } catch (e) {
    throw new ImportStateError(`cannot open ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new ImportStateError(`${file} is not a regular file`);
    if (st.size > maxOctets) throw new ImportStateError(`${file} is ${st.size} octets, more than a state file can be (${maxOctets})`);
    // Read at most one octet more than allowed: a file growing meanwhile is caught too.
    const buf = Buffer.alloc(Math.min(st.size, maxOctets) + 1);
    let got = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
      if (got === buf.length) throw new ImportStateError(`${file} grew while it was read, or is larger than ${maxOctets} octets`);
    }
    return buf.subarray(0, got).toString('latin1');
  } finally {
    await fh.close();
  }
}

export interface ImportSource {
  readonly kind: StateKind;
  readonly file: string;
}

/** `fetchmail:FILE`, `mpop:FILE`, `getmail:FILE`. */
export function parseSource(spec: string): ImportSource {
  const i = spec.indexOf(':');
  const kind = spec.slice(0, i);
  const file = spec.slice(i + 1);
  if (i < 0 || !(STATE_KINDS as readonly string[]).includes(kind) || file === '') {
    throw new ImportStateError(`--from takes fetchmail:FILE, mpop:FILE or getmail:FILE, not ${JSON.stringify(spec)}`);
  }
  // The shell does not expand a ~ after "fetchmail:", so it is done here.
  return { kind: kind as StateKind, file: file === '~' || file.startsWith('~/') ? path.join(os.homedir(), file.slice(1)) : file };
}

/** The accounts a state file describes. */
export async function readForeignState(src: ImportSource, acct: Pick<ResolvedAccount, 'host' | 'port' | 'user'>): Promise<ForeignAccount[]> {
  const text = await readStateFile(src.file);
  switch (src.kind) {
    case 'fetchmail':
      return parseFetchmailIds(text, src.file);
    case 'mpop':
      return parseMpopUidls(text, src.file);
    case 'getmail': {
      const mine = path.basename(src.file) === getmailFileName(acct.host, acct.port, acct.user);
      return parseGetmailOldmail(text, src.file, mine ? { host: acct.host, user: acct.user, port: acct.port } : undefined);
    }
  }
}

function describe(a: ForeignAccount): string {
  return a.host === '?' ? 'an account its name does not give' : `${a.user}@${a.host}${a.port !== undefined ? `:${a.port}` : ''}`;
}

/**
 * The account of the file that is `acct`: same host (case-insensitive) and
 * user, and port where the file has one. With `force`, the file's only
 * account whatever it is.
 */
export function chooseForeignAccount(found: readonly ForeignAccount[], acct: Pick<ResolvedAccount, 'host' | 'port' | 'user'>, src: ImportSource, force: boolean): ForeignAccount {
  const same = found.filter((a) => a.host.toLowerCase() === acct.host.toLowerCase() && a.user === acct.user && (a.port === undefined || a.port === acct.port));
  if (same.length === 1) return same[0]!;
  if (same.length > 1) return { host: acct.host, user: acct.user, entries: same.flatMap((a) => a.entries) };
  if (found.length === 0) throw new ImportStateError(`${src.file} holds no UIDLs`);
  const want = `${acct.user}@${acct.host}${src.kind === 'getmail' ? `:${acct.port} (a file named ${getmailFileName(acct.host, acct.port, acct.user)})` : ''}`;
  if (!force) {
    throw new ImportStateError(`${src.file} is ${src.kind}'s state of ${found.map(describe).join(', ')}, not of ${want}; --force imports it anyway`);
  }
  if (found.length > 1) throw new ImportStateError(`${src.file} holds ${found.length} accounts (${found.map(describe).join(', ')}) and none is ${want}: --force cannot tell which to import`);
  return found[0]!;
}

export interface ImportResult {
  /** Whose UIDLs were taken (as the file names it). */
  readonly from: string;
  /** UIDLs in the file for that account (duplicates counted once). */
  readonly inFile: number;
  /** Of those, already in the ledger. */
  readonly known: number;
  /** Newly recorded (0 with dryRun). */
  readonly added: number;
}

/**
 * Record the UIDLs of `src` for `acct` in its ledger as delivered (first
 * seen: when the other tool saw them, if it says, else `now`). The ledger is
 * locked meanwhile: a fetch of the account running at the same time makes
 * this fail with LedgerBusyError instead of racing it.
 */
export async function importState(acct: ResolvedAccount, src: ImportSource, opts: { force?: boolean; dryRun?: boolean; now?: number } = {}): Promise<ImportResult> {
  const found = await readForeignState(src, acct);
  const chosen = chooseForeignAccount(found, acct, src, opts.force === true);
  const byUidl = new Map<string, ForeignEntry>();
  for (const e of chosen.entries) if (!byUidl.has(e.uidl)) byUidl.set(e.uidl, e);
  const now = opts.now ?? Date.now();
  const exists = await fs.access(acct.state).then(
    () => true,
    () => false,
  );
  if (opts.dryRun === true && !exists) return { from: describe(chosen), inFile: byUidl.size, known: 0, added: 0 };
  const ledger = await Ledger.open(acct.state);
  try {
    const fresh = [...byUidl.values()].filter((e) => !ledger.has(e.uidl));
    const known = byUidl.size - fresh.length;
    if (opts.dryRun === true) return { from: describe(chosen), inFile: byUidl.size, known, added: 0 };
    // One record call per first-seen time (the ledger takes one time per call).
    const byTime = new Map<number, { uidl: string }[]>();
    for (const e of fresh) {
      const t = e.seenMs !== undefined && e.seenMs <= now ? e.seenMs : now;
      let group = byTime.get(t);
      if (group === undefined) byTime.set(t, (group = []));
      group.push({ uidl: e.uidl });
    }
    for (const [t, items] of byTime) await ledger.record(items, t);
    await ledger.sync();
    return { from: describe(chosen), inFile: byUidl.size, known, added: fresh.length };
  } finally {
    await ledger.close();
  }
}
