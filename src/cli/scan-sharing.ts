/**
 * `poplar serve --workers`: a big maildrop scanned (or read from its saved
 * scan) by one worker is loaded by the others before their first login
 * there. The worker that saved or read poplar-scan.cache tells the primary
 * (dir and key), the primary passes it on to every other worker, and each of
 * them reads the file in the background (src/store/maildir/scan-cache.ts
 * preloadSavedScan: only a trusted file that matches the maildrop as it is
 * now is kept; anything else waits for a login, which reports it).
 *
 * A worker that starts later is sent the latest announcements when it is
 * ready. Only our own processes are on these channels, but a message is
 * still checked for its shape and bounded before it is used.
 */
import cluster, { type Worker } from 'node:cluster';
import { onSavedScan, preloadSavedScan } from '../store/maildir/maildir-store.js';

export const SCAN_MESSAGE = 'poplar-scan-saved';
const MAX_PATH = 4096;
const MAX_KEY = 512;
/** Announcements waiting in a worker; beyond this the oldest are dropped (a login then reads the file itself). */
const MAX_PENDING = 1000;
/** Announcements the primary keeps for workers that start later. */
const MAX_KNOWN = 128;

interface ScanNotice {
  type: typeof SCAN_MESSAGE;
  dir: string;
  key: string;
}

function asNotice(m: unknown): ScanNotice | undefined {
  if (typeof m !== 'object' || m === null) return undefined;
  const r = m as Record<string, unknown>;
  if (r['type'] !== SCAN_MESSAGE) return undefined;
  const { dir, key } = r;
  if (typeof dir !== 'string' || dir.length === 0 || dir.length > MAX_PATH || dir.includes('\0')) return undefined;
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_KEY) return undefined;
  return { type: SCAN_MESSAGE, dir, key };
}

/**
 * Primary: what a worker announces goes to every other live worker. The
 * latest announcements (dir and key only, no scans) are kept for a worker
 * that reports ready later (one started after them, or in place of one that
 * died), so that it loads those maildrops too.
 */
export class ScanRelay {
  /** dir -> key, the oldest announcement first. */
  readonly #known = new Map<string, string>();

  serve(from: Worker, workers: () => Iterable<Worker>): void {
    from.on('message', (m: unknown) => {
      if ((m as { type?: unknown } | null)?.type === 'ready') {
        for (const [dir, key] of this.#known) send(from, { type: SCAN_MESSAGE, dir, key });
        return;
      }
      const notice = asNotice(m);
      if (notice === undefined) return;
      this.#known.delete(notice.dir);
      this.#known.set(notice.dir, notice.key);
      if (this.#known.size > MAX_KNOWN) this.#known.delete(this.#known.keys().next().value!);
      for (const w of workers()) if (w !== from) send(w, notice);
    });
  }
}

function send(w: Worker, notice: ScanNotice): void {
  if (w.isConnected()) w.send(notice, undefined, () => undefined);
}

/** Worker: announce this worker's saved scans, and load the siblings' one at a time. */
export function shareScans(): void {
  if (!cluster.isWorker || process.send === undefined) return;
  onSavedScan((dir, key) => {
    if (process.connected) process.send?.({ type: SCAN_MESSAGE, dir, key }, undefined, {}, () => undefined);
  });
  const pending = new Map<string, string>(); // dir -> key, the latest announcement first to go
  let running = false;
  const drain = async (): Promise<void> => {
    running = true;
    try {
      for (let next = pending.entries().next(); !next.done; next = pending.entries().next()) {
        const [dir, key] = next.value;
        pending.delete(dir);
        await preloadSavedScan(dir, key).catch(() => false);
      }
    } finally {
      running = false;
    }
  };
  process.on('message', (m: unknown) => {
    const notice = asNotice(m);
    if (notice === undefined) return;
    pending.delete(notice.dir); // re-inserted: a newer key replaces an older one
    pending.set(notice.dir, notice.key);
    if (pending.size > MAX_PENDING) pending.delete(pending.keys().next().value!);
    if (!running) void drain();
  });
}
