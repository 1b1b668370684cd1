/**
 * fsync of a directory: makes the entries created, renamed or removed in it
 * durable (a file's own fsync covers its content, not its name).
 */
import fsSync, { promises as fs } from 'node:fs';

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** fsync of an open descriptor, on the thread pool. */
export function fsyncFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fsSync.fsync(fd, (e) => (e ? reject(e) : resolve())));
}
