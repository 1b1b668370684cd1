/**
 * What a maildrop holds, for quotas: messages and octets (as LIST counts
 * them) from the file names in new/ and cur/ (`,W=` that Poplar, Dovecot and
 * the fetch sink write), without reading any message. A file whose name
 * carries no `,W=` is stat'ed (its size on disk stands in). Temporary files
 * in tmp/ do not count.
 *
 * Within one process, the check and the link into new/ of deliveries to one
 * maildrop run one at a time (inQuotaTurn), so they cannot both take the last
 * free room; deliveries from other processes at the same moment can.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { QuotaExceeded } from '../../errors.js';
import type { Quota } from '../types.js';
import { sizeFromName } from './names.js';

export interface Usage {
  readonly messages: number;
  readonly bytes: number;
}

/** Octets and messages in new/ and cur/ of `dir` (a missing directory holds nothing). */
export async function maildropUsage(dir: string): Promise<Usage> {
  let messages = 0;
  let bytes = 0;
  for (const sub of ['new', 'cur']) {
    const where = path.join(dir, sub);
    let names: string[];
    try {
      names = await fs.readdir(where);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    for (const name of names) {
      if (name.startsWith('.')) continue;
      let size = sizeFromName(name);
      if (size === undefined) {
        const st = await fs.lstat(path.join(where, name)).catch(() => undefined);
        if (st === undefined || !st.isFile()) continue; // gone meanwhile, or not a message
        size = st.size;
      }
      messages++;
      bytes += size;
    }
  }
  return { messages, bytes };
}

/** Whether a quota limits anything. */
export function quotaLimits(q: Quota | undefined): q is Quota {
  return q !== undefined && (q.bytes > 0 || q.messages > 0);
}

/** Throws QuotaExceeded when one more message of `size` octets would take `usage` past `quota`. */
export function checkQuota(usage: Usage, size: number, quota: Quota): void {
  if (quota.messages > 0 && usage.messages + 1 > quota.messages) throw new QuotaExceeded('Mailbox is full (message count quota)');
  if (quota.bytes > 0 && usage.bytes + size > quota.bytes) throw new QuotaExceeded('Mailbox is full (size quota)');
}

const turns = new Map<string, Promise<unknown>>();

/** Runs `fn` after the quota checks of earlier deliveries to `dir` in this process have finished. */
export function inQuotaTurn<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  const before = turns.get(dir) ?? Promise.resolve();
  const mine = before.then(fn, fn);
  const settled = mine.then(
    () => undefined,
    () => undefined,
  );
  turns.set(dir, settled);
  void settled.then(() => {
    if (turns.get(dir) === settled) turns.delete(dir);
  });
  return mine;
}
