/**
 * Writing a message into a Maildir, the one way Poplar does it (the store's
 * `deliver` and the fetch sink both use it):
 *
 *   tmp/<unique>                             created O_CREAT|O_EXCL|O_NOFOLLOW, written (fsynced if asked), closed
 *   new/<unique>,S=<octets>,W=<crlf octets>  hard link (rename where links are not supported)
 *   tmp/<unique>                             unlinked
 *
 * The message is visible (in new/) only once it is complete, under a name
 * never used before (names.ts uniqueName). `,S=` is its size on disk and
 * `,W=` its size as POP3 sends it (every line end as CRLF), so a server
 * answers LIST without reading the file. A failure before the link removes
 * the tmp/ file.
 *
 * The steps are separate so that the caller decides about durability: the
 * fsync of new/ (the link itself) is the caller's, and so is taking the
 * message back if it fails; the fetch sink shares and batches those fsyncs
 * (docs/fetch.md, "Speed"), the store makes one per delivery.
 */
import fsSync, { promises as fs } from 'node:fs';
import path from 'node:path';
import { CREATE_FLAGS } from '../../platform/safe-file.js';
import { CrlfSizeCounter } from '../../protocol/message-size.js';
import { uniqueName } from './names.js';

/** A message written to tmp/ and not yet in new/. */
export interface TmpMessage {
  /** The Maildir (holding tmp/ and new/). */
  readonly dir: string;
  readonly base: string;
  readonly tmp: string;
  /** Octets on disk (,S=). */
  readonly octets: number;
  /** Octets on the wire, every line end as CRLF (,W=). */
  readonly crlfSize: number;
}

/** A change of line ends applied while writing (the fetch sink stores CRLF as LF). */
export interface LineConverter {
  push(chunk: Buffer): Buffer;
  end(): Buffer;
}

/** errno codes of file systems without hard links, where rename is used instead. */
export const NO_LINK: ReadonlySet<string> = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'ENOSYS', 'EMLINK']);

/** The file name a message gets in new/. */
export function newName(m: TmpMessage): string {
  return `${m.base},S=${m.octets},W=${m.crlfSize}`;
}

/**
 * Write `chunks` to a new file in tmp/: written, fsynced when `fsync`,
 * closed. Stops (and removes the file) when `signal` is aborted.
 */
export async function writeTmp(
  dir: string,
  chunks: AsyncIterable<Buffer> | Iterable<Buffer>,
  opts: { mode: number; fsync: boolean; convert?: LineConverter | null; signal?: AbortSignal | undefined },
): Promise<TmpMessage> {
  const base = uniqueName();
  const tmp = path.join(dir, 'tmp', base);
  const fh = await fs.open(tmp, CREATE_FLAGS, opts.mode);
  const counter = new CrlfSizeCounter();
  const conv = opts.convert ?? null;
  let octets = 0;
  const write = async (b: Buffer): Promise<void> => {
    if (b.length === 0) return;
    counter.push(b);
    octets += b.length;
    await fh.write(b);
  };
  try {
    for await (const chunk of chunks) {
      opts.signal?.throwIfAborted();
      await write(conv ? conv.push(chunk) : chunk);
    }
    if (conv) await write(conv.end());
    opts.signal?.throwIfAborted();
    if (opts.fsync) await fh.sync();
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fs.unlink(tmp).catch(() => undefined);
    throw e;
  }
  return { dir, base, tmp, octets, crlfSize: counter.size };
}

/**
 * `data` written to a new file in tmp/ with direct system calls (for a
 * message already in memory, most of the cost of a small one is otherwise
 * the stream). The file is left open (`fd`): the caller fsyncs and closes it.
 */
export function writeTmpSync(dir: string, data: Buffer, mode: number): TmpMessage & { fd: number } {
  const counter = new CrlfSizeCounter();
  counter.push(data);
  const base = uniqueName();
  const tmp = path.join(dir, 'tmp', base);
  const fd = fsSync.openSync(tmp, CREATE_FLAGS, mode);
  try {
    for (let off = 0; off < data.length; ) off += fsSync.writeSync(fd, data, off);
  } catch (e) {
    fsSync.closeSync(fd);
    discardTmpSync(tmp);
    throw e;
  }
  return { dir, base, tmp, octets: data.length, crlfSize: counter.size, fd };
}

/**
 * Move a written message into new/ (link, then unlink tmp/; a rename where
 * links are not supported). Returns its path there. The last chance to give
 * up: an aborted `signal` removes the tmp/ file instead. On failure the tmp/
 * file is removed.
 */
export async function publish(m: TmpMessage, signal?: AbortSignal): Promise<string> {
  const final = path.join(m.dir, 'new', newName(m));
  try {
    signal?.throwIfAborted();
    await fs.link(m.tmp, final).catch(async (e: NodeJS.ErrnoException) => {
      if (!NO_LINK.has(e.code ?? '')) throw e;
      // The name is unique, so rename cannot replace another message.
      await fs.rename(m.tmp, final);
    });
  } finally {
    await fs.unlink(m.tmp).catch(() => undefined);
  }
  return final;
}

/** publish() with direct system calls (no abort check: the caller's). */
export function publishSync(m: TmpMessage): string {
  const final = path.join(m.dir, 'new', newName(m));
  try {
    try {
      fsSync.linkSync(m.tmp, final);
    } catch (e) {
      if (!NO_LINK.has((e as NodeJS.ErrnoException).code ?? '')) throw e;
      fsSync.renameSync(m.tmp, final);
    }
  } finally {
    discardTmpSync(m.tmp);
  }
  return final;
}

/** Remove a tmp/ file (already gone: renamed into new/, or never made). */
export function discardTmpSync(tmp: string): void {
  try {
    fsSync.unlinkSync(tmp);
  } catch {
    // already gone
  }
}
