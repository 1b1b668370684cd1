/**
 * Parsing of what a POP3 server says, tolerant where real servers differ
 * (`+OK` with no text, bare LF, lower-case status, unknown response codes)
 * and strict where a wrong guess would mislead (numbers, scan listings).
 */
import type { RespCode } from '../protocol/codes.js';
import { Pop3ProtocolError, printable } from './errors.js';

export interface StatusLine {
  readonly ok: boolean;
  /** A known response code; a sub-code (`SYS/TEMP/X`) maps to the known parent. */
  readonly code: RespCode | undefined;
  /** The bracketed code as sent, when there was one. */
  readonly rawCode: string | undefined;
  /** The text after the status word and the code. */
  readonly text: string;
}

/** Codes of RFC 2449 §8 and RFC 3206 (the set Poplar itself sends). */
const KNOWN_CODES: readonly RespCode[] = ['IN-USE', 'LOGIN-DELAY', 'SYS/TEMP', 'SYS/PERM', 'AUTH'];

/** The most levels a known code has (`SYS/TEMP`): deeper levels can only be sub-codes of one. */
const KNOWN_DEPTH = Math.max(...KNOWN_CODES.map((c) => c.split('/').length));

/**
 * RFC 2449 §8: codes are hierarchical; a client that does not know a sub-code treats it as its parent.
 * Only the first KNOWN_DEPTH levels are looked at, so a code of thousands of levels costs no more than a short one.
 */
export function knownRespCode(raw: string): RespCode | undefined {
  const parts = raw.toUpperCase().split('/', KNOWN_DEPTH);
  for (let n = parts.length; n > 0; n--) {
    const candidate = parts.slice(0, n).join('/');
    const known = KNOWN_CODES.find((c) => c === candidate);
    if (known !== undefined) return known;
  }
  return undefined;
}

/** One status line without its line end. Throws Pop3ProtocolError when it is neither `+OK` nor `-ERR`. */
export function parseStatusLine(line: string): StatusLine {
  const m = /^(\+OK|-ERR)(?:[ \t]+(.*))?$/is.exec(line);
  if (m === null) throw new Pop3ProtocolError(`malformed reply: ${JSON.stringify(truncate(line))}`);
  const ok = m[1]!.toUpperCase() === '+OK';
  let text = (m[2] ?? '').trim();
  let rawCode: string | undefined;
  const c = /^\[([^\]\s]*)\][ \t]*/.exec(text);
  if (c !== null) {
    rawCode = c[1]!;
    text = text.slice(c[0].length);
  }
  return { ok, code: rawCode !== undefined ? knownRespCode(rawCode) : undefined, rawCode, text };
}

/** A SASL continuation line (RFC 5034 §4): `+ base64`, `+ ` or a bare `+`. */
export function isContinuation(line: string): boolean {
  return line === '+' || line.startsWith('+ ');
}

/** RFC 2449 §5: one tag per line, upper-cased, parameters split on whitespace. */
export function parseCapabilities(lines: readonly string[]): Map<string, string[]> {
  const caps = new Map<string, string[]>();
  for (const line of lines) {
    const words = line.trim().split(/[ \t]+/);
    const tag = words.shift();
    if (tag === undefined || tag === '') continue;
    caps.set(tag.toUpperCase(), words);
  }
  return caps;
}

const MAX_SAFE_DIGITS = 15;

/** A non-negative decimal number as POP3 sends it; throws Pop3ProtocolError otherwise. */
export function parseNumber(s: string | undefined, what: string): number {
  if (s === undefined || !/^\d+$/.test(s) || s.replace(/^0+(?=\d)/, '').length > MAX_SAFE_DIGITS) {
    throw new Pop3ProtocolError(`malformed ${what}: ${JSON.stringify(truncate(s ?? ''))}`);
  }
  return Number(s);
}

export interface MaildropStat {
  /** Messages in the maildrop, not counting those marked deleted. */
  readonly count: number;
  /** Their total size in octets. */
  readonly octets: number;
}

export interface ListEntry {
  /** Message number (RFC 1939: 1..n for the whole session). */
  readonly number: number;
  /** Size in octets as the server reports it (informational: never used to find the end of a message). */
  readonly octets: number;
}

export interface UidlEntry {
  readonly number: number;
  /** The unique-id listing (RFC 1939 §7), stable across sessions. */
  readonly uid: string;
}

function words(s: string): string[] {
  return s.trim().split(/[ \t]+/);
}

/** `+OK nn mm` (trailing text tolerated). */
export function parseStat(text: string): MaildropStat {
  const [count, octets] = words(text);
  return { count: parseNumber(count, 'STAT reply'), octets: parseNumber(octets, 'STAT reply') };
}

/** A scan listing, `n octets`, from `LIST` or `LIST n`. */
export function parseListEntry(line: string): ListEntry {
  const [n, octets] = words(line);
  return { number: parseNumber(n, 'LIST entry'), octets: parseNumber(octets, 'LIST entry') };
}

/**
 * A unique-id listing, `n uid`, from `UIDL` or `UIDL n`. The uid is the
 * whole rest of the line (trailing blanks aside), exactly as sent, so that
 * two listings never read as the same uid unless the server sent the same
 * octets; whether it is a valid one is for isValidUid() to say.
 */
export function parseUidlEntry(line: string): UidlEntry {
  const m = /^[ \t]*(\d+)[ \t]+/.exec(line);
  let end = line.length;
  while (end > 0 && (line[end - 1] === ' ' || line[end - 1] === '\t')) end--; // no regex: linear on any line
  if (m === null || m[0].length >= end) throw new Pop3ProtocolError(`malformed UIDL entry: ${JSON.stringify(truncate(line))}`);
  return { number: parseNumber(m[1], 'UIDL entry'), uid: line.slice(m[0].length, end) };
}

/** RFC 1939 §7: a unique-id is 1 to 70 characters in the range 0x21 to 0x7E. */
export function isValidUid(uid: string): boolean {
  return /^[\x21-\x7e]{1,70}$/.test(uid);
}

/** The APOP timestamp (RFC 1939 §7: a msg-id) in a greeting, if any. */
export function apopTimestampOf(greeting: string): string | undefined {
  return /<[^<>\s@]*@[^<>\s]*>/.exec(greeting)?.[0];
}

function truncate(s: string): string {
  return printable(s.length > 80 ? `${s.slice(0, 80)}…` : s);
}
