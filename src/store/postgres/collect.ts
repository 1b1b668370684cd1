/**
 * Hands memory allocated for message bodies read from PostgreSQL back to
 * the system early: the buffer of a small body, the rows of a read that
 * keeps its chunks, every socket read of a connection with TLS (see
 * copy-socket.ts; a transient read of a big body reuses its buffers and
 * allocates nothing). V8 frees such memory only when it collects the small
 * objects that own it, which it does when its own heap fills, not when the
 * memory outside the heap grows: streaming a 50 MB body that way left some
 * 30 MB of dead buffers resident. So every COLLECT_EVERY bytes of such
 * memory, in the whole process, one young-generation collection runs (a
 * scavenge: it visits only the live young objects), and those buffers,
 * which die young, go with it.
 *
 * The collector is reached with the documented V8 flag --expose-gc, set for
 * one new context and cleared again, so nothing else in the process sees a
 * `gc` function. If that fails, nothing is collected early (the memory is
 * still freed, later).
 */
import v8 from 'node:v8';
import vm from 'node:vm';

/** Bytes allocated for bodies between two collections (process-wide). */
export const COLLECT_EVERY = 4 * 1024 * 1024;

type Gc = (options: { type: 'minor' | 'major'; execution: 'sync' | 'async' }) => void;

let gc: Gc | null | undefined;
let since = 0;
let collections = 0;

function load(): Gc | null {
  const existing = (globalThis as { gc?: unknown }).gc;
  if (typeof existing === 'function') return existing as Gc;
  try {
    v8.setFlagsFromString('--expose-gc');
    const fn = vm.runInNewContext('gc') as unknown;
    return typeof fn === 'function' ? (fn as Gc) : null;
  } catch {
    return null;
  } finally {
    v8.setFlagsFromString('--no-expose-gc');
  }
}

/** `bytes` were allocated for body data (and are, or soon will be, released). */
export function bodyBytesRead(bytes: number): void {
  since += bytes;
  if (since < COLLECT_EVERY) return;
  since = 0;
  gc ??= load();
  if (gc === null) return;
  gc({ type: 'minor', execution: 'sync' });
  collections++;
}

/** Collections run so far (tests, metrics). */
export function earlyCollections(): number {
  return collections;
}
