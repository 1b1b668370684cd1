/**
 * Maildir -> PostgreSQL -> Maildir with `poplar migrate` as a real process on
 * a real PostgreSQL (a schema of this file's own): the same UIDLs (saved ones
 * included), POP3 order, sizes, stored bytes, seen state and arrival at the
 * end as at the start; a rerun into PostgreSQL moves nothing.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar } from '../helpers/cli.js';
import { lacksPostgres } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { silentLogger } from '../../src/observability/log.js';
import { MaildirMigration } from '../../src/store/maildir/migration.js';
import { pgSchema, PG_URL, type PgSchema } from '../store/pg.js';
import { messageFiles, pop3View, putFile, seqMail } from './helpers.js';

const PG_DOWN = await lacksPostgres();
const USERS = [
  { name: 'alice', password: 'a-pw' },
  { name: 'bob', password: 'b-pw' },
];

/** Per message in POP3 order: the stored bytes, seen or not, and the modification time (arrival). */
async function stored(server: TestServer, user: string): Promise<{ bytes: string; seen: boolean; mtime: number }[]> {
  const files = await messageFiles(server.maildirRoot, user);
  const byBase = new Map(files.map((f) => [path.basename(f).split(':')[0]!, f]));
  const text = await fs.readFile(path.join(server.maildirRoot, user, 'dovecot-uidlist'), 'latin1');
  const records = text
    .split('\n')
    .slice(1)
    .filter((l) => l.includes(' :'))
    .map((l) => {
      const [head, base] = [l.slice(0, l.indexOf(' :')), l.slice(l.indexOf(' :') + 2)];
      const o = /(?:^| )O(\d+)/.exec(head)?.[1];
      return { uid: Number(head.split(' ')[0]), order: o === undefined ? Infinity : Number(o), base };
    })
    .filter((r) => byBase.has(r.base))
    .sort((a, b) => a.order - b.order || a.uid - b.uid);
  const out = [];
  for (const r of records) {
    const f = byBase.get(r.base)!;
    const p = path.join(server.maildirRoot, user, f);
    out.push({ bytes: (await fs.readFile(p)).toString('latin1'), seen: /:2,[A-Z]*S/.test(f), mtime: Math.floor((await fs.stat(p)).mtimeMs / 1000) });
  }
  return out;
}

describe.skipIf(PG_DOWN)('poplar migrate maildir -> postgres -> maildir', () => {
  let tmp: string;
  let a: TestServer;
  let b: TestServer;
  let db: PgSchema;
  let config: string;

  beforeAll(async () => {
    db = await pgSchema();
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-roundtrip-'));
    for (const d of ['a', 'b']) await fs.mkdir(path.join(tmp, d));
    a = await startTestServer({ dir: path.join(tmp, 'a'), users: USERS });
    b = await startTestServer({ dir: path.join(tmp, 'b'), users: USERS });
    config = path.join(tmp, 'poplar.toml');
    await fs.writeFile(config, `[store.postgres]\nurl = "${PG_URL}"\nschema = "${db.name}"\n`);
    const root = a.maildirRoot;
    await putFile(root, 'alice', 'cur', '1700000001.M1P1.host:2,S', seqMail(1), new Date('2021-01-01T00:00:00Z'));
    await putFile(root, 'alice', 'cur', '1700000002.M1P1.host:2,', seqMail(2).replace(/\n/g, '\r\n'), new Date('2021-02-01T00:00:00Z'));
    await putFile(root, 'alice', 'new', '1700000003.M1P1.host', 'Subject: no final newline\n\n..dots\nlast', new Date('2021-03-01T00:00:00Z'));
    await putFile(root, 'alice', 'new', '1700000004.M1P1.host', Buffer.from([0x53, 0x3a, 0x20, 0xff, 0x00, 0x0d, 0x0a, 0x0a, 0x80, 0x0d, 0x0d, 0x0a]), new Date('2021-04-01T00:00:00Z'));
    await fs.writeFile(path.join(root, 'alice', 'dovecot-uidlist'), '3 V1400000000 N3 G0123456789abcdef0123456789abcdef\n1 Pkept-from-courier-1 O2 :1700000001.M1P1.host\n2 O1 :1700000002.M1P1.host\n');
    for (let i = 0; i < 5; i++) await putFile(root, 'bob', 'new', `17000001${i}0.M1P1.host`, seqMail(10 + i), new Date(Date.UTC(2022, i, 1)));
    await putFile(root, 'bob', 'new', '1700000200.M1P1.host', '');
  });

  afterAll(async () => {
    await a?.stop();
    await b?.stop();
    if (tmp !== undefined) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('leaves identical UIDLs, order, seen state, arrival and bytes', async () => {
    const there = await runPoplar(['migrate', '--from', `maildir:${a.maildirRoot}`, '--to', 'postgres', '--config', config, '--all'], { timeoutMs: 60_000 });
    expect(there.code, there.stderr).toBe(0);
    expect(there.stdout).toMatch(/^2 users: 10 messages moved/m);
    const again = await runPoplar(['migrate', '--from', `maildir:${a.maildirRoot}`, '--to', 'postgres', '--config', config, '--all'], { timeoutMs: 60_000 });
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/^2 users: 0 messages moved .* 10 already there/m);
    const back = await runPoplar(['migrate', '--from', 'postgres', '--to', `maildir:${b.maildirRoot}`, '--config', config, '--all'], { timeoutMs: 60_000 });
    expect(back.code, back.stderr).toBe(0);
    expect(back.stdout).toMatch(/^2 users: 10 messages moved/m);

    for (const u of USERS) {
      // Stored form first: a POP3 session's RETR would mark messages seen.
      const sa = await stored(a, u.name);
      const sb = await stored(b, u.name);
      expect(sb.map((m) => m.bytes), u.name).toEqual(sa.map((m) => m.bytes));
      expect(sb.map((m) => m.seen), u.name).toEqual(sa.map((m) => m.seen));
      expect(sb.map((m) => m.mtime), u.name).toEqual(sa.map((m) => m.mtime));
      const va = await pop3View(a.port, u.name, u.password);
      const vb = await pop3View(b.port, u.name, u.password);
      expect(vb, u.name).toEqual(va);
    }
    const alice = await pop3View(b.port, 'alice', 'a-pw');
    expect(alice.uidl[1]).toBe('kept-from-courier-1');
    expect(alice.uidl[0]).toBe('0000000253724e00');
  });

  it('--dry-run from PostgreSQL lists the users and changes nothing', async () => {
    const target = path.join(tmp, 'never');
    const r = await runPoplar(['migrate', '--from', 'postgres', '--to', `maildir:${target}`, '--config', config, '--all', '--dry-run'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^alice: 4 messages, 0 already in the target, 4 to move/m);
    expect(r.stdout).toMatch(/^bob: 6 messages/m);
    await expect(fs.stat(target)).rejects.toThrow();
  });

  it('into PostgreSQL, killed halfway and rerun: every message exactly once, in order', async () => {
    const root = path.join(tmp, 'kill-src');
    for (let i = 0; i < 9; i++) await putFile(root, 'hana', 'new', `${1700000300 + i}.M1P1.host`, seqMail(300 + i));
    // A killed migration's lease outlives it: a short one here, so that the rerun does not wait 30 s.
    const short = path.join(tmp, 'short-lease.toml');
    await fs.writeFile(short, `[store.postgres]\nurl = "${PG_URL}"\nschema = "${db.name}"\nlease_timeout = 1\n`);
    const run = (env: NodeJS.ProcessEnv = {}) => runPoplar(['migrate', '--from', `maildir:${root}`, '--to', 'postgres', '--config', short, '--user', 'hana'], { env, timeoutMs: 60_000 });
    const k1 = await run({ POPLAR_MIGRATE_CRASH_AFTER: '2' });
    expect(k1.signal, k1.stderr + k1.stdout).toBe('SIGKILL');
    await sleep(1500);
    expect((await run({ POPLAR_MIGRATE_CRASH_AFTER: '4' })).signal).toBe('SIGKILL');
    await sleep(1500);
    const done = await run();
    expect(done.code, done.stderr).toBe(0);
    expect(done.stdout).toMatch(/3 messages moved .* 6 already there/);
    const { rows } = await db.admin.query<{ uidl: string }>(
      'SELECT m.uidl FROM poplar_messages m JOIN poplar_mailboxes b USING (mailbox_id) WHERE b.username = $1 ORDER BY m.uid',
      ['hana'],
    );
    const store = new MaildirMigration({ root, logger: silentLogger() });
    const src = await store.openSource('hana');
    const want = src.messages.map((m) => m.uidl);
    await src.close();
    expect(rows.map((r) => r.uidl)).toEqual(want);
  });

  it('a user the database does not hold exits 67 and is not created there', async () => {
    const r = await runPoplar(['migrate', '--from', 'postgres', '--to', `maildir:${path.join(tmp, 'ghost')}`, '--config', config, '--user', 'ghost'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(67);
    expect(r.stderr).toMatch(/no maildrop for ghost/);
    const { rows } = await db.admin.query('SELECT 1 FROM poplar_mailboxes WHERE username = $1', ['ghost']);
    expect(rows).toHaveLength(0);
  });

  it('an unreachable database is a clear temporary failure (exit 75)', async () => {
    const bad = path.join(tmp, 'bad.toml');
    await fs.writeFile(bad, '[store.postgres]\nurl = "postgres://postgres@127.0.0.1:1/none"\nconnect_timeout = 2\n');
    const r = await runPoplar(['migrate', '--from', `maildir:${a.maildirRoot}`, '--to', 'postgres', '--config', bad, '--all'], { timeoutMs: 60_000 });
    expect(r.code, r.stderr).toBe(75);
    expect(r.stderr).toMatch(/PostgreSQL store cannot be reached/);
  });
});
