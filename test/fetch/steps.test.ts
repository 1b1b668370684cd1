/**
 * The steps of one fetch, each run alone: the plan (plain data), the
 * per-message step with group commit (a real ledger and real sinks in a
 * temporary directory, messages as plain streams), and the sink capability
 * that decides parallel delivery (a whole fetch against the fake server).
 */
import { promises as fs, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DeliveryRun, StopRequested, type DeliveryOptions } from '../../src/fetch/deliver.js';
import { Ledger, type LedgerEntry } from '../../src/fetch/ledger.js';
import { planFetch, type Candidate, type PlanSettings } from '../../src/fetch/plan.js';
import { newReport } from '../../src/fetch/report.js';
import { compileRules, DEFAULT_DESTINATION, type Destination } from '../../src/fetch/rules.js';
import { MaildirSink, MdaSink } from '../../src/fetch/sinks/index.js';
import type { DeliveryInfo, Sink } from '../../src/fetch/sinks/types.js';
import { miniPop3, startFake, type FakeServer } from '../client/fake-server.js';
import { fetchOnce, maildirMessages, seqCounts, seqMessage, storedForm, testAccount } from './helpers.js';

let tmp: string;
let n = 0;
const workDir = async (name: string): Promise<string> => {
  const d = path.join(tmp, `${name}-${n++}`);
  await fs.mkdir(d, { recursive: true });
  return d;
};
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-fetch-steps-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

describe('planFetch', () => {
  const DAY = 86_400_000;
  const NOW = 100 * DAY;
  const usable = [
    { number: 1, uid: 'old' },
    { number: 2, uid: 'young' },
    { number: 3, uid: 'new-small' },
    { number: 4, uid: 'new-big' },
    { number: 5, uid: 'new-huge' },
    { number: 6, uid: 'new-2' },
  ];
  const sizes = new Map([
    [1, 100],
    [2, 100],
    [3, 100],
    [4, 5_000],
    [5, 50_000],
    [6, 200],
  ]);
  const ledger = new Map<string, LedgerEntry>([
    ['old', { firstSeen: NOW - 40 * DAY, discarded: false }],
    ['young', { firstSeen: NOW - 2 * DAY, discarded: false }],
  ]);
  const plan = (over: Partial<PlanSettings>) => planFetch(usable, sizes, (u) => ledger.get(u), { keep: true, fetch: 'new', ...over }, NOW);
  const numbers = (cs: readonly Candidate[]): number[] => cs.map((c) => c.number);

  it('keep mode fetches only what the ledger does not hold, in listing order, and deletes nothing', () => {
    const p = plan({});
    expect(numbers(p.candidates)).toEqual([3, 4, 5, 6]);
    expect(p.candidates.map((c) => [c.uidl, c.size, c.dest])).toEqual([
      ['new-small', 100, undefined],
      ['new-big', 5_000, undefined],
      ['new-huge', 50_000, undefined],
      ['new-2', 200, undefined],
    ]);
    expect(p.toDelete).toEqual([]);
    expect(p.skipped).toBe(0);
  });

  it('delete mode deletes what the ledger holds again (a QUIT may have gone unanswered) and fetches the rest', () => {
    const p = plan({ keep: false });
    expect(p.toDelete).toEqual([1, 2]);
    expect(numbers(p.candidates)).toEqual([3, 4, 5, 6]);
  });

  it('fetch = "all" fetches the recorded messages again; delete_after_days deletes those first seen long enough ago', () => {
    expect(numbers(plan({ fetch: 'all' }).candidates)).toEqual([1, 2, 3, 4, 5, 6]);
    const aged = plan({ fetch: 'all', delete_after_days: 30 });
    expect(aged.toDelete).toEqual([1]);
    expect(numbers(aged.candidates)).toEqual([2, 3, 4, 5, 6]);
    expect(plan({ delete_after_days: 2 }).toDelete).toEqual([1, 2]); // exactly 2 days counts
  });

  it('size limits: larger than delete_larger_than is deleted unread, larger than skip_larger_than is left and counted', () => {
    const p = plan({ keep: false, skip_larger_than: 1_000, delete_larger_than: 10_000 });
    expect(p.toDelete).toEqual([1, 2, 5]);
    expect(numbers(p.candidates)).toEqual([3, 6]);
    expect(p.skipped).toBe(1);
    // A recorded message is planned by the ledger, not by its size.
    expect(plan({ keep: false, delete_larger_than: 10 }).toDelete).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe('the per-message step (DeliveryRun) with a real ledger and sink', () => {
  const MSGS = [1, 2, 3, 4, 5].map((i) => seqMessage(i, 300));
  /** As the plan and the rules leave them: the account's own sink, or (peek) undecided. */
  const candidates = (msgs: readonly string[], dest: Destination | undefined = DEFAULT_DESTINATION): Candidate[] =>
    msgs.map((m, i) => ({ number: i + 1, uidl: `u${i + 1}`, size: Buffer.byteLength(m), dest }));
  const streamOf = (m: string): Readable => Readable.from([Buffer.from(m, 'latin1')], { objectMode: false });
  const opened: Ledger[] = [];
  afterEach(async () => {
    await Promise.all(opened.splice(0).map((l) => l.close().catch(() => undefined)));
  });

  async function setup(name: string, sink: (dir: string) => Sink, over: Partial<DeliveryOptions> = {}) {
    const dir = await workDir(name);
    const ledger = await Ledger.open(path.join(dir, 'a.ledger'));
    opened.push(ledger);
    const s = sink(dir);
    const report = newReport('a');
    const deles: { n: number; recorded: boolean; stored: number }[] = [];
    const opts: DeliveryOptions = {
      acct: { name: 'a', batch: 3, batch_ms: 1e9, parallel: 1 },
      ledger,
      sinkFor: async () => s,
      rules: [],
      peek: false,
      report,
      now: () => 7_000,
      // What a DELE would see: is the message recorded, and how many files are in the Maildir.
      dele: (num) => {
        let stored = 0;
        try {
          stored = readdirSync(path.join(dir, 'Maildir', 'new')).length;
        } catch {
          // no Maildir (another sink)
        }
        deles.push({ n: num, recorded: ledger.has(`u${num}`), stored });
      },
      ...over,
    };
    return { dir, ledger, sink: s, report, deles, opts };
  }

  /** A Maildir sink that notes, as each message is handed to it, whether the ledger file holds its intent. */
  class WatchedMaildir extends MaildirSink {
    readonly intentOnDisk: boolean[] = [];
    constructor(dir: string) {
      super({ path: path.join(dir, 'Maildir'), fsync: 'group' });
      this.ledgerFile = path.join(dir, 'a.ledger');
    }
    readonly ledgerFile: string;
    override async deliver(message: Readable, info: DeliveryInfo, signal?: AbortSignal): Promise<void> {
      this.intentOnDisk.push(readFileSync(this.ledgerFile, 'latin1').includes(` ${info.uidl} -\n`));
      return super.deliver(message, info, signal);
    }
  }

  it('a message reaches the sink only after its intent is durable; records and DELEs follow the group flush', async () => {
    const t = await setup('order', (dir) => new WatchedMaildir(dir));
    const run = new DeliveryRun(t.opts, candidates(MSGS));
    await run.next(streamOf(MSGS[0]!));
    expect((t.sink as WatchedMaildir).intentOnDisk).toEqual([true]);
    expect(t.ledger.pending().map((p) => p.uidl)).toEqual(['u1', 'u2', 'u3', 'u4', 'u5']);
    expect(t.ledger.has('u1')).toBe(false); // delivered, not yet flushed: not recorded
    expect(t.deles).toEqual([]);
    for (const m of MSGS.slice(1)) await run.next(streamOf(m));
    expect(await run.finish()).toBeUndefined();
    expect((t.sink as WatchedMaildir).intentOnDisk).toEqual([true, true, true, true, true]);
    expect(t.deles.map((d) => d.n)).toEqual([1, 2, 3, 4, 5]);
    for (const d of t.deles) expect(d.recorded).toBe(true);
    // A DELE never goes out before the files of its group are in the Maildir.
    expect(t.deles.slice(0, 3).every((d) => d.stored >= 3)).toBe(true);
    expect(t.deles.slice(3).every((d) => d.stored === 5)).toBe(true);
    expect(await maildirMessages(path.join(t.dir, 'Maildir'))).toEqual(MSGS.map((m) => storedForm(Buffer.from(m, 'latin1'))).sort(Buffer.compare));
    expect(t.report).toMatchObject({ delivered: 5, discarded: 0, bytes: MSGS.reduce((s, m) => s + Buffer.byteLength(m), 0) });
    expect(t.ledger.pending()).toEqual([]);
    expect(t.ledger.get('u3')).toEqual({ firstSeen: 7_000, discarded: false });
  });

  it('a sink that cannot be asked after a crash (MDA) gets each message recorded before the next is handed over', async () => {
    const t = await setup('mda', (dir) => new MdaSink({ command: `cat >> '${path.join(dir, 'out')}'` }));
    const run = new DeliveryRun({ ...t.opts, acct: { ...t.opts.acct, batch: 64 } }, candidates(MSGS.slice(0, 2)));
    await run.next(streamOf(MSGS[0]!));
    expect(t.ledger.has('u1')).toBe(true);
    expect(t.deles).toEqual([]); // DELE still waits for the group's commit
    await run.next(streamOf(MSGS[1]!));
    expect(t.ledger.has('u2')).toBe(true);
    expect(await run.finish()).toBeUndefined();
    expect(t.deles.map((d) => d.n)).toEqual([1, 2]);
    expect(await fs.readFile(path.join(t.dir, 'out'), 'latin1')).toBe(MSGS.slice(0, 2).join('').replace(/\r\n/g, '\n'));
  });

  it('with peek, the header read from the message routes it: a discard rule keeps it out of the sink and records it as discarded', async () => {
    const rules = compileRules(testAccount(tmp, { rule: [{ header: 'X-Spam', match: '^yes$', discard: true }] }).rule);
    const t = await setup('peek', (dir) => new MaildirSink({ path: path.join(dir, 'Maildir') }), { rules, peek: true });
    const msgs = [seqMessage(1, 200, 'X-Spam: yes\r\n'), seqMessage(2, 200, 'X-Spam: no\r\n')];
    const run = new DeliveryRun(t.opts, candidates(msgs, undefined));
    for (const m of msgs) await run.next(streamOf(m));
    expect(await run.finish()).toBeUndefined();
    expect(await seqCounts(path.join(t.dir, 'Maildir'))).toEqual(new Map([[2, 1]]));
    expect(t.ledger.get('u1')).toEqual({ firstSeen: 7_000, discarded: true });
    expect(t.ledger.get('u2')).toEqual({ firstSeen: 7_000, discarded: false });
    expect(t.report).toMatchObject({ delivered: 1, discarded: 1 });
  });

  it('a stop request ends the run before the next message; what was delivered is committed', async () => {
    const stop = new AbortController();
    const t = await setup('stop', (dir) => new MaildirSink({ path: path.join(dir, 'Maildir') }), { stop: stop.signal });
    const run = new DeliveryRun(t.opts, candidates(MSGS));
    await run.next(streamOf(MSGS[0]!));
    stop.abort();
    await expect(run.next(streamOf(MSGS[1]!))).rejects.toBeInstanceOf(StopRequested);
    expect(await run.finish()).toBeUndefined();
    expect(t.deles.map((d) => d.n)).toEqual([1]);
    expect([...t.ledger.uidls()]).toEqual(['u1']);
    expect(await seqCounts(path.join(t.dir, 'Maildir'))).toEqual(new Map([[1, 1]]));
  });

  it('a message cut off mid-stream is not recorded, leaves no file, and the messages before it are committed', async () => {
    const t = await setup('cut', (dir) => new MaildirSink({ path: path.join(dir, 'Maildir') }));
    const run = new DeliveryRun(t.opts, candidates(MSGS));
    await run.next(streamOf(MSGS[0]!));
    const broken = new Readable({ read() {} });
    broken.on('error', () => undefined); // the sink sees it through its reads
    broken.push(Buffer.from(MSGS[1]!.slice(0, 100), 'latin1'));
    setTimeout(() => broken.destroy(new Error('connection reset')), 20);
    await expect(run.next(broken)).rejects.toThrow('connection reset');
    expect(await run.finish()).toBeUndefined();
    expect([...t.ledger.uidls()]).toEqual(['u1']);
    expect(t.deles.map((d) => d.n)).toEqual([1]);
    expect(await seqCounts(path.join(t.dir, 'Maildir'))).toEqual(new Map([[1, 1]]));
    expect(await fs.readdir(path.join(t.dir, 'Maildir', 'tmp'))).toEqual([]);
  });
});

/**
 * A sink of files, one per message, that measures how many of its deliveries
 * overlap. The first delivery waits (up to 1 s) for a second one to start,
 * so overlap is seen whenever the fetcher allows it.
 */
class OverlapSink implements Sink {
  active = 0;
  most = 0;
  readonly #dir: string;
  readonly concurrentDeliveries?: boolean;
  constructor(dir: string, concurrent: boolean | undefined) {
    this.#dir = dir;
    if (concurrent !== undefined) this.concurrentDeliveries = concurrent;
  }
  async deliver(message: Readable, info: DeliveryInfo): Promise<void> {
    this.active++;
    this.most = Math.max(this.most, this.active);
    try {
      const chunks: Buffer[] = [];
      for await (const c of message) chunks.push(c as Buffer);
      if (info.uidl === 'uid-1') for (let i = 0; i < 100 && this.active < 2; i++) await sleep(10);
      await fs.mkdir(this.#dir, { recursive: true });
      await fs.writeFile(path.join(this.#dir, info.uidl), Buffer.concat(chunks));
    } finally {
      this.active--;
    }
  }
  async close(): Promise<void> {}
}

describe('parallel delivery is a capability of the sink, not of its kind', () => {
  const MSGS = [1, 2, 3, 4, 5, 6].map((i) => seqMessage(i, 500));
  let fake: FakeServer | undefined;
  afterEach(async () => {
    await fake?.stop();
    fake = undefined;
  });

  async function fetchWith(sinkSpec: Record<string, unknown>, concurrent: boolean | undefined): Promise<OverlapSink> {
    fake = await startFake({ handle: miniPop3({ messages: MSGS }) });
    const dir = await workDir('overlap');
    const sink = new OverlapSink(path.join(dir, 'out'), concurrent);
    const acct = testAccount(dir, { port: fake.port, auth: 'USER', keep: true, parallel: 4, sink: sinkSpec });
    const report = await fetchOnce(acct, { createSink: () => sink });
    expect(report).toMatchObject({ ok: true, delivered: 6 });
    expect((await fs.readdir(path.join(dir, 'out'))).sort()).toEqual(MSGS.map((_, i) => `uid-${i + 1}`));
    return sink;
  }

  it('a sink that declares concurrentDeliveries gets small messages in parallel, whatever its configured type', async () => {
    expect((await fetchWith({ type: 'mda', command: 'true' }, true)).most).toBeGreaterThan(1);
  });

  it('a sink that does not declare it gets one message at a time, even behind a maildir spec', async () => {
    expect((await fetchWith({ type: 'maildir', path: path.join(tmp, 'unused') }, undefined)).most).toBe(1);
    expect((await fetchWith({ type: 'maildir', path: path.join(tmp, 'unused') }, false)).most).toBe(1);
  });
});
