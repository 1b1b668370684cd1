/**
 * The first login of a second worker process (`serve --workers`) on a big
 * maildrop another worker scanned and that has not changed since: counted in
 * directory listings and file reads, not timed. That login must read none of
 * the message files and list nothing when a valid saved scan exists; with the
 * sibling's announcement it reads nothing at all. A worker that has not seen
 * the maildrop is played by this process after forgetRememberedScans().
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { native, type NativeCodec } from '../../protocol/native.js';
import { silentLogger } from '../../observability/log.js';
import { forgetRememberedScans, MaildirStore, onSavedScan, preloadSavedScan } from './maildir-store.js';
import { statScanKey } from './scan-cache.js';

const N = 1500;
let root: string;
let box: string;
let store: MaildirStore;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-second-worker-'));
  box = path.join(root, 'u');
  store = new MaildirStore({ root, logger: silentLogger(), fsync: false });
  forgetRememberedScans();
});
afterEach(async () => {
  vi.restoreAllMocks();
  forgetRememberedScans();
  await fs.rm(root, { recursive: true, force: true });
});

/** N messages, in cur/ (already seen by a reader) or new/ (just delivered), without sizes in their names. */
async function bigDrop(where: 'cur' | 'new'): Promise<void> {
  for (const d of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, d), { recursive: true });
  await Promise.all(
    Array.from({ length: N }, (_, i) =>
      fs.writeFile(path.join(box, where, `${1_700_000_000 + i}.M${i}P1.big${where === 'cur' ? ':2,' : ''}`), `Subject: ${i}\r\n\r\n${'x'.repeat(i % 50)}\r\n`),
    ),
  );
}

/** A login: the messages as LIST and UIDL show them. */
async function login(): Promise<string[]> {
  const m = await store.open({ username: 'u' });
  try {
    return m.messages.map((x) => `${x.uidl} ${x.size}`);
  } finally {
    await m.release();
  }
}

interface Counted {
  /** Directories listed (readdir, opendir), relative to the maildrop. */
  listed: string[];
  /** Files opened or read (open, readFile), relative to the maildrop; the session lock is opened synchronously and not counted. */
  read: string[];
  /** Message files measured by the native size counter. */
  measured: number;
}

/** Every listing and file read `fn` makes, through node:fs and the native size counter. */
async function count<T>(fn: () => Promise<T>): Promise<{ result: T; counted: Counted }> {
  const counted: Counted = { listed: [], read: [], measured: 0 };
  const rel = (p: unknown): string => path.relative(box, String(p));
  const readdir = fs.readdir.bind(fs);
  const opendir = fs.opendir.bind(fs);
  const open = fs.open.bind(fs);
  const readFile = fs.readFile.bind(fs);
  vi.spyOn(fs, 'readdir').mockImplementation(((p: string, o?: unknown) => (counted.listed.push(rel(p)), readdir(p, o as never))) as typeof fs.readdir);
  vi.spyOn(fs, 'opendir').mockImplementation(((p: string, o?: unknown) => (counted.listed.push(rel(p)), opendir(p, o as never))) as typeof fs.opendir);
  vi.spyOn(fs, 'open').mockImplementation(((p: string, ...a: unknown[]) => (counted.read.push(rel(p)), open(p, ...(a as [never])))) as typeof fs.open);
  vi.spyOn(fs, 'readFile').mockImplementation(((p: string, ...a: unknown[]) => (counted.read.push(rel(p)), readFile(p, ...(a as [never])))) as typeof fs.readFile);
  if (native?.crlfSizes !== undefined) {
    const measure = native.crlfSizes.bind(native);
    vi.spyOn(native as Required<NativeCodec>, 'crlfSizes').mockImplementation((files: string[]) => ((counted.measured += files.length), measure(files)));
  }
  try {
    return { result: await fn(), counted };
  } finally {
    vi.restoreAllMocks();
  }
}

const messageFiles = (c: Counted): string[] => c.read.filter((f) => f.startsWith('cur/') || f.startsWith('new/'));

describe("a second worker's first login on a big maildrop another worker scanned", () => {
  it('right after the first login answered: the saved scan is already there; no listing, no message file read', async () => {
    await bigDrop('cur');
    await new Promise((r) => setTimeout(r, 250)); // cur/ and new/ quiet: the scan is trusted at once
    // Worker 1: lists, measures every file, writes the uidlist and the saved scan (and the counting sees that).
    const { result: first, counted: scan } = await count(login);
    expect(first).toHaveLength(N);
    expect(scan.listed.length).toBeGreaterThan(0);
    expect(scan.measured + messageFiles(scan).length).toBeGreaterThanOrEqual(N);
    forgetRememberedScans(); // worker 2 has never seen this maildrop
    const { result, counted } = await count(login);
    expect(result).toEqual(first);
    expect(counted.listed).toEqual([]);
    expect(messageFiles(counted)).toEqual([]);
    expect(counted.measured).toBe(0);
    expect(counted.read).toEqual(['poplar-scan.cache']); // not even the uidlist
  }, 30_000);

  it('after new mail was moved to cur/ at the first login: the scan is confirmed and saved in the background; the next worker lists nothing', async () => {
    await bigDrop('new');
    const first = await login(); // moves new/ to cur/: the directories changed during the scan
    expect(first).toHaveLength(N);
    const key = statScanKey(box)!.key;
    // Once the quiet time has passed, without another login, the scan is saved under the current key.
    await vi.waitFor(
      async () => {
        const text = await fs.readFile(path.join(box, 'poplar-scan.cache'), 'utf8').catch(() => '');
        expect(text.slice(0, text.indexOf('\n'))).toBe(`poplar-scan 2 ${N} ${key}`);
      },
      { timeout: 10_000, interval: 50 },
    );
    forgetRememberedScans();
    const { result, counted } = await count(login);
    expect(result).toEqual(first);
    expect(counted.listed).toEqual([]);
    expect(messageFiles(counted)).toEqual([]);
    expect(counted.measured).toBe(0);
  }, 30_000);

  it("told of the sibling's saved scan, the worker loads it before its first login, which then reads and lists nothing", async () => {
    await bigDrop('cur');
    await new Promise((r) => setTimeout(r, 250));
    const announced: [string, string][] = [];
    const stop = onSavedScan((dir, key) => announced.push([dir, key]));
    let first: string[];
    try {
      first = await login();
    } finally {
      stop();
    }
    expect(announced).toEqual([[box, statScanKey(box)!.key]]);
    forgetRememberedScans();
    // What the primary passes on to the other workers (src/cli/scan-sharing.ts).
    const [[dir, key]] = announced as [[string, string]];
    expect(await preloadSavedScan(dir, key)).toBe(true);
    const { result, counted } = await count(login);
    expect(result).toEqual(first);
    expect(counted).toEqual({ listed: [], read: [], measured: 0 });
  }, 30_000);

  it('a login that comes while the announced scan is still being loaded waits for that read instead of reading the file again', async () => {
    await bigDrop('cur');
    await new Promise((r) => setTimeout(r, 250));
    const first = await login();
    const key = statScanKey(box)!.key;
    forgetRememberedScans();
    const { result, counted } = await count(async () => {
      const preload = preloadSavedScan(box, key); // paced: a few thousand lines per turn of the event loop
      const seen = await login();
      expect(await preload).toBe(true);
      return seen;
    });
    expect(result).toEqual(first);
    expect(counted).toEqual({ listed: [], read: ['poplar-scan.cache'], measured: 0 });
  }, 30_000);

  it('an announcement for a maildrop that changed since, or a saved scan that is not trusted, loads nothing', async () => {
    await bigDrop('cur');
    await new Promise((r) => setTimeout(r, 250));
    const first = await login();
    const key = statScanKey(box)!.key;
    forgetRememberedScans();
    await fs.writeFile(path.join(box, 'new', '1799999999.M1P1.late'), 'Subject: late\r\n\r\nx\r\n');
    expect(await preloadSavedScan(box, key)).toBe(false); // new/ changed: the key is another
    expect(await login()).toHaveLength(N + 1);

    // A saved scan under the current key whose mode lets others write it: not loaded, left for a login to report.
    await new Promise((r) => setTimeout(r, 250));
    await login();
    const now = statScanKey(box)!.key;
    const file = path.join(box, 'poplar-scan.cache');
    await vi.waitFor(async () => expect((await fs.readFile(file, 'utf8')).startsWith(`poplar-scan 2 ${N + 1} ${now}\n`)).toBe(true));
    await fs.chmod(file, 0o666);
    forgetRememberedScans();
    expect(await preloadSavedScan(box, now)).toBe(false);
    expect(first).toHaveLength(N);
  }, 30_000);
});
