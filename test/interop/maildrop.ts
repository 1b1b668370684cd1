import { promises as fs } from 'node:fs';
import path from 'node:path';
import { edgeCorpus, expectedRetr } from '../corpus/corpus.js';
import type { TestServer } from '../helpers/server.js';
import { compareMaildirNames } from '../../src/store/maildir/names.js';

export interface DropMessage {
  /** 1-based POP3 message number the server gives this message. */
  number: number;
  name: string;
  raw: Buffer;
  /** What a correct client hands on: the unstuffed RETR body, every line ending in CRLF. */
  canonical: Buffer;
  /**
   * The size LIST and STAT give: the stored message with every bare LF counted
   * as CRLF. No final CRLF is counted for a message that lacks one, so for
   * those it is 2 less than `canonical.length` (Dovecot counts the same way).
   */
  octets: number;
}

const CRLF = Buffer.from('\r\n');

/** Undo RFC 1939 byte-stuffing of a RETR body (which ends with `.CRLF`). */
export function unstuff(stuffed: Buffer): Buffer {
  const end = Buffer.from('.\r\n');
  if (stuffed.length < 3 || !stuffed.subarray(stuffed.length - 3).equals(end)) throw new Error('no terminator');
  const body = stuffed.subarray(0, stuffed.length - 3);
  const out: Buffer[] = [];
  let start = 0;
  while (start < body.length) {
    const i = body.indexOf(CRLF, start);
    if (i === -1) throw new Error('stuffed body has a line without CRLF');
    let line = body.subarray(start, i);
    if (line[0] === 0x2e) line = line.subarray(1);
    out.push(line, CRLF);
    start = i + 2;
  }
  return Buffer.concat(out);
}

/** Octets of the message once each bare LF is a CRLF (a plain byte loop, independent of src/). */
export function listSize(raw: Buffer): number {
  let n = raw.length;
  for (let i = 0; i < raw.length; i++) if (raw[i] === 0x0a && (i === 0 || raw[i - 1] !== 0x0d)) n++;
  return n;
}

/** The message as a correct POP3 client receives it: bare LF made CRLF, a final CRLF added when missing. */
export function canonical(raw: Buffer): Buffer {
  return unstuff(expectedRetr(raw));
}

/** A few ordinary messages besides the edge corpus. */
export function ordinaryMessages(): { name: string; raw: Buffer }[] {
  const out: { name: string; raw: Buffer }[] = [];
  for (let i = 1; i <= 3; i++) {
    out.push({
      name: `ordinary ${i}`,
      raw: Buffer.from(
        `From: Carol <carol@example.org>\r\nTo: Alice <alice@example.org>\r\nSubject: ordinary message ${i}\r\n` +
          `Date: Tue, 02 Jan 2024 10:0${i}:00 +0000\r\nMessage-ID: <ordinary-${i}@example.org>\r\n\r\n` +
          `Hello Alice,\r\n\r\nthis is ordinary message number ${i}.\r\n\r\nCarol\r\n`,
        'latin1',
      ),
    });
  }
  return out;
}

/**
 * Deliver the edge corpus plus ordinary messages to `user` and return them in
 * the order the server numbers them. The numbering is the store's: files in
 * new/ sorted by its Maildir name order (see delivery-order.test.ts for why
 * this is not always the delivery order).
 */
export async function deliverMaildrop(srv: TestServer, user = 'alice'): Promise<DropMessage[]> {
  const newDir = path.join(srv.maildirRoot, user, 'new');
  const byFile = new Map<string, { name: string; raw: Buffer }>();
  const seen = new Set<string>();
  for (const m of [...edgeCorpus(), ...ordinaryMessages()]) {
    await srv.deliver(user, m.raw);
    const added = (await fs.readdir(newDir)).filter((f) => !seen.has(f));
    if (added.length !== 1) throw new Error(`expected one new file after delivering ${m.name}, got ${added.length}`);
    seen.add(added[0]!);
    byFile.set(added[0]!, m);
  }
  const files = [...byFile.keys()].sort(compareMaildirNames);
  return files.map((f, i) => {
    const m = byFile.get(f)!;
    const c = canonical(m.raw);
    return { number: i + 1, name: m.name, raw: m.raw, canonical: c, octets: listSize(m.raw) };
  });
}
