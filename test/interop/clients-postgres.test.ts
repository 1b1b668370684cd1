/**
 * Interoperability on the PostgreSQL store: the maildrop of clients.test.ts
 * (the edge corpus, the 5 MiB message, ordinary mail) delivered to a Maildir,
 * moved into a PostgreSQL store in a schema of its own through the migration
 * interfaces (Maildir openSource, PostgreSQL openTarget/add), and served from
 * there by a second server. Before the real clients (clients-suite.ts) fetch
 * it, a raw session on each server shows that both give the same STAT, LIST
 * and UIDL answers and the same bytes for RETR and TOP of every message.
 * The same messages delivered straight to the PostgreSQL store (as LMTP
 * does, in a stream cut into small pieces) give the same sizes and bytes too.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirMigration } from '../../src/store/maildir/migration.js';
import type { MigratedMessage } from '../../src/store/migration.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';
import { clientsSuite, PASSWORD, USER, type ClientsFixture } from './clients-suite.js';
import { deliverMaildrop, type DropMessage } from './maildrop.js';
import { capturingLogger, type LogRecord } from './run.js';

const PG_DOWN = await lacksPostgres();
const PG_URL = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;
const SCHEMA = `poplar_clients_${randomBytes(6).toString('hex')}`;
/** A second user whose maildrop gets the same messages through PostgresStore.deliver(). */
const DELIVERED = 'bob';

interface Setup extends ClientsFixture {
  /** The Maildir server the maildrop was migrated from (still serving it). */
  maildir: TestServer;
  pgStore: PostgresStore;
  /** What the migration source listed and what add() answered, message by message. */
  migrated: { message: MigratedMessage; result: 'added' | 'present' }[];
}

/** A message as a stream of small pieces (one octet each for small ones), so CR and LF arrive in different chunks. */
function pieces(raw: Buffer): Readable {
  const size = raw.length < 10_000 ? 1 : 65_521;
  const out: Buffer[] = [];
  for (let i = 0; i < raw.length; i += size) out.push(raw.subarray(i, i + size));
  return Readable.from(out);
}

async function bytes(s: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

let admin: pg.Pool | undefined;
let maildirServer: TestServer | undefined;
let pgServer: TestServer<PostgresStore> | undefined;
let pgStore: PostgresStore | undefined;

async function setup(): Promise<Setup> {
  const users = [{ name: USER, password: PASSWORD }];
  maildirServer = await startTestServer({ users });
  const drop = await deliverMaildrop(maildirServer, USER);

  admin = new pg.Pool({ ...POSTGRES_CONNECTION, max: 1 });
  await admin.query(`CREATE SCHEMA ${SCHEMA}`);
  const cap = capturingLogger();
  pgStore = await PostgresStore.open({ url: PG_URL, schema: SCHEMA, pool_size: 8 }, { logger: cap.logger, sweepIntervalMs: 0 });

  // The migration loop, through the interfaces `poplar migrate` uses.
  const source = await new MaildirMigration({ root: maildirServer.maildirRoot, logger: silentLogger(), fsync: false }).openSource(USER);
  const migrated: Setup['migrated'] = [];
  try {
    const target = await pgStore.openTarget(USER);
    try {
      for (const [i, message] of source.messages.entries()) {
        migrated.push({ message, result: await target.add(message, await bytes(await source.read(i))) });
      }
    } finally {
      await target.close();
    }
  } finally {
    await source.close();
  }

  for (const m of drop) await pgStore.deliver(DELIVERED, pieces(m.raw));

  pgServer = await startTestServer({ users: [...users, { name: DELIVERED, password: PASSWORD }], logger: cap.logger, store: pgStore });
  // Both describes share this setup; the file's afterAll stops everything.
  return { srv: pgServer, drop, records: cap.records, maildir: maildirServer, pgStore, migrated, stop: async () => undefined };
}

/** One setup for the whole file: the comparison below and the client suite share it. */
let setupOnce: Promise<Setup> | undefined;
const shared = (): Promise<Setup> => (setupOnce ??= setup());

afterAll(async () => {
  await pgServer?.stop();
  await pgStore?.close();
  await maildirServer?.stop();
  if (admin !== undefined) {
    await admin.query(`DROP SCHEMA IF EXISTS ${SCHEMA} CASCADE`);
    await admin.end();
  }
});

/**
 * Everything one session learns: STAT, LIST, UIDL, LIST n and UIDL n, and
 * RETR, TOP n 0 and TOP n 2 of every message as sent (stuffed, terminator included).
 */
interface Answers {
  stat: string;
  list: string[];
  uidl: string[];
  single: string[];
  retr: Buffer[];
  top0: Buffer[];
  top2: Buffer[];
}

async function answers(port: number, count: number, user = USER): Promise<Answers> {
  const w = await Wire.connect(port);
  try {
    expect(await w.line()).toMatch(/^\+OK/);
    await w.login(user, PASSWORD);
    const stat = await w.cmd('STAT');
    const list = await w.cmdLines('LIST');
    const uidl = await w.cmdLines('UIDL');
    expect([list.status, uidl.status]).toEqual([expect.stringMatching(/^\+OK/), expect.stringMatching(/^\+OK/)]);
    const single: string[] = [];
    const retr: Buffer[] = [];
    const top0: Buffer[] = [];
    const top2: Buffer[] = [];
    for (let n = 1; n <= count; n++) {
      single.push(await w.cmd(`LIST ${n}`), await w.cmd(`UIDL ${n}`));
      const r = await w.cmdMulti(`RETR ${n}`);
      expect(r.status, `RETR ${n}`).toMatch(/^\+OK/);
      retr.push(r.body);
      for (const [lines, into] of [[0, top0], [2, top2]] as const) {
        const t = await w.cmdMulti(`TOP ${n} ${lines}`);
        expect(t.status, `TOP ${n} ${lines}`).toMatch(/^\+OK/);
        into.push(t.body);
      }
    }
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
    return { stat, list: list.lines, uidl: uidl.lines, single, retr, top0, top2 };
  } finally {
    w.close();
  }
}

/** The messages whose replies differ between `a` and `b`, named with both lengths. */
function differing(drop: DropMessage[], a: Buffer[], b: Buffer[]): string[] {
  return drop
    .map((m, i) => ({ m, x: a[i], y: b[i] }))
    .filter(({ x, y }) => x === undefined || y === undefined || !x.equals(y))
    .map(({ m, x, y }) => `${m.number} ${m.name}: ${x?.length} vs ${y?.length} octets`);
}

describe.skipIf(PG_DOWN)('the PostgreSQL store answers as the Maildir it was migrated from', () => {
  let s: Setup;
  let drop: DropMessage[];
  let fromMaildir: Answers;
  let fromPostgres: Answers;

  it('the migration adds every message once, under its Maildir UIDL', async () => {
    s = await shared();
    drop = s.drop;
    expect(s.migrated.map((m) => m.result)).toEqual(drop.map(() => 'added'));
    expect(s.migrated.map((m) => m.message.size)).toEqual(drop.map((m) => m.octets));
    const target = await s.pgStore.openTarget(USER);
    try {
      expect([...(await target.uidls())].sort()).toEqual(s.migrated.map((m) => m.message.uidl).sort());
    } finally {
      await target.close();
    }
  }, 180_000);

  it('STAT, LIST, UIDL, LIST n and UIDL n are the same on both servers (and match the delivered maildrop)', async () => {
    fromMaildir = await answers(s.maildir.port, drop.length);
    fromPostgres = await answers(s.srv.port, drop.length);
    const total = drop.reduce((n, m) => n + m.octets, 0);
    expect(fromMaildir.stat).toBe(`+OK ${drop.length} ${total}`);
    expect(fromPostgres.stat).toBe(fromMaildir.stat);
    expect(fromMaildir.list).toEqual(drop.map((m) => `${m.number} ${m.octets}`));
    expect(fromPostgres.list).toEqual(fromMaildir.list);
    expect(fromMaildir.uidl).toEqual(s.migrated.map((m, i) => `${i + 1} ${m.message.uidl}`));
    expect(fromPostgres.uidl).toEqual(fromMaildir.uidl);
    expect(fromMaildir.single).toEqual(drop.flatMap((m, i) => [`+OK ${m.number} ${m.octets}`, `+OK ${fromMaildir.uidl[i]}`]));
    expect(fromPostgres.single).toEqual(fromMaildir.single);
  }, 120_000);

  it('RETR, TOP n 0 and TOP n 2 of every message give the same bytes on both servers', () => {
    expect(fromPostgres.retr).toHaveLength(drop.length);
    expect(differing(drop, fromPostgres.retr, fromMaildir.retr)).toEqual([]);
    expect(differing(drop, fromPostgres.top0, fromMaildir.top0)).toEqual([]);
    expect(differing(drop, fromPostgres.top2, fromMaildir.top2)).toEqual([]);
  });

  it('messages delivered straight to the PostgreSQL store have the Maildir sizes and bytes', async () => {
    const delivered = await answers(s.srv.port, drop.length, DELIVERED);
    expect(delivered.stat).toBe(fromMaildir.stat);
    expect(delivered.list).toEqual(fromMaildir.list);
    expect(differing(drop, delivered.retr, fromMaildir.retr)).toEqual([]);
    expect(differing(drop, delivered.top0, fromMaildir.top0)).toEqual([]);
    expect(differing(drop, delivered.top2, fromMaildir.top2)).toEqual([]);
  }, 120_000);

  it('the PostgreSQL-backed server logged no errors during the comparison', () => {
    const errors = s.records.filter((r: LogRecord) => Number(r.level) >= 50);
    expect(errors).toEqual([]);
  });
});

if (!PG_DOWN) clientsSuite('PostgreSQL (migrated from Maildir)', shared, { clientOnlyTests: false });
