/** Shared pieces of the fetch tests. */
import { promises as fs } from 'node:fs';
import path from 'node:path';
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
