/**
 * File operations in directories others can write (a maildrop, a lock
 * file's directory), whose entries are never trusted:
 *
 * - a file that is read is opened with O_NOFOLLOW (a symbolic link is
 *   refused, not followed) and O_NONBLOCK (a FIFO or a device cannot hold the
 *   thread that opens it), and must then be a regular file (fstat);
 * - a file that is created is created with O_CREAT|O_EXCL|O_NOFOLLOW, so a
 *   link planted at its name is never written through.
 */
import { promises as fs, constants as C, type Stats } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

const READ_FLAGS = C.O_RDONLY | C.O_NOFOLLOW | C.O_NONBLOCK | C.O_NOCTTY;
/** O_CREAT|O_EXCL|O_NOFOLLOW for writing: a new file, never one already there, never through a link. */
export const CREATE_FLAGS = C.O_WRONLY | C.O_CREAT | C.O_EXCL | C.O_NOFOLLOW;

/** The error for something that is there but is not a regular file. */
export function notRegular(file: string, st: Stats): NodeJS.ErrnoException {
  const what = st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSymbolicLink() ? 'a symbolic link' : 'not a regular file';
  const code = st.isDirectory() ? 'EISDIR' : 'EINVAL';
  return Object.assign(new Error(`${code}: ${file} is ${what}, not a regular file`), { code, path: file });
}

/** Open `file` for reading: never through a symbolic link, never blocking, and only a regular file. */
export async function openRegular(file: string): Promise<FileHandle> {
  return (await openRegularStat(file)).fh;
}

async function openRegularStat(file: string): Promise<{ fh: FileHandle; stat: Stats }> {
  const fh = await fs.open(file, READ_FLAGS);
  try {
    const stat = await fh.stat();
    if (!stat.isFile()) throw notRegular(file, stat);
    return { fh, stat };
  } catch (e) {
    await fh.close().catch(() => undefined);
    throw e;
  }
}

/** The whole of a regular file (see openRegular) and its fstat. */
export async function readRegular(file: string): Promise<{ text: string; stat: Stats }> {
  const { fh, stat } = await openRegularStat(file);
  try {
    return { text: await fh.readFile('utf8'), stat };
  } finally {
    await fh.close();
  }
}

/**
 * Create `file` afresh and write `content`: O_EXCL|O_NOFOLLOW, so nothing
 * that already has the name (a planted link, a stale file) is ever opened.
 * With `replaceStale`, an entry already there is unlinked (unlink removes a
 * link itself, never its target) and the creation tried once more. A file
 * this call fails to write is removed before the error is thrown.
 */
export async function writeExclusive(file: string, content: string, opts: { mode: number; fsync?: boolean; replaceStale?: boolean }): Promise<void> {
  let fh: FileHandle;
  try {
    fh = await fs.open(file, CREATE_FLAGS, opts.mode);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST' || opts.replaceStale !== true) throw e;
    await fs.unlink(file);
    fh = await fs.open(file, CREATE_FLAGS, opts.mode);
  }
  try {
    await fh.writeFile(content);
    if (opts.fsync === true) await fh.sync();
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fs.unlink(file).catch(() => undefined);
    throw e;
  }
}

/** Create `file` for writing, exclusively and never through a link (a message in a Maildir's tmp/). */
export function createExclusive(file: string, mode: number): Promise<FileHandle> {
  return fs.open(file, CREATE_FLAGS, mode);
}
