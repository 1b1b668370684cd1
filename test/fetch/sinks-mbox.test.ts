import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { MboxSink, MboxrdQuoter, asctime, senderFromHead } from '../../src/fetch/sinks/mbox.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import type { DeliveryInfo } from '../../src/fetch/sinks/types.js';
import { lacks } from '../helpers/peers.js';
import { MBOX_MODULE, TSX } from './helpers.js';

const run = promisify(execFile);

let dir: string;
let mbox: string;
const children: ChildProcess[] = [];

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-mbox-'));
  mbox = path.join(dir, 'inbox');
});

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null) c.kill('SIGKILL');
  await fs.rm(dir, { recursive: true, force: true });
});

const info: DeliveryInfo = { account: 'acct', uidl: 'u1', size: 0 };

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

const crlf = (s: string): Buffer => Buffer.from(s.replace(/\n/g, '\r\n'), 'latin1');

interface ParsedMessage {
  fromLine: string;
  content: string;
}

/**
 * A tiny mboxrd reader: a message starts at a line "From " at the start of
 * the file or after an empty line; its content ends before the empty line
 * that precedes the next separator (or the end); one '>' is removed from each
 * line matching /^>+From /.
 */
function readMboxrd(text: string): ParsedMessage[] {
  expect(text === '' || text.startsWith('From ')).toBe(true);
  const out: ParsedMessage[] = [];
  const lines = text.split('\n');
  // The file ends with "\n": the last element is empty.
  expect(lines.pop()).toBe('');
  let cur: { fromLine: string; lines: string[] } | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith('From ') && (i === 0 || lines[i - 1] === '')) {
      if (cur) out.push(finish(cur));
      cur = { fromLine: line, lines: [] };
      continue;
    }
    cur!.lines.push(/^>+From /.test(line) ? line.slice(1) : line);
  }
  if (cur) out.push(finish(cur));
  return out;

  function finish(m: { fromLine: string; lines: string[] }): ParsedMessage {
    // Every message is followed by one empty line (the separator's blank line).
    expect(m.lines.pop()).toBe('');
    return { fromLine: m.fromLine, content: m.lines.map((l) => `${l}\n`).join('') };
  }
}

/** Python's mailbox module as an independent reader: [from line, subject, payload] per message. */
async function pythonRead(file: string): Promise<[string, string | null, string][]> {
  const script = [
    'import json, mailbox, sys',
    'mb = mailbox.mbox(sys.argv[1], create=False)',
    'print(json.dumps([[m.get_from(), m["Subject"], m.get_payload()] for m in mb]))',
  ].join('\n');
  const { stdout } = await run('python3', ['-c', script, file], { maxBuffer: 64 * 1024 * 1024 });
  return JSON.parse(stdout) as [string, string | null, string][];
}

const FROM_LINE = /^From (\S+) (Sun|Mon|Tue|Wed|Thu|Fri|Sat) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ \d]\d \d\d:\d\d:\d\d \d{4}$/;

describe('mboxrd pieces', () => {
  it('asctime writes ctime(3) dates with a space-padded day', () => {
    expect(asctime(new Date(2025, 10, 6, 9, 5, 1))).toBe('Thu Nov  6 09:05:01 2025');
    expect(asctime(new Date(2024, 0, 31, 23, 59, 59))).toBe('Wed Jan 31 23:59:59 2024');
  });

  it('takes the sender from the first Return-Path of the header only', () => {
    expect(senderFromHead(Buffer.from('Subject: x\nReturn-Path: <a@b.example>\n\nbody'))).toBe('a@b.example');
    expect(senderFromHead(Buffer.from('return-path:\n  <folded@x.example>\nX: y\n\n'))).toBe('folded@x.example');
    expect(senderFromHead(Buffer.from('Return-Path: <>\n\n'))).toBe('MAILER-DAEMON');
    expect(senderFromHead(Buffer.from('Return-Path: <"a b"@x.example>\n\n'))).toBe('MAILER-DAEMON');
    expect(senderFromHead(Buffer.from('Subject: x\n\nReturn-Path: <body@x.example>\n'))).toBe('MAILER-DAEMON');
    expect(senderFromHead(Buffer.from('\nReturn-Path: <body@x.example>\n'))).toBe('MAILER-DAEMON');
    expect(senderFromHead(Buffer.from('Return-Path: <first@x>\nReturn-Path: <second@x>\n\n'))).toBe('first@x');
  });

  it('quotes every /^>*From / line once more, whatever the chunking (property)', () => {
    const line = fc.oneof(
      fc.constantFrom('From x', '>From y', '>>From z', 'From', 'From ', '>From', ' From a', 'Fromage', '>', '', '>>', 'F', 'Fro'),
      fc.string({ maxLength: 12 }).map((s) => s.replace(/\n/g, '')),
    );
    fc.assert(
      fc.property(fc.array(line, { maxLength: 20 }), fc.boolean(), fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 8 }), (lines, finalLf, sizes) => {
        const text = lines.join('\n') + (finalLf && lines.length > 0 ? '\n' : '');
        const input = Buffer.from(text, 'latin1');
        const q = new MboxrdQuoter();
        const out: Buffer[] = [];
        let i = 0;
        let k = 0;
        while (i < input.length) {
          const n = sizes[k++ % sizes.length]!;
          out.push(...q.push(input.subarray(i, i + n)));
          i += n;
        }
        out.push(...q.end());
        const quoted = Buffer.concat(out).toString('latin1');
        const expected = text
          .split('\n')
          .map((l) => (/^>*From /.test(l) ? `>${l}` : l))
          .join('\n');
        const withLf = expected.length === 0 || expected.endsWith('\n') ? expected : `${expected}\n`;
        expect(quoted).toBe(withLf);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('MboxSink', () => {
  const first = crlf('Return-Path: <alice@example.org>\nSubject: one\n\nFrom the start\n>From quoted\n>>From twice\n From not\nFromage\n\nFrom after blank\n');
  const second = crlf('Subject: two\n\nno final newline\n>From end');

  it('appends separator, quoted LF content and a blank line; reading back gives the messages exactly', async () => {
    const sink = new MboxSink({ path: mbox });
    await sink.deliver(chunked(first, 3), info);
    await sink.deliver(chunked(second, 1), info);
    await sink.close();
    const text = await fs.readFile(mbox, 'latin1');
    expect(text).not.toContain('\r');
    expect(text).toContain('\n>From the start\n>>From quoted\n>>>From twice\n From not\nFromage\n\n>From after blank\n\n');
    const msgs = readMboxrd(text);
    expect(msgs).toHaveLength(2);
    expect(msgs[0]!.fromLine).toMatch(FROM_LINE);
    expect(msgs[0]!.fromLine.split(' ')[1]).toBe('alice@example.org');
    expect(msgs[1]!.fromLine.split(' ')[1]).toBe('MAILER-DAEMON');
    expect(msgs[0]!.content).toBe(first.toString('latin1').replace(/\r\n/g, '\n'));
    expect(msgs[1]!.content).toBe(`${second.toString('latin1').replace(/\r\n/g, '\n')}\n`); // a final LF is added
    expect(await fs.readdir(dir)).toEqual(['inbox']); // no dotlock left behind
  });

  it.skipIf(lacks('python3'))("is read the same by Python's mailbox module", async () => {
    const sink = new MboxSink({ path: mbox });
    await sink.deliver(Readable.from([first]), info);
    await sink.deliver(Readable.from([second]), info);
    const msgs = await pythonRead(mbox);
    expect(msgs.map((m) => m[1])).toEqual(['one', 'two']);
    expect(msgs[0]![0]).toMatch(/^alice@example\.org (Sun|Mon|Tue|Wed|Thu|Fri|Sat) /);
    expect(msgs[1]![0]).toMatch(/^MAILER-DAEMON /);
    // Python's reader does not unquote: the mboxrd quoting is what it sees.
    expect(msgs[0]![2]).toContain('>From the start\n>>From quoted\n');
  });

  it('starts a new message after an empty line even when the file lacks a final newline', async () => {
    await fs.writeFile(mbox, 'From x Thu Nov  6 09:05:01 2025\nSubject: old\n\ntruncated without newline');
    const sink = new MboxSink({ path: mbox });
    await sink.deliver(Readable.from([second]), info);
    const msgs = await pythonRead(mbox);
    expect(msgs.map((m) => m[1])).toEqual(['old', 'two']);
    expect(await fs.readFile(mbox, 'latin1')).toContain('truncated without newline\n\nFrom MAILER-DAEMON ');
  });

  /** Two processes each append `n` messages of 1500 lines, in small writes with pauses, starting at the same instant. */
  async function twoWriters(n: number, locks: boolean): Promise<ParsedMessage[]> {
    const script = path.join(dir, 'writer.mts');
    await fs.writeFile(
      script,
      `import { Readable } from 'node:stream';
import { MboxSink } from ${JSON.stringify(MBOX_MODULE)};
const [file, id, count, locks, startAt] = process.argv.slice(2);
const on = locks === '1';
// spool: false streams under the lock in many writes: the worst case for interleaving.
const sink = new MboxSink({ path: file, spool: false, fcntlLock: on, dotlock: on });
async function* body(i) {
  yield Buffer.from('Subject: W' + id + ' M' + i + '\\r\\n\\r\\n');
  for (let j = 0; j < 1500; j++) {
    yield Buffer.from('From W' + id + ' M' + i + ' L' + j + ' ' + 'x'.repeat(700) + '\\r\\n');
    if (j % 20 === 0) await new Promise((r) => setTimeout(r, 2));
  }
}
await new Promise((r) => setTimeout(r, Math.max(0, Number(startAt) - Date.now())));
for (let i = 0; i < Number(count); i++) await sink.deliver(Readable.from(body(i)), { account: 'w' + id, uidl: String(i), size: 0 });
await sink.close();
`,
    );
    const startAt = Date.now() + 2000;
    const start = (id: number): Promise<void> => {
      const c = spawn(process.execPath, ['--import', TSX, script, mbox, String(id), String(n), locks ? '1' : '0', String(startAt)], {
        stdio: ['ignore', 'inherit', 'inherit'],
      });
      children.push(c);
      return once(c, 'exit').then(([code]) => expect(code).toBe(0));
    };
    await Promise.all([start(1), start(2)]);
    return readMboxrd(await fs.readFile(mbox, 'latin1'));
  }

  /** Whether message `m` is exactly what writer W wrote as its message M. */
  function intact(m: ParsedMessage): string | null {
    const lines = m.content.split('\n');
    const subject = /^Subject: (W\d) (M\d+)$/.exec(lines[0]!);
    if (subject === null) return null;
    const [, w, i] = subject;
    const body = lines.slice(2, -1);
    if (body.length !== 1500) return null;
    return body.every((l, j) => l === `From ${w} ${i} L${j} ${'x'.repeat(700)}`) ? `${w} ${i}` : null;
  }

  it('two processes appending at once never interleave', async () => {
    const N = 8;
    const msgs = await twoWriters(N, true);
    expect(msgs).toHaveLength(2 * N);
    const ids = msgs.map(intact);
    expect(ids.filter((x) => x === null)).toEqual([]);
    expect(new Set(ids).size).toBe(2 * N);
    expect((await pythonRead(mbox)).length).toBe(2 * N);
  });

  it('(control) without locks the same two writers do interleave, so the test above can fail', async () => {
    const msgs = await twoWriters(8, false);
    expect(msgs.map(intact).some((x) => x === null)).toBe(true);
  });

  it.skipIf(lacks('python3'))("waits for another program's fcntl lock, and fails as temporary when it is held too long", async () => {
    await fs.writeFile(mbox, '');
    // Python holds a POSIX (fcntl) lock as mutt or Postfix would.
    const holder = spawn('python3', ['-c', 'import fcntl,os,sys,time\nfd=os.open(sys.argv[1],os.O_RDWR)\nfcntl.lockf(fd,fcntl.LOCK_EX)\nprint("locked",flush=True)\ntime.sleep(float(sys.argv[2]))', mbox, '1.0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(holder);
    const holderExit = once(holder, 'exit');
    await once(holder.stdout!, 'data');

    const impatient = new MboxSink({ path: mbox, lockTimeoutMs: 200 });
    const err = await impatient.deliver(Readable.from([first]), info).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).temporary).toBe(true);
    expect((err as Error).message).toMatch(/fcntl lock/);
    expect(await fs.readFile(mbox, 'latin1')).toBe('');

    const t0 = Date.now();
    await new MboxSink({ path: mbox }).deliver(Readable.from([first]), info);
    expect(Date.now() - t0).toBeGreaterThan(300); // it waited for the holder
    await holderExit;
    expect(readMboxrd(await fs.readFile(mbox, 'latin1'))).toHaveLength(1);
  });

  it('honours a fresh dotlock, breaks a stale one, and removes its own', async () => {
    const lock = `${mbox}.lock`;
    await fs.writeFile(lock, '12345\n');
    const err = await new MboxSink({ path: mbox, lockTimeoutMs: 150 }).deliver(Readable.from([first]), info).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).temporary).toBe(true);
    expect((err as Error).message).toMatch(/dotlock/);
    expect(await fs.readFile(mbox, 'latin1')).toBe(''); // created, nothing appended

    // Ten minutes old: left over by a crash.
    const old = new Date(Date.now() - 600_000);
    await fs.utimes(lock, old, old);
    await new MboxSink({ path: mbox, lockTimeoutMs: 150, dotlockStaleSeconds: 300 }).deliver(Readable.from([first]), info);
    await expect(fs.stat(lock)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(readMboxrd(await fs.readFile(mbox, 'latin1'))).toHaveLength(1);
  });

  it('waits for a dotlock that its holder then releases', async () => {
    const lock = `${mbox}.lock`;
    await fs.writeFile(lock, '1\n');
    setTimeout(() => void fs.unlink(lock), 300);
    await new MboxSink({ path: mbox }).deliver(Readable.from([first]), info);
    expect(readMboxrd(await fs.readFile(mbox, 'latin1'))).toHaveLength(1);
  });

  describe('a failure mid-write leaves the file exactly as it was', () => {
    async function seed(): Promise<Buffer> {
      await new MboxSink({ path: mbox }).deliver(Readable.from([first]), info);
      return fs.readFile(mbox);
    }

    it('when the source fails after part of the message was appended (spool: false)', async () => {
      const before = await seed();
      const big = Buffer.alloc(600 * 1024, 'a');
      let sent = false;
      const source = new Readable({
        read() {
          if (!sent) {
            sent = true;
            this.push(crlf('Subject: big\n\n'));
            this.push(big);
          } else setTimeout(() => this.destroy(new Error('POP3 connection lost')), 50);
        },
      });
      const sizes: number[] = [];
      const poll = setInterval(() => void fs.stat(mbox).then((s) => sizes.push(s.size)), 5);
      try {
        await expect(new MboxSink({ path: mbox, spool: false }).deliver(source, info)).rejects.toThrow(/connection lost/);
      } finally {
        clearInterval(poll);
      }
      expect(Math.max(...sizes)).toBeGreaterThan(before.length); // part of it really was in the file
      expect((await fs.readFile(mbox)).equals(before)).toBe(true);
      expect(await fs.readdir(dir)).toEqual(['inbox']);
    });

    it('when spooled, a failing source never touches the mbox', async () => {
      const before = await seed();
      const source = new Readable({
        read() {
          this.destroy(new Error('POP3 connection lost'));
        },
      });
      await expect(new MboxSink({ path: mbox }).deliver(source, info)).rejects.toThrow(/connection lost/);
      expect((await fs.readFile(mbox)).equals(before)).toBe(true);
    });

    it('when aborted while part of the message is in the file', async () => {
      const before = await seed();
      const source = new PassThrough();
      source.write(crlf('Subject: big\n\n'));
      source.write(Buffer.alloc(600 * 1024, 'b'));
      const ac = new AbortController();
      const p = new MboxSink({ path: mbox, spool: false }).deliver(source, info, ac.signal);
      for (let i = 0; i < 200 && (await fs.stat(mbox)).size <= before.length; i++) await new Promise((r) => setTimeout(r, 10));
      expect((await fs.stat(mbox)).size).toBeGreaterThan(before.length);
      ac.abort();
      await expect(p).rejects.toMatchObject({ name: 'AbortError' });
      expect((await fs.readFile(mbox)).equals(before)).toBe(true);
      expect(await fs.readdir(dir)).toEqual(['inbox']);
    });

    it('when the disk refuses the write (EFBIG from a file size limit, in a real process)', async () => {
      // 100 KiB already there, a limit of 120 KiB, a 60 KiB message: the append fails part way.
      await fs.writeFile(mbox, `From x Thu Nov  6 09:05:01 2025\nSubject: old\n\n${'o'.repeat(100 * 1024)}\n\n`);
      const before = await fs.readFile(mbox);
      const script = path.join(dir, 'efbig.mts');
      await fs.writeFile(
        script,
        `import { Readable } from 'node:stream';
import { MboxSink } from ${JSON.stringify(MBOX_MODULE)};
const sink = new MboxSink({ path: process.argv[2], spoolDir: process.argv[3] });
try {
  await sink.deliver(Readable.from([Buffer.from('Subject: new\\r\\n\\r\\n' + 'n'.repeat(60 * 1024) + '\\r\\n')]), { account: 'a', uidl: 'u', size: 0 });
  console.log('delivered');
} catch (e) {
  console.log('failed ' + e.code);
}
`,
      );
      const spoolDir = path.join(dir, 'spool');
      await fs.mkdir(spoolDir);
      const { stdout } = await run('bash', ['-c', 'ulimit -f 120; exec "$0" "$@"', process.execPath, '--import', TSX, script, mbox, spoolDir]);
      expect(stdout.trim()).toBe('failed EFBIG');
      expect((await fs.readFile(mbox)).equals(before)).toBe(true);
      expect((await fs.readdir(dir)).sort()).toEqual(['efbig.mts', 'inbox', 'spool']);
      expect(await fs.readdir(spoolDir)).toEqual([]); // the spool file never had a name for long
    });
  });

  it('create: false refuses a missing mbox as temporary', async () => {
    const err = await new MboxSink({ path: mbox, create: false }).deliver(Readable.from([first]), info).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).temporary).toBe(true);
    expect(await fs.readdir(dir)).toEqual([]);
  });

  it('refuses to append to something that is not a regular file', async () => {
    await fs.mkdir(mbox);
    await expect(new MboxSink({ path: mbox, dotlock: false }).deliver(Readable.from([first]), info)).rejects.toThrow();
  });

  it('deliveries from one process to one mbox queue up instead of overlapping', async () => {
    const a = new MboxSink({ path: mbox, spool: false });
    const b = new MboxSink({ path: path.join(dir, '.', 'inbox'), spool: false });
    const body = (tag: string): Readable =>
      Readable.from(
        (async function* () {
          yield Buffer.from(`Subject: ${tag}\r\n\r\n`);
          for (let j = 0; j < 200; j++) {
            yield Buffer.from(`${tag} ${j}\r\n`);
            await new Promise((r) => setImmediate(r));
          }
        })(),
      );
    await Promise.all([a.deliver(body('A'), info), b.deliver(body('B'), info), a.deliver(body('C'), info)]);
    const msgs = readMboxrd(await fs.readFile(mbox, 'latin1'));
    expect(msgs).toHaveLength(3);
    for (const m of msgs) {
      const tag = /^Subject: (\w)/.exec(m.content)![1]!;
      expect(m.content.split('\n').slice(2, -1).every((l) => l.startsWith(`${tag} `))).toBe(true);
    }
  });
});
