/**
 * The maildrop's directories: creating what is missing (never through a
 * link), listing the messages of cur/ and new/ (skipping and reporting
 * anything else), and moving new/ to cur/ through the open directories.
 */
import { promises as fs, constants as C, existsSync, lstatSync, type Dirent } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../../observability/log.js';
import { baseName } from './names.js';
import { isPlainBaseName, isPlainFileName } from './safe-fs.js';

/** /proc/self/fd/N names the directory open as N, whatever has since been renamed or linked in its place. */
export const PROC_FD = existsSync('/proc/self/fd');

/**
 * A message file in cur/ or new/: a regular file with a plain name (d_type
 * from the listing itself, so no system call per file). Hidden files are
 * no messages; anything else (a symbolic link, a directory, a FIFO, a device,
 * a name no uidlist could hold) is skipped, and reported by messageNames.
 */
export function isMessage(d: Dirent): boolean {
  return d.name[0] !== '.' && d.isFile() && isPlainFileName(d.name) && isPlainBaseName(baseName(d.name));
}

function direntKind(d: Dirent): string {
  if (d.isSymbolicLink()) return 'symbolic link';
  if (d.isDirectory()) return 'directory';
  if (d.isFIFO()) return 'FIFO';
  if (d.isSocket()) return 'socket';
  if (d.isCharacterDevice() || d.isBlockDevice()) return 'device';
  return d.isFile() ? 'file with a name no uidlist can hold' : 'unknown';
}

/** Entries already reported as skipped, so that a login does not log them again (bounded). */
const REPORTED = new Set<string>();

/** Names of the messages in `sub` (cur/ or new/, listed through `list`); any other entry is skipped and logged once. */
export async function messageNames(dir: string, sub: 'cur' | 'new', log: Logger, list = path.join(dir, sub)): Promise<string[]> {
  const out: string[] = [];
  for (const d of await fs.readdir(list, { withFileTypes: true })) {
    if (isMessage(d)) {
      out.push(d.name);
      continue;
    }
    if (d.name[0] === '.') continue;
    const file = path.join(dir, sub, d.name);
    if (REPORTED.has(file)) continue;
    if (REPORTED.size >= 10_000) REPORTED.clear();
    REPORTED.add(file);
    log.warn({ file, kind: direntKind(d) }, 'skipped a maildrop entry that is not a regular file with a plain Maildir name');
  }
  return out;
}

/** Base names of every message file in cur/ and new/ right now. */
export async function listBaseNames(dir: string): Promise<Set<string>> {
  const out = new Set<string>();
  for (const sub of ['cur', 'new']) {
    for (const f of await fs.readdir(path.join(dir, sub))) if (f[0] !== '.') out.add(baseName(f));
  }
  return out;
}

/** A maildrop that cannot be used safely (cur/, new/ or tmp/ not a directory). */
export class UnsafeMaildrop extends Error {}

export function isDirectory(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false })?.isDirectory() ?? false;
}

/** Create what is missing of the maildrop; cur/, new/ and tmp/ must be real directories (lstat), never links. */
export async function ensureMaildir(dir: string): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  for (const sub of ['cur', 'new', 'tmp']) {
    const p = path.join(dir, sub);
    try {
      await fs.mkdir(p, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const st = await fs.lstat(p);
    if (!st.isDirectory()) throw new UnsafeMaildrop(`${p} is ${st.isSymbolicLink() ? 'a symbolic link' : 'not a directory'}`);
  }
}

/**
 * new/ and cur/ opened without following a link (O_DIRECTORY|O_NOFOLLOW), as
 * paths that name those very directories (/proc/self/fd/N) until close().
 */
export async function pinDirectories(dir: string): Promise<{ new: string; cur: string; close(): Promise<void> }> {
  if (!PROC_FD) return { new: path.join(dir, 'new'), cur: path.join(dir, 'cur'), close: async () => undefined };
  const open = (sub: string): Promise<FileHandle> => fs.open(path.join(dir, sub), C.O_RDONLY | C.O_DIRECTORY | C.O_NOFOLLOW);
  const [n, c] = await Promise.allSettled([open('new'), open('cur')]);
  const close = async (): Promise<void> => {
    for (const r of [n, c]) if (r.status === 'fulfilled') await r.value.close().catch(() => undefined);
  };
  if (n.status === 'rejected' || c.status === 'rejected') {
    await close();
    throw n.status === 'rejected' ? n.reason : (c as PromiseRejectedResult).reason;
  }
  return { new: `/proc/self/fd/${n.value.fd}`, cur: `/proc/self/fd/${c.value.fd}`, close };
}

/** Messages in new/ become cur/ at login, as every Maildir reader does. */
export async function moveNewToCur(newDir: string, curDir: string, names: readonly string[]): Promise<void> {
  for (const n of names) {
    const target = n.includes(':') ? n : `${n}:2,`;
    try {
      await fs.rename(path.join(newDir, n), path.join(curDir, target));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e; // moved by another reader
    }
  }
}
