import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { DropMessage } from './maildrop.js';

/**
 * Expected-form transformations: what each real client documents (or was
 * observed) to do to a message on its way to disk. Each takes the canonical
 * form (what a correct client receives, CRLF line ends) and returns what that
 * client writes when the server sent exactly the right bytes. Everything is
 * done on latin1 strings, which map bytes 1:1.
 */

const HEADERLESS_FETCHMAIL = /^From: FETCHMAIL-DAEMON\r\nTo: [^\r\n]*\r\nSubject: Headerless mail from [^\r\n]*\r\n/;

function latin1(b: Buffer): string {
  return b.toString('latin1');
}

/** Whether the message has the empty line that ends the header section. */
export function hasHeaderTerminator(canonical: Buffer): boolean {
  const s = latin1(canonical);
  return s.startsWith('\r\n') || s.includes('\r\n\r\n');
}

/** Whether the message has no header fields at all (empty, or the first line is empty). */
function headerless(canonical: Buffer): boolean {
  return canonical.length === 0 || latin1(canonical).startsWith('\r\n');
}

function headerSection(canonical: Buffer): string {
  const s = latin1(canonical);
  if (s.startsWith('\r\n')) return '';
  const i = s.indexOf('\r\n\r\n');
  return i === -1 ? s : s.slice(0, i + 2);
}

/** fetchmail and getmail parse the header and end it with an empty line when the message lacks one. */
function withHeaderTerminator(canonical: Buffer): string {
  return hasHeaderTerminator(canonical) ? latin1(canonical) : latin1(canonical) + '\r\n';
}

/**
 * curl writes the unstuffed body; for an empty body (`+OK` then `.CRLF`)
 * curl 7.x writes a lone CRLF, because it counts the CRLF of the status line
 * as the start of the end-of-body marker and hands that CRLF to the output.
 */
export function curlExpected(m: DropMessage): Buffer {
  return m.canonical.length === 0 ? Buffer.from('\r\n') : m.canonical;
}

/**
 * fetchmail with `set invisible`, `no rewrite`, `no stripcr`, an MDA:
 * the body arrives byte for byte with CRLF line ends. It ends a header
 * section that has no empty line with one, and gives a headerless message
 * three synthetic header lines (From: FETCHMAIL-DAEMON, To:, Subject:
 * Headerless mail ...), which `fetchmailActual` takes off again.
 */
export function fetchmailExpected(m: DropMessage): Buffer {
  return Buffer.from(withHeaderTerminator(m.canonical), 'latin1');
}

export function fetchmailActual(m: DropMessage, got: Buffer): Buffer {
  const s = latin1(got);
  if (headerless(m.canonical)) return Buffer.from(s.replace(HEADERLESS_FETCHMAIL, ''), 'latin1');
  return got;
}

/**
 * getmail (Maildir destination, `delivered_to = false`, `received = false`)
 * reads the lines poplib hands it, joins them with LF and runs them through
 * Python's email package, which also treats a bare CR as a line end and writes
 * LF. It ends an open header section with an empty line and prepends
 * `Return-Path: <unknown>` when the message has none (`getmailActual` takes that off).
 */
export function getmailExpected(m: DropMessage): Buffer {
  const joined = withHeaderTerminator(m.canonical).replaceAll('\r\n', '\n');
  return Buffer.from(joined.replace(/\r\n|\r/g, '\n'), 'latin1');
}

export function getmailActual(m: DropMessage, got: Buffer): Buffer {
  const s = latin1(got);
  if (/^Return-Path:/im.test(headerSection(m.canonical))) return got;
  const prefix = 'Return-Path: <unknown>\n';
  return s.startsWith(prefix) ? Buffer.from(s.slice(prefix.length), 'latin1') : got;
}

/** mpop (maildir delivery, `received_header off`): every CRLF becomes LF, nothing else changes. */
export function mpopExpected(m: DropMessage): Buffer {
  return Buffer.from(latin1(m.canonical).replaceAll('\r\n', '\n'), 'latin1');
}

function excerpt(b: Buffer, at: number): string {
  return JSON.stringify(b.subarray(Math.max(0, at - 40), at + 40).toString('latin1'));
}

/**
 * Compare what a client stored with what it should have stored, message by
 * message; returns one line per mismatch (empty when everything matched).
 */
export function mismatches(
  drop: DropMessage[],
  got: Buffer[],
  expected: (m: DropMessage) => Buffer,
  actual: (m: DropMessage, got: Buffer) => Buffer = (_m, g) => g,
): string[] {
  const out: string[] = [];
  if (got.length !== drop.length) out.push(`client stored ${got.length} messages, the maildrop has ${drop.length}`);
  for (let i = 0; i < Math.min(got.length, drop.length); i++) {
    const m = drop[i]!;
    const want = expected(m);
    const have = actual(m, got[i]!);
    if (have.equals(want)) continue;
    let at = 0;
    while (at < want.length && at < have.length && want[at] === have[at]) at++;
    out.push(
      `message ${m.number} (${m.name}): got ${have.length} octets, expected ${want.length}; ` +
        `first difference at offset ${at}: got ${excerpt(have, at)} expected ${excerpt(want, at)}`,
    );
  }
  return out;
}

/** Files of a directory, read in the order given by `key` (numeric). */
export async function readOrdered(dir: string, key: (file: string) => number): Promise<{ files: string[]; contents: Buffer[] }> {
  const names = (await fs.readdir(dir)).filter((f) => !f.startsWith('.'));
  const keyed = names.map((f) => ({ f, k: key(f) }));
  for (const { f, k } of keyed) if (!Number.isFinite(k)) throw new Error(`cannot order file ${f} in ${dir}`);
  keyed.sort((a, b) => a.k - b.k);
  const files = keyed.map((x) => x.f);
  return { files, contents: await Promise.all(files.map((f) => fs.readFile(path.join(dir, f)))) };
}

/** Delivery counter in a Maildir file name written by mpop (`…P<pid>Q<n>.host`) or getmail (`…P<pid>Q<n>R<rand>.host`). */
export function maildirDeliveryCounter(file: string): number {
  const m = /^\d+\.M\d+P\d+Q(\d+)[R.]/.exec(file);
  return m ? Number(m[1]) : Number.NaN;
}
