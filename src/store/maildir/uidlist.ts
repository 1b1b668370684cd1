/**
 * Dovecot's `dovecot-uidlist`, version 3:
 *
 *   3 V<uidvalidity> N<nextuid> G<guid>
 *   <uid> [<key><value>]... :<basename>
 *
 * Ext keys Poplar uses: S (physical size), W (virtual = CRLF size),
 * P (saved POP3 UIDL), O (POP3 order). Unknown header fields and ext keys are
 * kept and written back unchanged so Dovecot loses nothing.
 */
import { isPlainBaseName } from './safe-fs.js';

export interface UidlistRecord {
  uid: number;
  /** Ext fields in file order, e.g. [['W', '1234'], ['S', '1200']]. */
  ext: [string, string][];
  basename: string;
}

export interface Uidlist {
  uidValidity: number;
  nextUid: number;
  /** Remaining header fields (G..., and any we do not know), in order, as written. */
  headerExtra: string[];
  records: UidlistRecord[];
}

export class UidlistFormatError extends Error {
  override name = 'UidlistFormatError';
}

export function parseUidlist(text: string): Uidlist {
  const nl = text.indexOf('\n');
  const header = nl === -1 ? text : text.slice(0, nl);
  const fields = header.split(' ');
  if (fields[0] !== '3') throw new UidlistFormatError(`unsupported dovecot-uidlist version ${JSON.stringify(fields[0] ?? '')}`);
  let uidValidity = 0;
  let nextUid = 1;
  const headerExtra: string[] = [];
  for (const f of fields.slice(1)) {
    if (f === '') continue;
    if (f[0] === 'V') uidValidity = Number(f.slice(1));
    else if (f[0] === 'N') nextUid = Number(f.slice(1));
    else headerExtra.push(f);
  }
  if (!Number.isSafeInteger(uidValidity) || uidValidity <= 0) throw new UidlistFormatError('dovecot-uidlist has no valid UIDVALIDITY');
  if (!Number.isSafeInteger(nextUid) || nextUid <= 0) throw new UidlistFormatError('dovecot-uidlist has no valid next UID');
  const records: UidlistRecord[] = [];
  let pos = nl === -1 ? text.length : nl + 1;
  while (pos < text.length) {
    let end = text.indexOf('\n', pos);
    if (end === -1) end = text.length; // a last line cut short by a crash: still usable if it parses
    const line = text.slice(pos, end);
    pos = end + 1;
    if (line === '') continue;
    const colon = line.indexOf(' :');
    let head: string;
    let basename: string;
    if (colon === -1) {
      // Old style without ext fields: "<uid> <basename>".
      const sp = line.indexOf(' ');
      if (sp === -1) continue;
      head = line.slice(0, sp);
      basename = line.slice(sp + 1);
    } else {
      head = line.slice(0, colon);
      basename = line.slice(colon + 2);
    }
    const parts = head.split(' ');
    // Decimal digits only, as Dovecot reads them: Number() would also take "1e3", "0x10", "+7".
    if (!/^[0-9]+$/.test(parts[0]!)) continue;
    const uid = Number(parts[0]);
    if (!Number.isSafeInteger(uid) || uid <= 0 || basename === '') continue;
    // The list is written by others: a name that is not a plain Maildir base name makes the whole list suspect.
    if (!isPlainBaseName(basename)) throw new UidlistFormatError(`dovecot-uidlist names a file that cannot be in a maildrop: ${JSON.stringify(basename.slice(0, 300))}`);
    const ext: [string, string][] = [];
    for (let i = 1; i < parts.length; i++) {
      const p = parts[i]!;
      if (p !== '') ext.push([p[0]!, p.slice(1)]);
    }
    records.push({ uid, ext, basename });
    // Dovecot appends records without rewriting the header, so N may lag behind.
    if (uid >= nextUid) nextUid = uid + 1;
  }
  return { uidValidity, nextUid, headerExtra, records };
}

export function formatUidlist(u: Uidlist): string {
  const out: string[] = [[`3`, `V${u.uidValidity}`, `N${u.nextUid}`, ...u.headerExtra].join(' ')];
  for (const r of u.records) {
    let line = String(r.uid);
    for (const [k, v] of r.ext) line += ` ${k}${v}`;
    out.push(`${line} :${r.basename}`);
  }
  return out.join('\n') + '\n';
}

export function extValue(r: UidlistRecord, key: string): string | undefined {
  for (const [k, v] of r.ext) if (k === key) return v;
  return undefined;
}

export function setExt(r: UidlistRecord, key: string, value: string): void {
  for (const e of r.ext) {
    if (e[0] === key) {
      e[1] = value;
      return;
    }
  }
  r.ext.push([key, value]);
}
