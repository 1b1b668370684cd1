/**
 * MboxSink.findDelivered, the crash probe: which pending messages an mbox
 * holds (identical copies as a multiset), and the repair of a torn last
 * message; and the dotlock a killed process leaves behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MboxSink } from '../../src/fetch/sinks/mbox.js';
import type { DeliveryInfo, PendingMessage } from '../../src/fetch/sinks/types.js';
import { bufferSource } from '../../src/fetch/sinks/util.js';
import { MBOX_MODULE, TSX, parseMboxrd } from './helpers.js';


let dir: string;
let mbox: string;
const children: ChildProcess[] = [];

beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-mbox-probe-'));
  mbox = path.join(dir, 'inbox');
});

afterEach(async () => {
  for (const c of children.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await fs.rm(dir, { recursive: true, force: true });
});

const info: DeliveryInfo = { account: 'acct', uidl: 'u', size: 0 };
const crlf = (s: string): Buffer => Buffer.from(s.replace(/\n/g, '\r\n'), 'latin1');
const pending = (uidl: string, content: Buffer): PendingMessage => ({ uidl, since: Date.now() - 60_000, folders: [undefined], content: bufferSource(content) });

/** What an mbox reader gets back for a message the server sends as `content` (CRLF). */
const readBack = (content: Buffer): string => {
  const lf = content.toString('latin1').replace(/\r\n/g, '\n');
  return lf.endsWith('\n') ? lf : `${lf}\n`;
};

const A = crlf('Return-Path: <alice@example.org>\nSubject: a\n\nhello\n');
const B = crlf('Subject: b\n\nworld\n');
/** The same length as A, other content. */
const A2 = crlf('Return-Path: <alice@example.org>\nSubject: a\n\nHELLO\n');
/** Lines mboxrd quotes, a bare CR, no final line end. */
const QUOTED = crlf('Subject: quoting\n\nFrom the start\n>From quoted\n>>From twice\n From not\nFromage\n\nFrom after blank\nbare\rCR\n>From end');
/** The same, but every From line already quoted once more: a different message. */
const QUOTED_MORE = crlf('Subject: quoting\n\n>From the start\n>>From quoted\n>>>From twice\n From not\nFromage\n\n>From after blank\nbare\rCR\n>>From end');
const C = crlf(`Return-Path: <carol@example.org>\nSubject: c\n\n${'From a line that needs quoting\nand one that does not\n'.repeat(20)}`);

async function deliver(...messages: Buffer[]): Promise<void> {
  const sink = new MboxSink({ path: mbox, fsync: false });
  for (const m of messages) await sink.deliver(Readable.from([m]), info);
  await sink.close();
}

async function probe(...messages: PendingMessage[]): Promise<string[]> {
  const sink = new MboxSink({ path: mbox, fsync: false, lockTimeoutMs: 2000 });
  const found = await sink.findDelivered(messages);
  await sink.close();
  return [...found].sort();
}

describe('MboxSink.findDelivered', () => {
  it('finds delivered messages by content; identical copies count as a multiset', async () => {
    await deliver(A, B);
    // Two pending copies of A and one in the mbox: one of them was delivered.
    expect(await probe(pending('u1', A), pending('u2', A), pending('u3', B), pending('u4', C))).toEqual(['u1', 'u3']);
    // Same length, other content: not there.
    expect(A2.length).toBe(A.length);
    expect(await probe(pending('u5', A2))).toEqual([]);
    await deliver(A);
    expect(await probe(pending('u1', A), pending('u2', A), pending('u6', A))).toEqual(['u1', 'u2']);
    expect(parseMboxrd(await fs.readFile(mbox, 'latin1')).map((m) => m.content)).toEqual([A, B, A].map(readBack));
  });

  it('compares in the form the sink writes: LF line ends, mboxrd quoting, a final line end', async () => {
    await deliver(QUOTED, B);
    const text = await fs.readFile(mbox, 'latin1');
    expect(text).toContain('\n>From the start\n>>From quoted\n>>>From twice\n From not\nFromage\n\n>From after blank\nbare\rCR\n>>From end\n\n');
    expect(await probe(pending('q', QUOTED))).toEqual(['q']);
    // Differs only in quoting: read back it would be another message, so it is not found.
    expect(await probe(pending('q2', QUOTED_MORE))).toEqual([]);
    // The content as LF (a server that sends bare LF lines) renders the same.
    expect(await probe(pending('lf', Buffer.from(QUOTED.toString('latin1').replace(/\r\n/g, '\n'), 'latin1')))).toEqual(['lf']);
    expect(parseMboxrd(await fs.readFile(mbox, 'latin1')).map((m) => m.content)).toEqual([readBack(QUOTED), readBack(B)]);
    expect(await fs.readFile(mbox, 'latin1')).toBe(text); // a probe that finds no torn message changes nothing
  });

  it('an mbox that does not exist holds nothing, and is not created', async () => {
    expect(await probe(pending('u1', A))).toEqual([]);
    await expect(fs.stat(mbox)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  describe('a torn last message', () => {
    /** The mbox after A and B, and after A, B and `torn` delivered whole. */
    async function layout(torn: Buffer): Promise<{ before: Buffer; whole: Buffer }> {
      await deliver(A, B);
      const before = await fs.readFile(mbox);
      await deliver(torn);
      return { before, whole: await fs.readFile(mbox) };
    }

    it('is cut back to its From_ line, wherever the append stopped; delivering it again leaves one whole copy', async () => {
      const { before, whole } = await layout(C);
      const fromLineEnd = whole.indexOf('\n', before.length) + 1;
      const cuts = [before.length + 1, before.length + 4, before.length + 7, before.length + 30, fromLineEnd - 1, fromLineEnd, fromLineEnd + 1, fromLineEnd + 100, whole.length - 2, whole.length - 1];
      for (const cut of cuts) {
        await fs.writeFile(mbox, whole.subarray(0, cut));
        // B is whole and found; C is not, and its fragment is removed.
        expect(await probe(pending('b', B), pending('c', C)), `cut at ${cut}`).toEqual(['b']);
        expect((await fs.readFile(mbox)).equals(before), `cut at ${cut}`).toBe(true);
      }
      await deliver(C);
      expect(parseMboxrd(await fs.readFile(mbox, 'latin1')).map((m) => m.content)).toEqual([A, B, C].map(readBack));
    });

    it('whole, it is found and kept', async () => {
      const { whole } = await layout(C);
      expect(await probe(pending('c', C))).toEqual(['c']);
      expect((await fs.readFile(mbox)).equals(whole)).toBe(true);
    });

    it('is left alone when other mail follows it', async () => {
      const { before, whole } = await layout(C);
      await fs.writeFile(mbox, whole.subarray(0, before.length + 200));
      await deliver(B); // another delivery after the crash, as another program might make
      const after = await fs.readFile(mbox);
      expect(await probe(pending('c', C))).toEqual([]);
      expect((await fs.readFile(mbox)).equals(after)).toBe(true);
    });

    it('is left alone when no pending message explains it', async () => {
      const { before, whole } = await layout(C);
      await fs.writeFile(mbox, whole.subarray(0, before.length + 200));
      const torn = await fs.readFile(mbox);
      // A is pending, but the fragment is not the start of A; nor of a message from another sender.
      const otherSender = Buffer.from(C.toString('latin1').replace('carol@', 'dave@'), 'latin1');
      expect(await probe(pending('a', A), pending('x', otherSender))).toEqual(['a']);
      expect((await fs.readFile(mbox)).equals(torn)).toBe(true);
    });
  });
});

describe('after a SIGKILL in the middle of an append (real processes)', () => {
  /** A message of about 1.4 MB: the sink writes it in several pieces, so a kill can land between them. */
  const BIG = Buffer.concat([crlf('Return-Path: <big@example.org>\nSubject: big\n\n'), ...Array.from({ length: 2000 }, (_, j) => crlf(`From line ${j} ${'x'.repeat(700)}\n`))]);

  it("the dead process's dotlock is taken over, the torn message cut off, and the message delivered again is whole", async () => {
    await deliver(A);
    const before = await fs.readFile(mbox);
    const script = path.join(dir, 'writer.mts');
    await fs.writeFile(
      script,
      `import { Readable } from 'node:stream';
import { MboxSink } from ${JSON.stringify(MBOX_MODULE)};
import { readFileSync } from 'node:fs';
const big = readFileSync(process.argv[3]);
// spool: false appends while the message arrives: slowly here, so the kill lands mid-append.
async function* slowly() {
  for (let i = 0; i < big.length; i += 8192) {
    yield big.subarray(i, i + 8192);
    await new Promise((r) => setTimeout(r, 5));
  }
}
await new MboxSink({ path: process.argv[2], spool: false }).deliver(Readable.from(slowly()), { account: 'a', uidl: 'u', size: 0 });
`,
    );
    await fs.writeFile(path.join(dir, 'big.eml'), BIG);
    const child = spawn(process.execPath, ['--import', TSX, script, mbox, path.join(dir, 'big.eml')], { stdio: 'inherit' });
    children.push(child);
    const exited = once(child, 'exit');
    while ((await fs.stat(mbox)).size === before.length) await sleep(5);
    child.kill('SIGKILL');
    await exited;

    const torn = await fs.readFile(mbox);
    expect(torn.length).toBeGreaterThan(before.length);
    expect(torn.length).toBeLessThan(before.length + BIG.length);
    expect(await fs.readFile(`${mbox}.lock`, 'latin1')).toBe(`${child.pid!} ${os.hostname()}\n`); // left behind

    const t0 = Date.now();
    expect(await probe(pending('a', A), pending('big', BIG))).toEqual(['a']);
    expect(Date.now() - t0).toBeLessThan(1500); // the lock of a dead process is not waited for
    expect((await fs.readFile(mbox)).equals(before)).toBe(true);
    await expect(fs.stat(`${mbox}.lock`)).rejects.toMatchObject({ code: 'ENOENT' });

    await deliver(BIG);
    expect(parseMboxrd(await fs.readFile(mbox, 'latin1')).map((m) => m.content)).toEqual([A, BIG].map(readBack));
    expect(await probe(pending('big', BIG))).toEqual(['big']);
  });

  it("a fresh dotlock of a live process is waited for; one of a dead process of this host is not; the probe removes a dead process's half-made lock", async () => {
    await deliver(A);
    const lock = `${mbox}.lock`;
    const sleeper = spawn('sleep', ['30']);
    children.push(sleeper);
    await fs.writeFile(lock, `${sleeper.pid!} ${os.hostname()}\n`);
    const err = await new MboxSink({ path: mbox, lockTimeoutMs: 200 }).deliver(Readable.from([B]), info).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/dotlock/);

    sleeper.kill('SIGKILL');
    await once(sleeper, 'exit');
    const t0 = Date.now();
    await new MboxSink({ path: mbox, lockTimeoutMs: 5000 }).deliver(Readable.from([B]), info);
    expect(Date.now() - t0).toBeLessThan(1000);
    await expect(fs.stat(lock)).rejects.toMatchObject({ code: 'ENOENT' });

    // The same pid on another host (a shared file system) is not ours to judge: the age rule applies.
    await fs.writeFile(lock, `${sleeper.pid!} not-${os.hostname()}\n`);
    const err2 = await new MboxSink({ path: mbox, lockTimeoutMs: 200 }).deliver(Readable.from([B]), info).catch((e: unknown) => e);
    expect((err2 as Error).message).toMatch(/dotlock/);
    await fs.rm(lock);

    // A process killed while it was making the lock leaves its own file; the probe removes it.
    const half = `${lock}.poplar.${os.hostname()}.${sleeper.pid!}.0`;
    await fs.writeFile(half, `${sleeper.pid!} ${os.hostname()}\n`);
    expect(await probe(pending('b', B))).toEqual(['b']);
    expect(await fs.readdir(dir)).toEqual(['inbox']);
  });
});
