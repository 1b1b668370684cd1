/**
 * Quotas in both stores: a message that would take a maildrop past its
 * limit (messages or octets as LIST counts them) is refused with
 * QuotaExceeded and leaves nothing; concurrent deliveries into the last free
 * room do not both get in (PostgreSQL: the check runs with the mailbox row
 * locked, inside the delivery's transaction; Maildir: one at a time per
 * maildrop within a process).
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { QuotaExceeded } from '../../src/errors.js';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import { maildropUsage } from '../../src/store/maildir/usage.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { migrateStore } from '../../src/store/postgres/migrations.js';
import type { MailStore } from '../../src/store/types.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';

const PG_DOWN = await lacksPostgres();
const cleanups: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function maildir(): Promise<MailStore> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-quota-'));
  cleanups.push(() => fs.rm(dir, { recursive: true, force: true }));
  return new MaildirStore({ root: dir, logger: silentLogger() });
}

async function postgres(): Promise<MailStore> {
  const schema = `poplar_quota_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1 });
  await admin.query(`CREATE SCHEMA ${schema}`);
  const pool = new pg.Pool({ ...POSTGRES_CONNECTION, max: 8, options: `-c search_path=${schema}` });
  await migrateStore(pool, () => undefined);
  const store = new PostgresStore(pool, { logger: silentLogger(), ownsPool: true, sweepIntervalMs: 0 });
  cleanups.push(async () => {
    await store.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
  });
  return store;
}

async function listing(store: MailStore, user: string): Promise<number[]> {
  const m = await store.open({ username: user });
  try {
    return m.messages.map((x) => x.size);
  } finally {
    await m.release();
  }
}

const msg = (n: number): Buffer => Buffer.from(`Subject: ${n}\n\n${'y'.repeat(40)}\n`); // 53 octets, 56 with CRLF

for (const [kind, make] of [['maildir', maildir], ['postgres', postgres]] as const) {
  describe.skipIf(kind === 'postgres' && PG_DOWN)(`quota in the ${kind} store`, () => {
    it('refuses the message that would pass the message or octet limit, counting CRLF octets', async () => {
      const store = await make();
      await store.deliver('a', msg(1), undefined, { quota: { bytes: 0, messages: 2 } });
      await store.deliver('a', msg(2), undefined, { quota: { bytes: 0, messages: 2 } });
      await expect(store.deliver('a', msg(3), undefined, { quota: { bytes: 0, messages: 2 } })).rejects.toBeInstanceOf(QuotaExceeded);
      expect(await listing(store, 'a')).toEqual([56, 56]);
      // 112 stored; 56 more fits in 168, not in 167.
      await expect(store.deliver('a', msg(4), undefined, { quota: { bytes: 167, messages: 0 } })).rejects.toBeInstanceOf(QuotaExceeded);
      await store.deliver('a', msg(4), undefined, { quota: { bytes: 168, messages: 0 } });
      expect(await listing(store, 'a')).toEqual([56, 56, 56]);
      // No quota: no limit.
      await store.deliver('a', msg(5));
      expect(await listing(store, 'a')).toHaveLength(4);
    });

    it('lets only as many concurrent deliveries in as there is room for', async () => {
      const store = await make();
      await store.deliver('b', msg(0));
      const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => store.deliver('b', msg(i + 1), undefined, { quota: { bytes: 0, messages: 3 } })));
      const ok = results.filter((r) => r.status === 'fulfilled').length;
      // Maildir: exact within one process (deliveries from other processes at the same moment may each still see room).
      expect(ok).toBe(2);
      for (const r of results) if (r.status === "rejected") expect(r.reason, String((r.reason as Error).cause)).toBeInstanceOf(QuotaExceeded);
      expect(await listing(store, 'b')).toHaveLength(1 + ok);
    });
  });
}

describe('Maildir usage', () => {
  it('counts new/ and cur/ from the ,W= in the names, stats the rest, and ignores tmp/', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-usage-'));
    for (const s of ['new', 'cur', 'tmp']) await fs.mkdir(path.join(dir, s));
    await fs.writeFile(path.join(dir, 'new', '1.M1P1.h,S=10,W=12'), 'not even ten');
    await fs.writeFile(path.join(dir, 'cur', '2.M2P2.h,S=5,W=1000:2,S'), 'x');
    await fs.writeFile(path.join(dir, 'cur', '3.M3P3.h:2,'), '12345');
    await fs.writeFile(path.join(dir, 'tmp', '4.M4P4.h'), 'ignored');
    expect(await maildropUsage(dir)).toEqual({ messages: 3, bytes: 12 + 1000 + 5 });
    expect(await maildropUsage(path.join(dir, 'missing'))).toEqual({ messages: 0, bytes: 0 });
    await fs.rm(dir, { recursive: true, force: true });
  });
});
