import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../observability/log.js';
import { forgetLastRememberedMessage, forgetRememberedScans, MaildirStore } from './maildir-store.js';
import { compareMaildirNames } from './names.js';

let root: string;
let store: MaildirStore;
beforeEach(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cache-'));
  store = new MaildirStore({ root, logger: silentLogger(), fsync: false });
});
afterEach(() => fs.rm(root, { recursive: true, force: true }));

const quiet = (): Promise<void> => new Promise((r) => setTimeout(r, 2100));

async function uidls(): Promise<string[]> {
  const m = await store.open({ username: 'u' });
  try {
    return m.messages.map((x) => x.uidl);
  } finally {
    await m.release();
  }
}

describe('remembered maildrop scans never hide a change', () => {
  it('sees removals, deliveries and renames by other processes after a remembered scan', async () => {
    for (let i = 0; i < 3; i++) await store.deliver('u', Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    const first = await uidls();
    expect(first).toHaveLength(3);
    await quiet();
    expect(await uidls()).toEqual(first); // remembered now
    expect(await uidls()).toEqual(first); // and reused

    const cur = path.join(root, 'u', 'cur');
    // UIDs were given in Dovecot's name order (seconds, then microseconds as numbers), which a
    // plain string sort does not follow when the microseconds differ in length.
    const files = (await fs.readdir(cur)).sort(compareMaildirNames);
    await fs.unlink(path.join(cur, files[0]!));
    expect(await uidls()).toEqual(first.slice(1));

    await quiet();
    await uidls();
    await fs.writeFile(path.join(root, 'u', 'new', '1999999999.M1P1.other'), 'Subject: new\r\n\r\nx\r\n');
    const withNew = await uidls();
    expect(withNew).toHaveLength(3);
    expect(withNew.slice(0, 2)).toEqual(first.slice(1));

    await quiet();
    await uidls();
    // Another reader sets a flag: the file is renamed; the message keeps its UIDL and can be read.
    const [f] = (await fs.readdir(cur)).sort();
    await fs.rename(path.join(cur, f!), path.join(cur, `${f!.split(':')[0]}:2,RS`));
    const m = await store.open({ username: 'u' });
    expect(m.messages.map((x) => x.uidl)).toEqual(withNew);
    const chunks: Buffer[] = [];
    for await (const c of await m.read(0)) chunks.push(c as Buffer);
    expect(Buffer.concat(chunks).toString()).toMatch(/^Subject: /);
    await m.release();
  }, 20_000);

  it('with fine timestamps a scan is remembered after 100 ms of quiet, and a change at once after it is still seen', async () => {
    for (let i = 0; i < 3; i++) await store.deliver('u', Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    await uidls();
    await new Promise((r) => setTimeout(r, 250));
    await uidls(); // remembered now (ext4/tmpfs timestamps are finer than a second)
    const readdir = vi.spyOn(fs, 'readdir');
    try {
      expect(await uidls()).toHaveLength(3);
      expect(readdir).not.toHaveBeenCalled();
    } finally {
      readdir.mockRestore();
    }
    // Deliveries right after a scan, again and again: each is seen by the very next open.
    for (let i = 0; i < 30; i++) {
      await store.deliver('u', Buffer.from(`Subject: more ${i}\r\n\r\nx\r\n`));
      expect(await uidls()).toHaveLength(4 + i);
    }
  }, 20_000);

  it('a scan taken while the maildrop changed is confirmed by one listing after the quiet time, not scanned again', async () => {
    for (let i = 0; i < 3; i++) await store.deliver('u', Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    const first = await uidls(); // moves new/ to cur/ and writes the uidlist: not quiet
    await new Promise((r) => setTimeout(r, 250));
    const readFile = vi.spyOn(fs, 'readFile');
    const readdir = vi.spyOn(fs, 'readdir');
    try {
      expect(await uidls()).toEqual(first);
      expect(readFile).not.toHaveBeenCalled(); // no uidlist read: no scan
      expect(readdir.mock.calls.map((c) => path.basename(String(c[0]))).sort()).toEqual(['cur', 'new']);
      readdir.mockClear();
      expect(await uidls()).toEqual(first);
      expect(readdir).not.toHaveBeenCalled(); // confirmed: trusted like a quiet scan
    } finally {
      readFile.mockRestore();
      readdir.mockRestore();
    }
  }, 20_000);

  it('a first login that only had to write the uidlist is remembered at once, and a file added afterwards is still seen', async () => {
    const box = path.join(root, 'u');
    for (const d of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, d), { recursive: true });
    for (let i = 0; i < 5; i++) await fs.writeFile(path.join(box, 'cur', `${1_700_000_000 + i}.M${i}P1.host:2,S`), `Subject: ${i}\r\n\r\nx\r\n`);
    await new Promise((r) => setTimeout(r, 250)); // cur/ and new/ quiet; no uidlist yet
    const first = await uidls(); // measures every file, gives UIDs, writes the uidlist
    const readdir = vi.spyOn(fs, 'readdir');
    try {
      expect(await uidls()).toEqual(first);
      expect(readdir).not.toHaveBeenCalled();
    } finally {
      readdir.mockRestore();
    }
    // A delivery right after: the very next login sees it.
    await fs.writeFile(path.join(box, 'cur', '1700000099.M9P1.host:2,'), 'Subject: late\r\n\r\ny\r\n');
    expect(await uidls()).toHaveLength(6);
  }, 20_000);

  it('a scan during which another process rewrote the uidlist is not remembered at all', async () => {
    for (let i = 0; i < 3; i++) await store.deliver('u', Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    await uidls();
    await new Promise((r) => setTimeout(r, 250));
    const before = await uidls();
    forgetRememberedScans(); // the next open scans: cur/ and new/ have long been quiet
    const list = path.join(root, 'u', 'dovecot-uidlist');
    const original = fs.open.bind(fs);
    let rewritten = false;
    // Right after this scan has opened the uidlist (it reads the file it opened), "another server"
    // rebuilds it under a new UIDVALIDITY (write and rename, as Dovecot does): every UIDL changes.
    const spy = vi.spyOn(fs, 'open').mockImplementation((async (...args: Parameters<typeof fs.open>) => {
      const fh = await original(...args);
      if (!rewritten && String(args[0]) === list) {
        rewritten = true;
        const t = await fs.readFile(list, 'utf8');
        const v = Number(/ V(\d+)/.exec(t)![1]);
        await fs.writeFile(`${list}.other`, t.replace(/ V\d+/, ` V${v + 1}`));
        await fs.rename(`${list}.other`, list);
      }
      return fh;
    }) as typeof fs.open);
    try {
      expect(await uidls()).toEqual(before); // this session's snapshot: what it read
    } finally {
      spy.mockRestore();
    }
    expect(rewritten).toBe(true);
    await new Promise((r) => setTimeout(r, 250));
    const after = await uidls();
    expect(after).toHaveLength(3);
    for (let i = 0; i < 3; i++) expect(after[i]).not.toBe(before[i]); // the rebuilt list, not the remembered scan
  }, 20_000);

  it('an unconfirmed scan whose files differ from the listing is not used', async () => {
    for (let i = 0; i < 3; i++) await store.deliver('u', Buffer.from(`Subject: ${i}\r\n\r\nbody\r\n`));
    const first = await uidls();
    // As if a message had arrived within the scan's last timestamp tick and the scan had missed it.
    expect(forgetLastRememberedMessage(path.join(root, 'u'))).toBe(true);
    await new Promise((r) => setTimeout(r, 250));
    expect(await uidls()).toEqual(first);
    // Before the quiet time has passed, the unconfirmed scan is not even listed against: it is rescanned.
    for (let i = 0; i < 5; i++) {
      await store.deliver('u', Buffer.from(`Subject: more ${i}\r\n\r\nx\r\n`));
      const all = await uidls();
      expect(all).toHaveLength(4 + i);
      forgetLastRememberedMessage(path.join(root, 'u'));
      expect(await uidls()).toEqual(all);
    }
  }, 20_000);

  describe('the scan saved in a big maildrop (poplar-scan.cache) for other processes', () => {
    const N = 1200;
    async function bigDrop(): Promise<void> {
      const box = path.join(root, 'u');
      for (const d of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, d), { recursive: true });
      await Promise.all(Array.from({ length: N }, (_, i) => fs.writeFile(path.join(box, 'new', `${1_700_000_000 + i}.M${i}P1.big`), `Subject: ${i}\r\n\r\n${'x'.repeat(i % 50)}\r\n`)));
    }
    const snapshot = async (): Promise<string[]> => {
      const m = await store.open({ username: 'u' });
      try {
        return m.messages.map((x) => `${x.uidl} ${x.size}`);
      } finally {
        await m.release();
      }
    };

    it('is written after a quiet scan and read by a process that has not scanned, without listing the directory', async () => {
      await bigDrop();
      const first = await snapshot();
      expect(first).toHaveLength(N);
      await new Promise((r) => setTimeout(r, 250));
      await snapshot(); // quiet now: remembered, and saved
      await vi.waitFor(async () => expect((await fs.readdir(path.join(root, 'u'))).includes('poplar-scan.cache')).toBe(true));
      forgetRememberedScans();
      const readdir = vi.spyOn(fs, 'readdir');
      try {
        expect(await snapshot()).toEqual(first);
        expect(readdir).not.toHaveBeenCalled();
      } finally {
        readdir.mockRestore();
      }
    }, 30_000);

    it('is written through no link planted in the maildrop', async () => {
      await bigDrop();
      const victim = path.join(root, 'victim.txt');
      await fs.writeFile(victim, 'precious\n');
      // The temporary name once was predictable: <cache>.<pid>.tmp.
      await fs.symlink(victim, path.join(root, 'u', `poplar-scan.cache.${process.pid}.tmp`));
      await snapshot();
      await new Promise((r) => setTimeout(r, 250));
      await snapshot();
      const cache = path.join(root, 'u', 'poplar-scan.cache');
      await vi.waitFor(async () => expect((await fs.lstat(cache)).isFile()).toBe(true));
      expect(await fs.readFile(victim, 'utf8')).toBe('precious\n');
      expect((await fs.readFile(cache, 'utf8')).split('\n')).toHaveLength(N + 2);
    }, 30_000);

    it('is ignored once the maildrop changed, and when it is damaged', async () => {
      await bigDrop();
      await snapshot();
      await new Promise((r) => setTimeout(r, 250));
      const saved = await snapshot();
      await vi.waitFor(async () => expect((await fs.readdir(path.join(root, 'u'))).includes('poplar-scan.cache')).toBe(true));
      const file = path.join(root, 'u', 'poplar-scan.cache');

      // A new message: the key no longer matches; a fresh process sees the message.
      await store.deliver('u', Buffer.from('Subject: new\r\n\r\nx\r\n'));
      forgetRememberedScans();
      expect(await snapshot()).toHaveLength(N + 1);

      // A file with the current key but a torn body: scanned instead, nothing lost.
      await new Promise((r) => setTimeout(r, 250));
      const now = await snapshot();
      await vi.waitFor(async () => expect((await fs.readFile(file, 'utf8')).split('\n').length).toBe(N + 3));
      const text = await fs.readFile(file, 'utf8');
      await fs.writeFile(file, text.slice(0, Math.floor(text.length / 2)));
      forgetRememberedScans();
      expect(await snapshot()).toEqual(now);
      // Cut at a line end (a crash before the data reached the disk): fewer lines than the header says.
      await fs.writeFile(file, text.slice(0, text.indexOf('\n', Math.floor(text.length / 2)) + 1));
      forgetRememberedScans();
      expect(await snapshot()).toEqual(now);
      // And one whose lines are garbage under the right key.
      await fs.writeFile(file, `${text.slice(0, text.indexOf('\n') + 1)}not a line\n`);
      forgetRememberedScans();
      expect(await snapshot()).toEqual(now);
      expect(saved).toHaveLength(N);
    }, 30_000);
  });
});
