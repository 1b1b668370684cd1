/** Shared pieces of the fetch tests. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { resolveFetchConfig, type ResolvedAccount, type SinkSpecValue } from '../../src/fetch/config.js';
import { fetchAccount, newReport, type AccountReport, type SessionDeps } from '../../src/fetch/session.js';
import { createSink, type SinkSpecInput } from '../../src/fetch/sinks/index.js';

/** One account, validated like a config file would be; `dir` holds the Maildir and the ledger. */
export function testAccount(dir: string, over: Record<string, unknown> = {}): ResolvedAccount {
  const raw = {
    name: 'test',
    host: '127.0.0.1',
    tls: 'none',
    user: 'alice',
    password: 'secret',
    sink: { type: 'maildir', path: path.join(dir, 'Maildir') },
    state: path.join(dir, 'test.ledger'),
    ...over,
  };
  return resolveFetchConfig({ account: [raw] }, dir).accounts[0]!;
}

/** Deps for in-process fetches: no fsync (tests), a clock that can be set. */
export function testDeps(over: Partial<SessionDeps> = {}): SessionDeps {
  return {
    createSink: (spec: SinkSpecValue) => createSink({ ...spec, fsync: false } as SinkSpecInput),
    now: Date.now,
    fsync: false,
    ...over,
  };
}

export async function fetchOnce(acct: ResolvedAccount, over: Partial<SessionDeps> = {}): Promise<AccountReport> {
  return fetchAccount(acct, testDeps(over), newReport(acct.name));
}

/** Contents of every message file in a Maildir (new/ and cur/), sorted by content. */
export async function maildirMessages(dir: string): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (const sub of ['new', 'cur']) {
    let names: string[] = [];
    try {
      names = await fs.readdir(path.join(dir, sub));
    } catch {
      continue;
    }
    for (const n of names) out.push(await fs.readFile(path.join(dir, sub, n)));
  }
  return out.sort(Buffer.compare);
}

/**
 * What the Maildir sink stores for a message a correct POP3 server holds as
 * `raw`: every line with LF (a CR right before LF belongs to the line end),
 * the last line given one when it had none (the server adds CRLF).
 * Written with a plain byte loop, independent of the code under test.
 */
export function storedForm(raw: Buffer): Buffer {
  const out: number[] = [];
  let line: number[] = [];
  for (let i = 0; i < raw.length; i++) {
    const b = raw[i]!;
    if (b === 0x0a) {
      if (line.length > 0 && line[line.length - 1] === 0x0d) line.pop();
      out.push(...line, 0x0a);
      line = [];
    } else line.push(b);
  }
  if (line.length > 0) out.push(...line, 0x0a);
  return Buffer.from(out);
}

/** Numbered test messages with a unique X-Seq header. */
export function seqMessage(i: number, bodyBytes = 200, extra = ''): string {
  const head = `From: sender@example.org\r\nTo: alice@example.org\r\nSubject: message ${i}\r\nMessage-ID: <seq-${i}@example.org>\r\nX-Seq: ${i}\r\n${extra}\r\n`;
  const line = 'The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnop\r\n';
  let body = '';
  while (body.length < bodyBytes) body += line;
  return head + body.slice(0, bodyBytes - 2) + '\r\n';
}

/** X-Seq values found in a Maildir, with how often each occurs. */
export async function seqCounts(dir: string): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  for (const m of await maildirMessages(dir)) {
    const r = /^X-Seq: (\d+)$/m.exec(m.toString('latin1'));
    if (r === null) continue;
    const n = Number(r[1]);
    counts.set(n, (counts.get(n) ?? 0) + 1);
  }
  return counts;
}

/**
 * The messages of an mboxrd file, read strictly and without the code under
 * test: a message starts at a "From " line that opens the file or follows an
 * empty line, and ends with an empty line; one '>' is removed from each line
 * matching /^>+From /. Anything else (a file not ending in a line end, a
 * message without its blank line) throws: such a file holds a fragment.
 */
export function parseMboxrd(text: string): { fromLine: string; content: string }[] {
  if (text === '') return [];
  if (!text.startsWith('From ')) throw new Error(`mbox does not start with a From_ line: ${JSON.stringify(text.slice(0, 40))}`);
  if (!text.endsWith('\n')) throw new Error(`mbox does not end with a line end: ${JSON.stringify(text.slice(-80))}`);
  const lines = text.split('\n');
  lines.pop(); // '' after the final LF
  const out: { fromLine: string; lines: string[] }[] = [];
  for (const [i, line] of lines.entries()) {
    if (line.startsWith('From ') && (i === 0 || lines[i - 1] === '')) out.push({ fromLine: line, lines: [] });
    else out.at(-1)!.lines.push(/^>+From /.test(line) ? line.slice(1) : line);
  }
  return out.map((m, n) => {
    if (m.lines.pop() !== '') throw new Error(`mbox message ${n + 1} (${m.fromLine}) does not end with an empty line`);
    return { fromLine: m.fromLine, content: m.lines.map((l) => `${l}\n`).join('') };
  });
}

/**
 * X-Seq values in an mbox, with how often each occurs. Every message must be
 * exactly `messageOf(seq)` with LF line ends (default `seqMessage(seq, 120)`):
 * a torn or altered message throws, as does a file that does not parse.
 */
export async function mboxSeqCounts(file: string, messageOf: (seq: number) => string = (seq) => seqMessage(seq, 120)): Promise<Map<number, number>> {
  const counts = new Map<number, number>();
  const text = await fs.readFile(file, 'latin1').catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? '' : Promise.reject(e)));
  for (const [n, m] of parseMboxrd(text).entries()) {
    const r = /^X-Seq: (\d+)$/m.exec(m.content);
    const seq = r === null ? -1 : Number(r[1]);
    if (r === null || m.content !== messageOf(seq).replace(/\r\n/g, '\n')) {
      throw new Error(`mbox message ${n + 1} is not a whole test message: ${JSON.stringify(m.content.slice(0, 120))}…`);
    }
    counts.set(seq, (counts.get(seq) ?? 0) + 1);
  }
  return counts;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));
/** The mbox sink's source and tsx's loader, for tests that run the sink in a child process (real kills, real locks). */
export const MBOX_MODULE = pathToFileURL(path.resolve(HERE, '../../src/fetch/sinks/mbox.ts')).href;
export const TSX = pathToFileURL(path.resolve(HERE, '../../node_modules/tsx/dist/esm/index.mjs')).href;
