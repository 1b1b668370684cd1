import { closeSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MaildirSink } from '../../fetch/sinks/maildir.js';
import { MaildirStore } from './maildir-store.js';
import { publish, publishSync, writeTmp, writeTmpSync } from './writer.js';
import { silentLogger } from '../../observability/log.js';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-writer-'));
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, sub));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

const MSG = Buffer.from('Subject: a\r\n\r\nline one\r\nline two\r\n');
const ls = async (sub: string): Promise<string[]> => (await fs.readdir(path.join(dir, sub))).sort();

describe('the Maildir writer', () => {
  it('writes into tmp/, then links into new/ under a unique name with ,S= and ,W=, leaving tmp/ empty', async () => {
    const a = await writeTmp(dir, [MSG.subarray(0, 10), MSG.subarray(10)], { mode: 0o600, fsync: true });
    expect(await ls('new')).toEqual([]); // not visible before publish
    expect(await ls('tmp')).toEqual([a.base]);
    const final = await publish(a);
    expect(path.basename(final)).toBe(`${a.base},S=${MSG.length},W=${MSG.length}`);
    const b = writeTmpSync(dir, Buffer.from('x\ny\n'), 0o600);
    closeSync(b.fd); // the descriptor is the caller's to fsync and close
    expect(path.basename(publishSync(b))).toBe(`${b.base},S=4,W=6`);
    expect(await ls('tmp')).toEqual([]);
    expect((await ls('new')).length).toBe(2);
  });

  it('an abort while writing, or before the link, leaves nothing in tmp/ or new/', async () => {
    const ac = new AbortController();
    async function* slow(): AsyncGenerator<Buffer> {
      yield MSG;
      ac.abort();
      yield MSG;
    }
    await expect(writeTmp(dir, slow(), { mode: 0o600, fsync: false, signal: ac.signal })).rejects.toThrow();
    const m = await writeTmp(dir, [MSG], { mode: 0o600, fsync: false });
    await expect(publish(m, AbortSignal.abort())).rejects.toThrow();
    expect(await ls('tmp')).toEqual([]);
    expect(await ls('new')).toEqual([]);
  });

  it('the store and the fetch sink write the same way: a POP3 login sees both with their sizes from the name', async () => {
    const store = new MaildirStore({ root: path.dirname(dir), logger: silentLogger(), fsync: false });
    await store.deliver(path.basename(dir), MSG);
    const sink = new MaildirSink({ path: dir, fsync: true, lineEnding: 'crlf' });
    await sink.deliverBuffer(MSG, { account: 't', uidl: 'u', size: 0 });
    await sink.close();
    const names = await ls('new');
    expect(names).toHaveLength(2);
    for (const n of names) expect(n).toMatch(new RegExp(`^\\d+\\.M\\d+P${process.pid}Q\\d+R[0-9a-f]{8}\\..+,S=${MSG.length},W=${MSG.length}$`));
    const drop = await store.open({ username: path.basename(dir) });
    expect(drop.messages.map((m) => m.size)).toEqual([MSG.length, MSG.length]);
    await drop.release();
  });
});
