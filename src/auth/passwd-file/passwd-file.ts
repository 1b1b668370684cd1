/**
 * Dovecot passwd-file:
 *
 *   user:password:uid:gid:gecos:home:shell:extra_fields
 *
 * Everything after the password is optional. Blank lines and lines starting
 * with '#' are ignored. extra_fields is a space-separated list of `key=value`
 * (or bare `key`); like Dovecot, colons inside extra_fields are kept
 * (`userdb_mail=maildir:~/Maildir`). When a user appears more than once the
 * first line wins (Dovecot does the same) and the duplicate is reported.
 */
import { randomBytes } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { mkdir, open, readFile, realpath, rename, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { fsyncDir } from '../../platform/fsync.js';
import { LOCK_FORMATS, LockBusyError, LockFile } from '../../platform/lock-file.js';
import { usernameSyntaxProblem } from '../username.js';

export interface PasswdEntry {
  readonly username: string;
  /** The stored secret, e.g. `{ARGON2ID}$argon2id$...` (may be empty). */
  readonly password: string;
  readonly uid: string;
  readonly gid: string;
  readonly gecos: string;
  readonly home: string;
  readonly shell: string;
  /** extra_fields; a bare key (e.g. `nopassword`) maps to ''. Not interpreted here. */
  readonly extra: ReadonlyMap<string, string>;
}

export interface PasswdParseError {
  /** 1-based */
  readonly line: number;
  readonly message: string;
}

export interface ParsedPasswdFile {
  readonly entries: ReadonlyMap<string, PasswdEntry>;
  readonly errors: readonly PasswdParseError[];
}

export type PasswdFileLogger = (message: string) => void;

/** Error from the file-updating helpers; `code` says what went wrong. */
export class PasswdFileError extends Error {
  readonly code: 'INVALID_NAME' | 'INVALID_FIELD' | 'USER_EXISTS' | 'NO_SUCH_USER' | 'READ_FAILED' | 'WRITE_FAILED' | 'LOCKED';
  constructor(code: PasswdFileError['code'], message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PasswdFileError';
    this.code = code;
  }
}

// ---------------------------------------------------------------------------
// pure parsing / formatting

const CONTROL_RE = /[\u0000-\u001f\u007f]/;

/**
 * Why `name` is not acceptable as a user name, or undefined when it is: the
 * rules every login path applies (./username.ts), then what the file format
 * and the maildrop path need. Names are case-sensitive.
 */
export function usernameProblem(name: string): string | undefined {
  const syntax = usernameSyntaxProblem(name);
  if (syntax !== undefined) return syntax;
  if (/\s/u.test(name)) return 'user name contains whitespace';
  if (name.includes(':')) return "user name contains ':'";
  if (name.includes('/')) return "user name contains '/'";
  if (name.startsWith('.')) return "user name starts with '.'";
  if (name.startsWith('#')) return "user name starts with '#'";
  return undefined;
}

function parseExtra(s: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const tok of s.split(' ')) {
    if (tok === '') continue;
    const eq = tok.indexOf('=');
    const key = eq < 0 ? tok : tok.slice(0, eq);
    const value = eq < 0 ? '' : tok.slice(eq + 1);
    if (key !== '') m.set(key, value);
  }
  return m;
}

/** Parses one non-comment line. Returns the entry or an error message. */
export function parsePasswdLine(line: string): PasswdEntry | string {
  const fields = line.split(':');
  const username = fields[0] ?? '';
  const problem = usernameProblem(username);
  if (problem) return problem;
  const password = fields[1] ?? '';
  if (CONTROL_RE.test(line)) return 'line contains a control character';
  return {
    username,
    password,
    uid: fields[2] ?? '',
    gid: fields[3] ?? '',
    gecos: fields[4] ?? '',
    home: fields[5] ?? '',
    shell: fields[6] ?? '',
    extra: parseExtra(fields.slice(7).join(':')),
  };
}

function splitLines(text: string): string[] {
  const body = text.startsWith('\uFEFF') ? text.slice(1) : text;
  return body.split('\n').map((l) => (l.endsWith('\r') ? l.slice(0, -1) : l));
}

function isIgnorable(line: string): boolean {
  return line.trim() === '' || line.startsWith('#');
}

export function parsePasswdFile(text: string): ParsedPasswdFile {
  const entries = new Map<string, PasswdEntry>();
  const errors: PasswdParseError[] = [];
  splitLines(text).forEach((line, i) => {
    if (isIgnorable(line)) return;
    const e = parsePasswdLine(line);
    if (typeof e === 'string') {
      errors.push({ line: i + 1, message: e });
    } else if (entries.has(e.username)) {
      errors.push({ line: i + 1, message: `user ${e.username} exists more than once; the first entry is used` });
    } else {
      entries.set(e.username, e);
    }
  });
  return { entries, errors };
}

/** Input to formatPasswdEntry: only username and password are required. */
export interface PasswdEntryInput {
  readonly username: string;
  readonly password: string;
  readonly uid?: string;
  readonly gid?: string;
  readonly gecos?: string;
  readonly home?: string;
  readonly shell?: string;
  readonly extra?: ReadonlyMap<string, string>;
}

/** Formats one line (without newline). Trailing empty fields are omitted. Throws PasswdFileError on bad input. */
export function formatPasswdEntry(entry: PasswdEntryInput): string {
  const problem = usernameProblem(entry.username);
  if (problem) throw new PasswdFileError('INVALID_NAME', problem);
  const fields = [entry.password, entry.uid ?? '', entry.gid ?? '', entry.gecos ?? '', entry.home ?? '', entry.shell ?? ''];
  fields.forEach((f, i) => {
    if (f.includes(':') || CONTROL_RE.test(f)) {
      throw new PasswdFileError('INVALID_FIELD', `field ${i + 2} must not contain ':' or control characters`);
    }
  });
  const extra: string[] = [];
  for (const [k, v] of entry.extra ?? []) {
    if (k === '' || k.includes('=') || /[\s]/u.test(k) || /[\s]/u.test(v) || CONTROL_RE.test(k) || CONTROL_RE.test(v)) {
      throw new PasswdFileError('INVALID_FIELD', `extra field ${JSON.stringify(k)} cannot be written`);
    }
    extra.push(v === '' ? k : `${k}=${v}`);
  }
  const all = [entry.username, ...fields, extra.join(' ')];
  while (all.length > 2 && all[all.length - 1] === '') all.pop();
  return all.join(':');
}

// ---------------------------------------------------------------------------
// PasswdFile: cached, self-reloading reader

export interface PasswdFileOptions {
  /** Receives warnings (bad lines, failed reloads). */
  readonly logger?: PasswdFileLogger;
  /** Clock in ms; injectable for tests. Default Date.now. */
  readonly now?: () => number;
  /** Minimum time between stat() checks, ms. Default 1000. */
  readonly checkIntervalMs?: number;
}

interface Snapshot {
  readonly key: string;
  readonly entries: ReadonlyMap<string, PasswdEntry>;
}

function statKey(s: { dev: number; ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

export class PasswdFile {
  readonly path: string;
  readonly #logger: PasswdFileLogger | undefined;
  readonly #now: () => number;
  readonly #interval: number;
  #snapshot: Snapshot | undefined;
  /** stat key of a version we refused, so we do not re-read and re-warn every second */
  #rejectedKey: string | undefined;
  #lastCheck = Number.NEGATIVE_INFINITY;
  #inflight: Promise<void> | undefined;

  constructor(path: string, options: PasswdFileOptions = {}) {
    this.path = path;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    this.#interval = options.checkIntervalMs ?? 1000;
  }

  /**
   * Finds a user (exact, case-sensitive match). Throws when the file has never
   * been readable; after a successful load, later read failures keep the old
   * content and are only logged.
   */
  async lookup(username: string): Promise<PasswdEntry | undefined> {
    return (await this.entries()).get(username);
  }

  /** All entries, refreshed as lookup() does. */
  async entries(): Promise<ReadonlyMap<string, PasswdEntry>> {
    await this.#refresh();
    if (!this.#snapshot) throw new Error(`passwd-file ${this.path}: not loaded`);
    return this.#snapshot.entries;
  }

  /** Forces a stat check on the next lookup. */
  invalidate(): void {
    this.#lastCheck = Number.NEGATIVE_INFINITY;
  }

  #warn(msg: string): void {
    this.#logger?.(`passwd-file ${this.path}: ${msg}`);
  }

  async #refresh(): Promise<void> {
    const now = this.#now();
    if (this.#snapshot && now - this.#lastCheck < this.#interval) return;
    if (this.#inflight) return this.#inflight;
    this.#lastCheck = now;
    this.#inflight = this.#check().finally(() => {
      this.#inflight = undefined;
    });
    return this.#inflight;
  }

  async #check(): Promise<void> {
    try {
      const st = await stat(this.path);
      const key = statKey(st);
      if (key === this.#snapshot?.key || key === this.#rejectedKey) return;
    } catch (e) {
      this.#readFailed(e);
      return;
    }
    let fh: FileHandle | undefined;
    let key: string;
    let text: string;
    try {
      fh = await open(this.path, fsc.O_RDONLY);
      key = statKey(await fh.stat());
      const buf = await fh.readFile();
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf);
    } catch (e) {
      this.#readFailed(e);
      return;
    } finally {
      await fh?.close().catch(() => undefined);
    }
    const parsed = parsePasswdFile(text);
    for (const err of parsed.errors) this.#warn(`line ${err.line}: ${err.message}`);
    if (parsed.errors.length > 0 && this.#snapshot) {
      this.#warn(`keeping the previously loaded content (${parsed.errors.length} bad line(s) in the new version)`);
      this.#rejectedKey = key;
      return;
    }
    this.#snapshot = { key, entries: parsed.entries };
    this.#rejectedKey = undefined;
  }

  #readFailed(e: unknown): void {
    const why = e instanceof Error ? e.message : String(e);
    if (!this.#snapshot) throw new Error(`passwd-file ${this.path}: cannot read: ${why}`, { cause: e });
    this.#warn(`cannot re-read (${why}); keeping the previously loaded content`);
  }
}

// ---------------------------------------------------------------------------
// atomic updates

const LOCK_WAIT_MS = 5000;
const LOCK_STALE_MS = 30_000;

async function resolveTarget(path: string): Promise<string> {
  try {
    return await realpath(path);
  } catch {
    return path;
  }
}

async function readOrEmpty(path: string): Promise<{ text: string; mode: number | undefined; uid?: number; gid?: number }> {
  try {
    const [buf, st] = await Promise.all([readFile(path), stat(path)]);
    return { text: buf.toString('utf8'), mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { text: '', mode: undefined };
    throw new PasswdFileError('READ_FAILED', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** `<file>.lock` holding our pid (a lock file, see platform/lock-file.ts for when one is stale). */
async function withLock<T>(target: string, fn: () => Promise<T>): Promise<T> {
  const lockPath = `${target}.lock`;
  let lock: LockFile;
  try {
    lock = await LockFile.acquire(lockPath, { format: LOCK_FORMATS.pidLine, mode: 0o600, staleMs: LOCK_STALE_MS, waitMs: LOCK_WAIT_MS });
  } catch (e) {
    if (e instanceof LockBusyError) throw new PasswdFileError('LOCKED', `${target} is locked by another process (lock file ${lockPath})`, { cause: e });
    throw new PasswdFileError('WRITE_FAILED', `cannot create lock file ${lockPath}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/**
 * Replaces `path` atomically: temp file in the same directory (mode 0600, or
 * the old file's mode), fsync, rename, fsync directory.
 */
export async function writeFileAtomic(path: string, content: string, keep?: { mode?: number | undefined; uid?: number | undefined; gid?: number | undefined }): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx', 0o600);
    await fh.chmod(keep?.mode ?? 0o600);
    if (keep?.uid !== undefined && keep.gid !== undefined && (keep.uid !== process.getuid?.() || keep.gid !== process.getgid?.())) {
      await fh.chown(keep.uid, keep.gid).catch(() => undefined); // best effort (only root may)
    }
    await fh.writeFile(content, 'utf8');
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (e) {
    await fh?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw new PasswdFileError('WRITE_FAILED', `cannot write ${path}: ${(e as Error).message}`, { cause: e });
  }
  // Directory fsync is best effort (not supported everywhere).
  await fsyncDir(dir).catch(() => undefined);
}

/** Edits the file line by line, preserving comments and untouched lines byte for byte. */
async function editLines(path: string, create: boolean, edit: (lines: string[]) => string[]): Promise<void> {
  const target = await resolveTarget(path);
  if (create) {
    await mkdir(dirname(target), { recursive: true, mode: 0o700 }).catch((e: unknown) => {
      throw new PasswdFileError('WRITE_FAILED', `cannot create directory ${dirname(target)}: ${(e as Error).message}`, { cause: e });
    });
  } else {
    // Nothing to edit in a missing file: let edit() report the missing user without creating a lock file.
    try {
      await stat(target);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        edit([]);
        return;
      }
    }
  }
  await withLock(target, async () => {
    const { text, mode, uid, gid } = await readOrEmpty(target);
    const hadBom = text.startsWith('\uFEFF');
    const lines = (hadBom ? text.slice(1) : text).split('\n');
    if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    const out = edit(lines);
    await writeFileAtomic(target, (hadBom ? '\uFEFF' : '') + out.map((l) => `${l}\n`).join(''), { mode, uid, gid });
  });
}

function lineUser(line: string): string | undefined {
  const l = line.endsWith('\r') ? line.slice(0, -1) : line;
  if (isIgnorable(l)) return undefined;
  return l.split(':')[0];
}

function checkName(name: string): void {
  const problem = usernameProblem(name);
  if (problem) throw new PasswdFileError('INVALID_NAME', `invalid user name ${JSON.stringify(name)}: ${problem}`);
}

/** Appends a user. Creates the file (0600) when missing. */
export async function addUser(path: string, entry: PasswdEntryInput): Promise<void> {
  checkName(entry.username);
  const line = formatPasswdEntry(entry);
  await editLines(path, true, (lines) => {
    if (lines.some((l) => lineUser(l) === entry.username)) {
      throw new PasswdFileError('USER_EXISTS', `user ${entry.username} already exists`);
    }
    return [...lines, line];
  });
}

/** Replaces the password field of an existing user, keeping the other fields as written. */
export async function setPassword(path: string, username: string, secret: string): Promise<void> {
  checkName(username);
  if (secret.includes(':') || CONTROL_RE.test(secret)) throw new PasswdFileError('INVALID_FIELD', "password must not contain ':' or control characters");
  await editLines(path, false, (lines) => {
    const i = lines.findIndex((l) => lineUser(l) === username);
    const old = i < 0 ? undefined : lines[i];
    if (old === undefined) throw new PasswdFileError('NO_SUCH_USER', `no such user: ${username}`);
    const cr = old.endsWith('\r') ? '\r' : '';
    const body = cr ? old.slice(0, -1) : old;
    const first = body.indexOf(':');
    const second = first < 0 ? -1 : body.indexOf(':', first + 1);
    const rest = second < 0 ? '' : body.slice(second);
    const copy = [...lines];
    copy[i] = `${username}:${secret}${rest}${cr}`;
    return copy;
  });
}

/** Removes every line for `username`. */
export async function removeUser(path: string, username: string): Promise<void> {
  checkName(username);
  await editLines(path, false, (lines) => {
    const kept = lines.filter((l) => lineUser(l) !== username);
    if (kept.length === lines.length) throw new PasswdFileError('NO_SUCH_USER', `no such user: ${username}`);
    return kept;
  });
}

/** User names in file order (valid lines only, first occurrence). A missing file is an error. */
export async function listUsers(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new PasswdFileError('READ_FAILED', `cannot read ${path}: ${(e as Error).message}`, { cause: e });
  }
  return [...parsePasswdFile(text).entries.keys()];
}
