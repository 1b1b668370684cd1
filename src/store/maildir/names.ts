import os from 'node:os';
import { randomBytes } from 'node:crypto';

/** The part of a Maildir file name before the `:2,flags` info; it identifies the message for its whole life. */
export function baseName(filename: string): string {
  const colon = filename.indexOf(':');
  return colon === -1 ? filename : filename.slice(0, colon);
}

const W_RE = /,W=(\d+)/;

/** The CRLF size (`,W=`) recorded in a file name, if any (only in the base part). */
export function sizeFromName(filename: string): number | undefined {
  const m = W_RE.exec(baseName(filename));
  return m ? Number(m[1]) : undefined;
}

/**
 * Maildir's delivery order: the leading seconds, then the rest as text. New
 * files get UIDs in this order, so two servers assign the same UIDs.
 */
export function compareMaildirNames(a: string, b: string): number {
  const sa = leadingNumber(a);
  const sb = leadingNumber(b);
  if (sa !== sb) return sa < sb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function leadingNumber(s: string): number {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i) - 48;
    if (c < 0 || c > 9) break;
    n = n * 10 + c;
  }
  return n;
}

// The host part may not contain '/' or ':' (Maildir spec); encode them as Dovecot does.
const HOST = os.hostname().replace(/\//g, '\\057').replace(/:/g, '\\072');
let counter = 0;

/** A unique Maildir base name: `<sec>.M<usec>P<pid>Q<n>R<rand>.<host>`. */
export function uniqueName(now = Date.now()): string {
  const sec = Math.floor(now / 1000);
  const usec = (now % 1000) * 1000 + Math.floor(Math.random() * 1000);
  counter = (counter + 1) % 1e9;
  return `${sec}.M${usec}P${process.pid}Q${counter}R${randomBytes(4).toString('hex')}.${HOST}`;
}
