import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import fsSync, { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { MaildirSink } from '../../src/fetch/sinks/maildir.js';
import { SinkError } from '../../src/fetch/sinks/util.js';
import { CrlfToLf, crlfToLf } from '../../src/fetch/sinks/util.js';
import type { DeliveryInfo } from '../../src/fetch/sinks/types.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { silentLogger } from '../../src/observability/log.js';
import { crlfSize } from '../../src/protocol/message-size.js';
import { native } from '../../src/protocol/native.js';
import { deliverBufferCases, nativeWrites } from './maildir-buffer-cases.js';

let root: string;
let box: string;

beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-sink-md-'));
  box = path.join(root, 'Maildir');
});

afterEach(async () => {
  vi.restoreAllMocks();
  await fs.rm(root, { recursive: true, force: true });
});

const info = (extra: Partial<DeliveryInfo> = {}): DeliveryInfo => ({ account: 'acct', uidl: 'u1', size: 0, ...extra });

const MSG = Buffer.from('Return-Path: <a@example.org>\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\nbare\rCR\r\nlast', 'latin1');
const MSG_LF = Buffer.from('Return-Path: <a@example.org>\nSubject: hi\n\nline one\n.dot line\nbare\rCR\nlast', 'latin1');

/** The message in pieces of `size` octets (1: every CR apart from its LF). */
function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts);
}

/** A source that gives `first`, then fails. */
function failing(first: Buffer): Readable {
  return new Readable({
    read() {
      if (first.length > 0) {
        this.push(first);
        first = Buffer.alloc(0);
      } else {
        this.destroy(new Error('connection reset by the POP3 server'));
      }
    },
  });
}

async function list(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).sort();
}

describe('CrlfToLf', () => {
  it('drops only the CR of CRLF, across any chunk boundary', () => {
    const input = Buffer.from('a\r\nb\r\r\nc\rd\r\n\r\n\r', 'latin1');
    for (let size = 1; size <= input.length; size++) {
      const c = new CrlfToLf();
      const out: Buffer[] = [];
      for (let i = 0; i < input.length; i += size) out.push(c.push(input.subarray(i, i + size)));
      out.push(c.end());
      expect(Buffer.concat(out).toString('latin1')).toBe('a\nb\r\nc\rd\n\n\r');
    }
  });
});

describe('crlfToLf (a whole message)', () => {
  it('drops only the CR of CRLF, wherever it stands, and keeps bare CRs and LFs', () => {
    const cases: [string, string][] = [
      ['a\r\nb\r\r\nc\rd\r\n\r\n\r', 'a\nb\r\nc\rd\n\n\r'],
      ['\r\nfirst', '\nfirst'],
      ['\nLF first\r\n', '\nLF first\n'],
      ['no line end', 'no line end'],
      ['lf\nonly\n', 'lf\nonly\n'],
      ['\r\r\n\r', '\r\n\r'],
      ['', ''],
    ];
    for (const [input, want] of cases) expect(crlfToLf(Buffer.from(input, 'latin1')).toString('latin1')).toBe(want);
    const untouched = Buffer.from('nothing\nto do\n');
    expect(crlfToLf(untouched)).toBe(untouched); // no copy when there is no CRLF
  });
});

describe('MaildirSink', () => {
  it('stores LF line ends by default, named with ,S= (octets on disk) and ,W= (CRLF size), leaving tmp/ empty', async () => {
    const sink = new MaildirSink({ path: box });
    await sink.deliver(chunked(MSG, 1), info());
    const files = await list(path.join(box, 'new'));
    expect(files).toHaveLength(1);
    const name = files[0]!;
    expect(name).toMatch(/^\d+\.M\d+P\d+Q\d+R[0-9a-f]+\..+,S=\d+,W=\d+$/);
    const content = await fs.readFile(path.join(box, 'new', name));
    expect(content.equals(MSG_LF)).toBe(true);
    expect(name).toContain(`,S=${MSG_LF.length},`);
    expect(name.endsWith(`,W=${crlfSize(MSG)}`)).toBe(true);
    expect(await list(path.join(box, 'tmp'))).toEqual([]);
    expect(await list(path.join(box, 'cur'))).toEqual([]);
    await sink.close();
  });

  it("lineEnding 'crlf' stores exactly the bytes received", async () => {
    const sink = new MaildirSink({ path: box, lineEnding: 'crlf' });
    await sink.deliver(chunked(MSG, 7), info());
    const [name] = await list(path.join(box, 'new'));
    expect((await fs.readFile(path.join(box, 'new', name!))).equals(MSG)).toBe(true);
    expect(name).toContain(`,S=${MSG.length},W=${MSG.length}`);
  });

  it("Poplar's own Maildir store serves the delivered message with the right size and content", async () => {
    const sink = new MaildirSink({ path: box });
    await sink.deliver(Readable.from([MSG]), info());
    await sink.deliver(Readable.from([Buffer.from('Subject: 2\r\n\r\nsecond\r\n')]), info({ uidl: 'u2' }));
    const store = new MaildirStore({ root, logger: silentLogger() });
    const drop = await store.open({ username: 'Maildir' });
    try {
      expect(drop.messages.map((m) => m.size)).toEqual([crlfSize(MSG), crlfSize(Buffer.from('Subject: 2\r\n\r\nsecond\r\n'))]);
      const parts: Buffer[] = [];
      for await (const c of await drop.read(0)) parts.push(c as Buffer);
      expect(Buffer.concat(parts).equals(MSG_LF)).toBe(true);
    } finally {
      await drop.release();
    }
  });

  it('delivers into a Maildir++ sub-folder created on demand, with its maildirfolder marker', async () => {
    const sink = new MaildirSink({ path: box });
    await sink.deliver(Readable.from([MSG]), info({ folder: '.Lists.node' }));
    await sink.deliver(Readable.from([MSG]), info({ folder: 'Lists.node' })); // the leading dot may be left out
    const folder = path.join(box, '.Lists.node');
    expect(await list(folder)).toEqual(['cur', 'maildirfolder', 'new', 'tmp']);
    expect(await list(path.join(folder, 'new'))).toHaveLength(2);
    expect(await list(path.join(box, 'new'))).toEqual([]);
    // INBOX means the Maildir itself.
    await sink.deliver(Readable.from([MSG]), info({ folder: 'INBOX' }));
    expect(await list(path.join(box, 'new'))).toHaveLength(1);
  });

  it('refuses folder names that would leave the Maildir, writing nothing', async () => {
    const sink = new MaildirSink({ path: box });
    for (const folder of ['../evil', '..', '.a/b', '.a..b', '.x.', 'a\0b']) {
      const err = await sink.deliver(Readable.from([MSG]), info({ folder })).catch((e: unknown) => e);
      expect(err, folder).toBeInstanceOf(SinkError);
      expect((err as SinkError).temporary).toBe(false);
    }
    expect(await list(root)).toEqual([]);
  });

  it('a source that fails mid-message leaves nothing in new/ and cleans tmp/', async () => {
    const sink = new MaildirSink({ path: box });
    await expect(sink.deliver(failing(Buffer.alloc(100_000, 'x')), info())).rejects.toThrow(/connection reset/);
    expect(await list(path.join(box, 'new'))).toEqual([]);
    expect(await list(path.join(box, 'tmp'))).toEqual([]);
  });

  it('an abort while the source is silent rejects at once and leaves nothing', async () => {
    const sink = new MaildirSink({ path: box });
    const source = new PassThrough();
    source.write(Buffer.alloc(10_000, 'y'));
    const ac = new AbortController();
    const p = sink.deliver(source, info(), ac.signal);
    await new Promise((r) => setTimeout(r, 50));
    ac.abort();
    await expect(p).rejects.toMatchObject({ name: 'AbortError' });
    expect(await list(path.join(box, 'new'))).toEqual([]);
    expect(await list(path.join(box, 'tmp'))).toEqual([]);
    // An already aborted signal does not even create the Maildir.
    await fs.rm(box, { recursive: true });
    await expect(sink.deliver(Readable.from([MSG]), info(), AbortSignal.abort())).rejects.toMatchObject({ name: 'AbortError' });
    expect(await list(root)).toEqual([]);
  });

  it('create: false refuses a missing Maildir (temporary) and creates nothing', async () => {
    const sink = new MaildirSink({ path: box, create: false });
    const err = await sink.deliver(Readable.from([MSG]), info()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SinkError);
    expect((err as SinkError).temporary).toBe(true);
    expect(await list(root)).toEqual([]);
  });

  it('fsync true: each delivery syncs its file and new/; group: nothing until flush, then every file and each directory once', async () => {
    // Count fsync calls on any FileHandle.
    const probe = await fs.open(path.join(root, 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const sync = vi.spyOn(proto, 'sync');

    await fs.mkdir(box);
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub));
    const perMessage = new MaildirSink({ path: box });
    await perMessage.deliver(Readable.from([MSG]), info());
    expect(sync).toHaveBeenCalledTimes(2); // the file, then new/

    sync.mockClear();
    const group = new MaildirSink({ path: box, fsync: 'group' });
    for (let i = 0; i < 5; i++) await group.deliver(Readable.from([MSG]), info({ uidl: `g${i}` }));
    expect(sync).not.toHaveBeenCalled();
    expect(group.pending).toBe(5);
    expect(await list(path.join(box, 'new'))).toHaveLength(6); // visible already, durable only after flush
    await group.flush();
    expect(sync).toHaveBeenCalledTimes(6); // 5 files + new/ once
    expect(group.pending).toBe(0);

    // A new folder in group mode: its directories are synced at flush too (new/, the folder, the Maildir).
    sync.mockClear();
    await group.deliver(Readable.from([MSG]), info({ folder: '.Archive' }));
    expect(sync).not.toHaveBeenCalled();
    await group.flush();
    expect(sync).toHaveBeenCalledTimes(4);

    sync.mockClear();
    await group.flush(); // nothing pending: no work
    expect(sync).not.toHaveBeenCalled();
    await group.close();
  });

  it('a failed group flush takes every pending message back, so none counts as delivered', async () => {
    const group = new MaildirSink({ path: box, fsync: 'group' });
    for (let i = 0; i < 3; i++) await group.deliver(Readable.from([MSG]), info({ uidl: `g${i}` }));
    const files = await list(path.join(box, 'new'));
    expect(files).toHaveLength(3);
    // One file vanishes behind the sink's back (a user's mail reader, a full disk's EIO stands in).
    await fs.unlink(path.join(box, 'new', files[1]!));
    await expect(group.flush()).rejects.toThrow(/ENOENT/);
    expect(await list(path.join(box, 'new'))).toEqual([]);
    expect(group.pending).toBe(0);
  });

  it('close() flushes what group mode still holds, then refuses deliveries', async () => {
    const group = new MaildirSink({ path: box, fsync: 'group' });
    await group.deliver(Readable.from([MSG]), info());
    expect(group.pending).toBe(1);
    await group.close();
    expect(group.pending).toBe(0);
    await expect(group.deliver(Readable.from([MSG]), info())).rejects.toBeInstanceOf(SinkError);
  });

  it('concurrent deliveries get distinct names, in call order', async () => {
    const sink = new MaildirSink({ path: box, fsync: false });
    await Promise.all(Array.from({ length: 50 }, (_, i) => sink.deliver(Readable.from([Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`)]), info({ uidl: String(i) }))));
    expect(await list(path.join(box, 'new'))).toHaveLength(50);
  });

  it('uses the native write path where the module is built', () => {
    expect(nativeWrites).toBe(native !== undefined);
  });

  deliverBufferCases(() => ({ root, box }));
});
