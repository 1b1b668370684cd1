/** POP3 sizes (every line end counted as CRLF) of message files, measured by reading them. */
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { native } from '../../protocol/native.js';
import { openRegular } from './safe-fs.js';

/** Files per thread-pool job of the native measurer, and such jobs at a time. */
const SIZE_BATCH = 256;
const SIZE_BATCHES_IN_FLIGHT = 2;

/**
 * POP3 sizes of many files (undefined for one that cannot be read). With the
 * native module, batches of files are measured on the thread pool in C (open,
 * read, count, close in one job per batch, instead of four thread-pool round
 * trips per file); without it, 16 files at a time with fileCrlfSize. A first
 * login on a big Maildir is bound by this.
 */
export async function fileCrlfSizes(files: readonly string[], signal?: AbortSignal): Promise<(number | undefined)[]> {
  const out = new Array<number | undefined>(files.length);
  const measure = native?.crlfSizes;
  let next = 0;
  if (measure !== undefined) {
    const worker = async (): Promise<void> => {
      while (next < files.length) {
        signal?.throwIfAborted();
        const from = next;
        next = Math.min(files.length, next + SIZE_BATCH);
        const sizes = await measure(files.slice(from, next) as string[]);
        for (let i = 0; i < sizes.length; i++) out[from + i] = sizes[i]! >= 0 ? sizes[i] : undefined;
      }
    };
    await Promise.all(Array.from({ length: SIZE_BATCHES_IN_FLIGHT }, worker));
    return out;
  }
  const worker = async (): Promise<void> => {
    while (next < files.length) {
      signal?.throwIfAborted();
      const i = next++;
      out[i] = await fileCrlfSize(files[i]!).catch(() => undefined);
    }
  };
  await Promise.all(Array.from({ length: Math.min(16, files.length) }, worker));
  return out;
}

/** POP3 size of one message file (a regular file, opened without following a link or blocking: openRegular). */
export async function fileCrlfSize(file: string): Promise<number> {
  const counter = new CrlfSizeCounter();
  const fh = await openRegular(file);
  try {
    // Most messages fit in one read; big ones are counted chunk by chunk with bounded memory.
    const chunk = Buffer.allocUnsafe(256 * 1024);
    for (;;) {
      const { bytesRead } = await fh.read(chunk, 0, chunk.length, null);
      if (bytesRead === 0) break;
      counter.push(chunk.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return counter.size;
}
