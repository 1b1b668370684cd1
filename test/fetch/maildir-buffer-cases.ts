/**
 * MaildirSink.deliverBuffer and group flush, run twice: with the native
 * write path (native/maildirwrite.c; sinks-maildir.test.ts) and with the
 * JavaScript one (POPLAR_NO_NATIVE=1; sinks-maildir-js.test.ts). Both must
 * give the same files under the same names, sync every file before flush
 * resolves, close every descriptor, and take a group back when an fsync fails.
 */
import fsSync, { promises as fs } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { MaildirSink } from '../../src/fetch/sinks/maildir.js';
import type { DeliveryInfo } from '../../src/fetch/sinks/types.js';
import { native, type NativeCodec } from '../../src/protocol/native.js';
import { crlfSize } from '../../src/protocol/message-size.js';

const info = (extra: Partial<DeliveryInfo> = {}): DeliveryInfo => ({ account: 'acct', uidl: 'u1', size: 0, ...extra });

const MSG = Buffer.from('Return-Path: <a@example.org>\r\nSubject: hi\r\n\r\nline one\r\n.dot line\r\nbare\rCR\r\nlast', 'latin1');
const MSG_LF = Buffer.from('Return-Path: <a@example.org>\nSubject: hi\n\nline one\n.dot line\nbare\rCR\nlast', 'latin1');

async function list(dir: string): Promise<string[]> {
  return (await fs.readdir(dir)).sort();
}

/** Whether `fd` is still an open descriptor. */
function isOpen(fd: number): boolean {
  try {
    fsSync.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** The native write path is used (the module is built and not switched off). */
export const nativeWrites = native?.writeMessage !== undefined && native.fsyncClose !== undefined;

export function deliverBufferCases(dirs: () => { root: string; box: string }): void {
  describe(`deliverBuffer (a message already in memory; ${nativeWrites ? 'native' : 'JavaScript'} write path)`, () => {
    it('writes the same file, under the same kind of name, as deliver', async () => {
      const { root, box } = dirs();
      const sink = new MaildirSink({ path: box, fsync: false });
      await sink.deliver(Readable.from([MSG]), info());
      await sink.deliverBuffer(MSG, info({ uidl: 'u2' }));
      const names = await list(path.join(box, 'new'));
      expect(names).toHaveLength(2);
      for (const n of names) {
        expect(n).toMatch(/^\d+\.M\d+P\d+Q\d+R[0-9a-f]+\..+,S=\d+,W=\d+$/);
        expect(n.endsWith(`,S=${MSG_LF.length},W=${crlfSize(MSG)}`)).toBe(true);
        expect((await fs.readFile(path.join(box, 'new', n))).equals(MSG_LF)).toBe(true);
      }
      expect(await list(path.join(box, 'tmp'))).toEqual([]);
      const crlf = new MaildirSink({ path: path.join(root, 'crlf'), lineEnding: 'crlf', fsync: false });
      await crlf.deliverBuffer(MSG, info());
      const [name] = await list(path.join(root, 'crlf', 'new'));
      expect((await fs.readFile(path.join(root, 'crlf', 'new', name!))).equals(MSG)).toBe(true);
      expect(name).toContain(`,S=${MSG.length},W=${MSG.length}`);
    });

    it('stores odd line ends exactly as the streamed delivery does (CR before LF dropped, bare CR and LF kept), with the same ,S= and ,W=', async () => {
      const { root } = dirs();
      const inputs = ['', '\r', '\n', '\r\n', 'a\r\r\n', '\r\n\r\n', 'x\ry', 'end\r', '\n\r\nmid\nlf\r\n\r', 'a\r\n'.repeat(5000)];
      for (const [mode, fsync] of [['group', 'group'], ['none', false]] as const) {
        for (const lineEnding of ['lf', 'crlf'] as const) {
          const streamed = new MaildirSink({ path: path.join(root, `s-${mode}-${lineEnding}`), fsync, lineEnding });
          const buffered = new MaildirSink({ path: path.join(root, `b-${mode}-${lineEnding}`), fsync, lineEnding });
          for (const input of inputs) {
            const b = Buffer.from(input, 'latin1');
            await streamed.deliver(Readable.from(b.length > 0 ? [b] : []), info());
            await buffered.deliverBuffer(b, info());
          }
          await streamed.flush();
          await buffered.flush();
          const read = async (dir: string): Promise<string[]> =>
            Promise.all(
              (await fs.readdir(path.join(root, dir, 'new'))).map(async (n) => `${n.slice(n.indexOf(',S='))} ${JSON.stringify((await fs.readFile(path.join(root, dir, 'new', n))).toString('latin1'))}`),
            ).then((x) => x.sort());
          expect(await read(`b-${mode}-${lineEnding}`)).toEqual(await read(`s-${mode}-${lineEnding}`));
          expect(await list(path.join(root, `b-${mode}-${lineEnding}`, 'tmp'))).toEqual([]);
        }
      }
    });

    it('fsync true: file and new/ synced before it resolves; group: each file synced once at flush through its open descriptor, which is then closed', async () => {
      const { root, box } = dirs();
      await fs.mkdir(box);
      for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub));
      const probe = await fs.open(path.join(root, 'probe'), 'w');
      const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
      await probe.close();
      const dirSync = vi.spyOn(proto, 'sync');
      const fdSync = vi.spyOn(fsSync, 'fsync');
      const fdClose = vi.spyOn(fsSync, 'closeSync');
      const nativeSync = nativeWrites ? vi.spyOn(native as Required<NativeCodec>, 'fsyncClose') : undefined;
      const synced = (): number => fdSync.mock.calls.length + (nativeSync?.mock.calls.reduce((n, [fds]) => n + fds.length, 0) ?? 0);

      const perMessage = new MaildirSink({ path: box });
      await perMessage.deliverBuffer(MSG, info());
      expect(synced()).toBe(1); // the file
      expect(dirSync).toHaveBeenCalledTimes(1); // new/

      fdSync.mockClear();
      nativeSync?.mockClear();
      dirSync.mockClear();
      fdClose.mockClear();
      const open = vi.spyOn(fsSync, 'openSync');
      const group = new MaildirSink({ path: box, fsync: 'group' });
      for (let i = 0; i < 5; i++) await group.deliverBuffer(MSG, info({ uidl: `g${i}` }));
      expect(synced()).toBe(0);
      expect(dirSync).not.toHaveBeenCalled();
      expect(group.pending).toBe(5);
      const fds = nativeWrites ? [] : open.mock.results.map((r) => r.value as number);
      await group.flush();
      expect(synced()).toBe(5);
      expect(dirSync).toHaveBeenCalledTimes(1); // new/ once
      if (nativeWrites) {
        for (const [batch] of nativeSync!.mock.calls) fds.push(...batch);
      } else {
        expect(fdClose).toHaveBeenCalledTimes(5);
      }
      expect(fds).toHaveLength(5);
      for (const fd of fds) expect(isOpen(fd)).toBe(false); // no descriptor left open
      expect(group.pending).toBe(0);
      await group.close();
    });

    it('a failed fsync at flush takes every pending message back and closes their descriptors', async () => {
      const { box } = dirs();
      const group = new MaildirSink({ path: box, fsync: 'group' });
      for (let i = 0; i < 3; i++) await group.deliverBuffer(MSG, info({ uidl: `g${i}` }));
      expect(await list(path.join(box, 'new'))).toHaveLength(3);
      const fds: number[] = [];
      if (nativeWrites) {
        const real = native!.fsyncClose!.bind(native);
        let calls = 0;
        vi.spyOn(native as Required<NativeCodec>, 'fsyncClose').mockImplementation(async (batch: Int32Array) => {
          fds.push(...batch);
          const errs = await real(batch);
          if (++calls === 2) errs[0] = 5; // EIO
          return errs;
        });
      } else {
        let calls = 0;
        const real = fsSync.fsync;
        vi.spyOn(fsSync, 'fsync').mockImplementation(((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
          fds.push(fd);
          if (++calls === 2) cb(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
          else real(fd, cb);
        }) as typeof fsSync.fsync);
      }
      await expect(group.flush()).rejects.toThrow(/EIO/);
      expect(await list(path.join(box, 'new'))).toEqual([]);
      expect(fds).toHaveLength(3);
      for (const fd of fds) expect(isOpen(fd)).toBe(false);
      expect(group.pending).toBe(0);
    });

    it('a file that cannot be created rejects and leaves nothing in new/', async () => {
      const { box } = dirs();
      await fs.mkdir(path.join(box, 'new'), { recursive: true });
      await fs.mkdir(path.join(box, 'cur'));
      await fs.writeFile(path.join(box, 'tmp'), 'not a directory');
      for (const fsync of [true, 'group', false] as const) {
        const sink = new MaildirSink({ path: box, fsync });
        await expect(sink.deliverBuffer(MSG, info())).rejects.toThrow(/ENOTDIR/);
        await expect(sink.deliverBuffer(MSG, info())).rejects.toMatchObject({ code: 'ENOTDIR', syscall: 'open' });
        await sink.flush();
        expect(await list(path.join(box, 'new'))).toEqual([]);
      }
    });

    it('a message that cannot be linked into new/ rejects and leaves nothing in tmp/ or new/', async () => {
      const { box } = dirs();
      await fs.mkdir(path.join(box, 'tmp'), { recursive: true });
      await fs.mkdir(path.join(box, 'cur'));
      await fs.writeFile(path.join(box, 'new'), 'not a directory');
      for (const fsync of ['group', false] as const) {
        const sink = new MaildirSink({ path: box, fsync });
        await expect(sink.deliverBuffer(MSG, info())).rejects.toThrow(/ENOTDIR/);
        expect(await list(path.join(box, 'tmp'))).toEqual([]);
        expect(sink.pending).toBe(0);
      }
    });

    it('an aborted signal rejects before anything is written', async () => {
      const { root, box } = dirs();
      const sink = new MaildirSink({ path: box });
      const ac = new AbortController();
      ac.abort(new Error('stop'));
      await expect(sink.deliverBuffer(MSG, info(), ac.signal)).rejects.toThrow(/stop/);
      expect(await list(root)).toEqual([]); // not even the Maildir
    });
  });
}
