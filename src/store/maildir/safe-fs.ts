/**
 * Maildrop content is written by others (the mailbox owner, a delivery
 * agent, another server) and so never trusted: files are read and created
 * only as src/platform/safe-file.ts does it (never through a link, never
 * blocking on a FIFO), and a name read from a file in the maildrop becomes a
 * path only if it is a plain Maildir file name.
 */
export { createExclusive, notRegular, openRegular, readRegular, writeExclusive } from '../../platform/safe-file.js';

/**
 * A plain Maildir file name as found in cur/ or new/: not empty, at most 255
 * octets (NAME_MAX), no '/', no NUL or other control character, and not
 * starting with '.' (so neither '.' nor '..', nor a hidden file). Only such a
 * name read from a file (the uidlist, the scan cache) is ever joined to a path.
 */
export function isPlainFileName(name: string): boolean {
  const n = name.length;
  if (n === 0 || n > 255 || name.charCodeAt(0) === 0x2e) return false;
  let ascii = true;
  for (let i = 0; i < n; i++) {
    const c = name.charCodeAt(i);
    if (c < 0x20 || c === 0x2f || (c >= 0x7f && c <= 0x9f)) return false;
    if (c > 0x7f) ascii = false;
  }
  return ascii || Buffer.byteLength(name) <= 255;
}

/** A Maildir base name (the part before ":2,flags"): a plain file name without ':'. */
export function isPlainBaseName(name: string): boolean {
  return isPlainFileName(name) && !name.includes(':');
}

/** A size read from a file name or the uidlist: decimal digits only, a safe integer. */
export function parseSize(text: string | undefined): number | undefined {
  if (text === undefined || text.length === 0 || text.length > 15) return undefined;
  for (let i = 0; i < text.length; i++) {
    const d = text.charCodeAt(i) - 0x30;
    if (d < 0 || d > 9) return undefined;
  }
  return Number(text);
}
