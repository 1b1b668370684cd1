import os from 'node:os';
import { randomBytes } from 'node:crypto';

/** The part of a Maildir file name before the `:2,flags` info; it identifies the message for its whole life. */
export function baseName(filename: string): string {
  const colon = filename.indexOf(':');
  return colon === -1 ? filename : filename.slice(0, colon);
}

/**
 * The CRLF size (`,W=`) recorded in a file name, if any (only in the base
 * part): the first `,W=` followed by at least one digit, if those digits
 * are a safe integer (at most 15 of them). Runs for every file
 * of a maildrop at each scan, so no regular expression and no substring.
 */
export function sizeFromName(filename: string): number | undefined {
  let colon = filename.indexOf(':');
  if (colon === -1) colon = filename.length;
  for (let at = filename.indexOf(',W='); at !== -1 && at < colon; at = filename.indexOf(',W=', at + 1)) {
    let n = 0;
    let i = at + 3;
    for (; i < colon; i++) {
      const d = filename.charCodeAt(i) - 0x30;
      if (d < 0 || d > 9) break;
      n = n * 10 + d;
    }
    // More than 15 digits may not be a safe integer: no size then, it is measured instead.
    if (i > at + 3) return i - at - 3 <= 15 ? n : undefined;
  }
  return undefined;
}

/**
 * The order in which new files get UIDs, as Dovecot sorts them: the leading
 * seconds as a number, then the `M<microseconds>` part as a number when both
 * names have one, then the rest byte by byte. Two servers thus assign the same UIDs.
 */
export function compareMaildirNames(a: string, b: string): number {
  const [sa, ia] = leadingNumber(a, 0);
  const [sb, ib] = leadingNumber(b, 0);
  if (sa !== sb) return sa < sb ? -1 : 1;
  if (a.charCodeAt(ia) === 0x2e && a.charCodeAt(ia + 1) === 0x4d && b.charCodeAt(ib) === 0x2e && b.charCodeAt(ib + 1) === 0x4d) {
    const [ma, ja] = leadingNumber(a, ia + 2);
    const [mb, jb] = leadingNumber(b, ib + 2);
    if (ma !== mb) return ma < mb ? -1 : 1;
    return byteCompare(a.slice(ja), b.slice(jb));
  }
  return byteCompare(a.slice(ia), b.slice(ib));
}

function byteCompare(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function leadingNumber(s: string, from: number): [number, number] {
  let n = 0;
  let i = from;
  for (; i < s.length; i++) {
    const c = s.charCodeAt(i) - 48;
    if (c < 0 || c > 9) break;
    n = n * 10 + c;
  }
  return [n, i];
}

// The host part may not contain '/' or ':' (Maildir spec); encode them as Dovecot does.
const HOST = os.hostname().replace(/\//g, '\\057').replace(/:/g, '\\072');
let counter = 0;
let lastSec = 0;
let lastUsec = -1;

/**
 * A unique Maildir base name: `<sec>.M<usec>P<pid>Q<n>R<rand>.<host>`. Within
 * one process the (seconds, microseconds) pair strictly increases, so
 * messages delivered in a burst keep their delivery order (new files get UIDs
 * in name order).
 */
export function uniqueName(now = Date.now()): string {
  let sec = Math.floor(now / 1000);
  let usec = (now % 1000) * 1000;
  if (sec < lastSec || (sec === lastSec && usec <= lastUsec)) {
    sec = lastSec;
    usec = lastUsec + 1;
  }
  lastSec = sec;
  lastUsec = usec;
  counter = (counter + 1) % 1e9;
  return `${sec}.M${usec}P${process.pid}Q${counter}R${randomHex8()}.${HOST}`;
}

/** Random octets for names, drawn from the system in blocks: one call per 256 names, not one per name. */
let randomPool = Buffer.alloc(0);
let randomAt = 0;

function randomHex8(): string {
  if (randomAt + 4 > randomPool.length) {
    randomPool = randomBytes(1024);
    randomAt = 0;
  }
  randomAt += 4;
  return randomPool.toString('hex', randomAt - 4, randomAt);
}
