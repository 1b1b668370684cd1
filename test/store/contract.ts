/**
 * The store contract: what the POP3 server relies on from any MailStore,
 * run against every store (maildir.contract.test.ts, postgres.contract.test.ts).
 */
import { Readable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { InUseError } from '../../src/errors.js';
import { crlfSize } from '../../src/protocol/message-size.js';
import type { MailStore, Maildrop } from '../../src/store/types.js';

export interface ContractStore {
  readonly store: MailStore;
  /** Makes every message of `user` first retrieved `days` days earlier than recorded. */
  age(user: string, days: number): Promise<void>;
  close(): Promise<void>;
}

const UIDL = /^[\x21-\x7e]{1,70}$/;

async function bytes(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export function storeContract(name: string, make: () => Promise<ContractStore>): void {
  describe(`store contract: ${name}`, () => {
    let n = 0;
    const opened: ContractStore[] = [];
    const fresh = async (): Promise<{ s: ContractStore; store: MailStore; user: string }> => {
      const s = await make();
      opened.push(s);
      return { s, store: s.store, user: `user${n++}` };
    };
    const open = (store: MailStore, user: string): Promise<Maildrop> => store.open({ username: user });
    const readAll = async (md: Maildrop, i: number): Promise<Buffer> => bytes(await md.read(i));
    afterAll(async () => {
      for (const s of opened) await s.close();
    });

    it('lists a delivered message with its CRLF size and a valid UIDL, and reads back the exact bytes', async () => {
      const { store, user } = await fresh();
      const raw = Buffer.from('Subject: one\nFrom: a@example.org\n\nbody line\n.starts with a dot\n');
      await store.deliver(user, raw);
      const md = await open(store, user);
      try {
        expect(md.messages).toHaveLength(1);
        expect(md.messages[0]!.size).toBe(crlfSize(raw));
        expect(md.messages[0]!.size).toBe(raw.length + 5);
        expect(md.messages[0]!.uidl).toMatch(UIDL);
        expect(await readAll(md, 0)).toEqual(raw);
      } finally {
        await md.release();
      }
    });

    it('keeps messages in delivery order', async () => {
      const { store, user } = await fresh();
      for (let i = 0; i < 5; i++) await store.deliver(user, Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`));
      const md = await open(store, user);
      try {
        for (let i = 0; i < 5; i++) expect((await readAll(md, i)).toString()).toBe(`Subject: ${i}\r\n\r\n${i}\r\n`);
      } finally {
        await md.release();
      }
    });

    it('serves an empty maildrop (a user who never got mail)', async () => {
      const { store, user } = await fresh();
      const md = await open(store, user);
      expect(md.messages).toEqual([]);
      await md.commit([], { retrieved: [] });
      await md.release();
    });

    it('keeps UIDLs across sessions and never gives a removed message\'s UIDL to a new one', async () => {
      const { store, user } = await fresh();
      await store.deliver(user, Buffer.from('Subject: a\r\n\r\na\r\n'));
      await store.deliver(user, Buffer.from('Subject: b\r\n\r\nb\r\n'));
      let md = await open(store, user);
      const first = md.messages.map((m) => m.uidl);
      expect(new Set(first).size).toBe(2);
      await md.release();
      md = await open(store, user);
      expect(md.messages.map((m) => m.uidl)).toEqual(first);
      await md.commit([1]);
      await md.release();
      // The same bytes again: a new message, with a new UIDL.
      await store.deliver(user, Buffer.from('Subject: b\r\n\r\nb\r\n'));
      md = await open(store, user);
      try {
        const now = md.messages.map((m) => m.uidl);
        expect(now).toHaveLength(2);
        expect(now[0]).toBe(first[0]);
        expect(first).not.toContain(now[1]);
        expect((await readAll(md, 1)).toString()).toBe('Subject: b\r\n\r\nb\r\n');
      } finally {
        await md.release();
      }
    });

    it('commit removes exactly the marked messages', async () => {
      const { store, user } = await fresh();
      for (let i = 0; i < 6; i++) await store.deliver(user, Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`));
      let md = await open(store, user);
      const uidls = md.messages.map((m) => m.uidl);
      await md.commit([0, 2, 5]);
      await md.release();
      md = await open(store, user);
      try {
        expect(md.messages.map((m) => m.uidl)).toEqual([uidls[1], uidls[3], uidls[4]]);
        expect((await readAll(md, 1)).toString()).toBe('Subject: 3\r\n\r\n3\r\n');
      } finally {
        await md.release();
      }
    });

    it('refuses a second open while the first session holds the maildrop, and lets the next one in after release', async () => {
      const { store, user } = await fresh();
      await store.deliver(user, Buffer.from('Subject: x\r\n\r\nx\r\n'));
      const md = await open(store, user);
      await expect(open(store, user)).rejects.toBeInstanceOf(InUseError);
      await md.release();
      const again = await open(store, user);
      expect(again.messages).toHaveLength(1);
      await again.release();
    });

    it('a message delivered during a session appears in the next session, not in this one', async () => {
      const { store, user } = await fresh();
      await store.deliver(user, Buffer.from('Subject: 1\r\n\r\n1\r\n'));
      const md = await open(store, user);
      await store.deliver(user, Buffer.from('Subject: 2\r\n\r\n2\r\n'));
      expect(md.messages).toHaveLength(1);
      await md.commit([0]);
      await md.release();
      const next = await open(store, user);
      try {
        expect(next.messages).toHaveLength(1);
        expect((await readAll(next, 0)).toString()).toBe('Subject: 2\r\n\r\n2\r\n');
      } finally {
        await next.release();
      }
    });

    it('EXPIRE removes messages first retrieved longer ago than the limit, and nothing else', async () => {
      const { s, store, user } = await fresh();
      for (let i = 0; i < 3; i++) await store.deliver(user, Buffer.from(`Subject: ${i}\r\n\r\n${i}\r\n`));
      let md = await open(store, user);
      const uidls = md.messages.map((m) => m.uidl);
      await readAll(md, 0);
      await md.commit([], { retrieved: [0] });
      await md.release();
      // Retrieved now: not expired under a 1-day limit.
      md = await open(store, user);
      await md.commit([], { expireDays: 1 });
      await md.release();
      md = await open(store, user);
      expect(md.messages.map((m) => m.uidl)).toEqual(uidls);
      await md.release();
      await s.age(user, 3);
      // Message 2 is retrieved in this session: it stays whatever the limit.
      md = await open(store, user);
      await md.commit([], { retrieved: [1], expireDays: 1 });
      await md.release();
      md = await open(store, user);
      try {
        expect(md.messages.map((m) => m.uidl)).toEqual([uidls[1], uidls[2]]);
      } finally {
        await md.release();
      }
    });

    it('stores 8-bit, binary and very long lines byte for byte', async () => {
      const { store, user } = await fresh();
      const all = Buffer.alloc(256 * 4);
      for (let i = 0; i < all.length; i++) all[i] = i % 256;
      const eightBit = Buffer.concat([Buffer.from('Subject: =?utf-8?q?x?=\r\nContent-Transfer-Encoding: 8bit\r\n\r\n'), Buffer.from('Grüße, ünïcödé ✓\r\n'), all, Buffer.from('\r\n')]);
      const longLine = Buffer.concat([Buffer.from('Subject: long\r\n\r\n'), Buffer.alloc(3 * 1024 * 1024 + 17, 0x61), Buffer.from('\n.\r\n..\r\nend')]);
      const bare = Buffer.from('Subject: cr\r\n\r\na\rb\n\rc\r');
      for (const m of [eightBit, longLine, bare]) await store.deliver(user, m);
      const md = await open(store, user);
      try {
        expect(md.messages.map((m) => m.size)).toEqual([eightBit, longLine, bare].map(crlfSize));
        expect((await readAll(md, 0)).equals(eightBit)).toBe(true);
        expect((await readAll(md, 1)).equals(longLine)).toBe(true);
        expect((await readAll(md, 2)).equals(bare)).toBe(true);
      } finally {
        await md.release();
      }
    });

    it('delivers from a stream in odd-sized pieces', async () => {
      const { store, user } = await fresh();
      const parts = [Buffer.from('Subject: s\r\n'), Buffer.alloc(70_001, 0x62), Buffer.from('\r\n'), Buffer.alloc(400_000, 0x63), Buffer.from('\r\n')];
      await store.deliver(user, Readable.from(parts));
      const md = await open(store, user);
      try {
        expect((await readAll(md, 0)).equals(Buffer.concat(parts))).toBe(true);
      } finally {
        await md.release();
      }
    });

    it('a delivery that fails halfway leaves nothing behind', async () => {
      const { store, user } = await fresh();
      async function* broken(): AsyncGenerator<Buffer> {
        yield Buffer.from('Subject: half\r\n\r\n');
        yield Buffer.alloc(600_000, 0x61);
        throw new Error('connection to the MTA lost');
      }
      await expect(store.deliver(user, Readable.from(broken()))).rejects.toThrow();
      const md = await open(store, user);
      expect(md.messages).toEqual([]);
      await md.release();
    });
  });
}
