/**
 * `poplar serve` on the PostgreSQL store, end to end: two server processes
 * (two nodes) on one database. Delivery, RETR byte for byte, DELE+QUIT,
 * [IN-USE] on the other node while a session holds the maildrop, a node
 * SIGKILLed with DELE marks removes nothing and its lease runs out, and an
 * unreachable database stops the start with one clear line.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/observability/log.js';
import { PostgresStore } from '../../src/store/postgres/postgres-store.js';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksPostgres, POSTGRES_CONNECTION } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const PG_DOWN = await lacksPostgres();
const URL = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;

describe.skipIf(PG_DOWN)('poplar serve with [store] type = "postgres"', () => {
  const schema = `poplar_e2e_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Pool({ ...POSTGRES_CONNECTION, max: 2 });
  let dir: string;
  let nodeA: ServeProcess;
  let nodeB: ServeProcess;
  let store: PostgresStore;

  const config = (name: string): string =>
    [
      `data_dir = ${JSON.stringify(path.join(dir, name))}`,
      '[server]',
      'listen = ["127.0.0.1:0"]',
      'listen_tls = []',
      '[auth]',
      `users = ${JSON.stringify(path.join(dir, 'users'))}`,
      '[store]',
      'type = "postgres"',
      '[store.postgres]',
      `url = "${URL}"`,
      `schema = "${schema}"`,
      'pool_size = 4',
      'lease_timeout = 2',
      '',
    ].join('\n');

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-pg-e2e-'));
    await admin.query(`CREATE SCHEMA ${schema}`);
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret::::::\n', { mode: 0o600 });
    for (const n of ['a', 'b']) await fs.writeFile(path.join(dir, `${n}.toml`), config(n));
    const start = (n: string): Promise<ServeProcess> => startServe(['--config', path.join(dir, `${n}.toml`)], { cwd: dir, expectListeners: 1 });
    [nodeA, nodeB] = [await start('a'), await start('b')];
    // The servers applied the migrations; this process delivers as an MTA-side program would.
    const p = new pg.Pool({ ...POSTGRES_CONNECTION, max: 2, options: `-c search_path=${schema}` });
    store = new PostgresStore(p, { logger: silentLogger(), ownsPool: true, sweepIntervalMs: 0 });
  });

  afterAll(async () => {
    await Promise.allSettled([nodeA?.stop(), nodeB?.stop()]);
    await store?.close();
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function login(node: ServeProcess): Promise<{ wire: Wire; reply: string }> {
    const wire = await Wire.connect(node.plainPort);
    await wire.line();
    expect(await wire.cmd('USER alice')).toMatch(/^\+OK/);
    return { wire, reply: await wire.cmd('PASS secret') };
  }

  async function stored(): Promise<number> {
    const { rows } = await admin.query<{ n: string }>(
      `SELECT count(*) AS n FROM ${schema}.poplar_messages WHERE mailbox_id = (SELECT mailbox_id FROM ${schema}.poplar_mailboxes WHERE username = 'alice')`,
    );
    return Number(rows[0]!.n);
  }

  it('serves delivered mail byte for byte, locks the maildrop across nodes, and removes DELE\'d mail at QUIT', async () => {
    const lines: string[] = [];
    for (let i = 0; i < 9000; i++) lines.push(`line ${i} ${'x'.repeat(60)} \xe9\xe8 8-bit`);
    const big = Buffer.from(`Subject: e2e\r\nContent-Type: text/plain; charset=latin1\r\n\r\n.dot first\r\n${lines.join('\r\n')}\r\n..two dots\r\nend\r\n`, 'latin1');
    await store.deliver('alice', big);
    await store.deliver('alice', Buffer.from('Subject: small\n\nbare LF\n'));
    const a = await login(nodeA);
    expect(a.reply).toMatch(/^\+OK/);
    expect(await a.wire.cmd('STAT')).toBe(`+OK 2 ${big.length + 'Subject: small\n\nbare LF\n'.length + 3}`);
    const uidl = await a.wire.cmdLines('UIDL');
    expect(uidl.lines).toHaveLength(2);
    for (const l of uidl.lines) expect(l).toMatch(/^[12] [\x21-\x7e]{1,70}$/);
    const retr = await a.wire.cmdMulti('RETR 1');
    expect(retr.status).toBe(`+OK ${big.length} octets`);
    const expected = Buffer.concat([Buffer.from(big.toString('latin1').replace(/\r\n\./g, '\r\n..').replace(/^\./, '..'), 'latin1'), Buffer.from('.\r\n')]);
    expect(retr.body.equals(expected)).toBe(true);
    const small = await a.wire.cmdMulti('RETR 2');
    expect(small.body.toString()).toBe('Subject: small\r\n\r\nbare LF\r\n.\r\n');

    // The other node: the maildrop is in use.
    const b = await login(nodeB);
    expect(b.reply).toMatch(/^-ERR \[IN-USE\]/);
    b.wire.close();

    expect(await a.wire.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await a.wire.cmd('QUIT')).toMatch(/^\+OK/);
    await a.wire.closed();
    expect(await stored()).toBe(1);

    // Released at QUIT: the other node serves the user at once.
    const b2 = await login(nodeB);
    expect(b2.reply).toMatch(/^\+OK/);
    expect(await b2.wire.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await b2.wire.cmd('QUIT')).toMatch(/^\+OK/);
  });

  it('a node SIGKILLed with DELE marks removes nothing, and another node serves the user once its lease ran out', async () => {
    expect(await stored()).toBe(1);
    const a = await login(nodeA);
    expect(a.reply).toMatch(/^\+OK/);
    expect(await a.wire.cmd('DELE 1')).toMatch(/^\+OK/);
    await nodeA.stop('SIGKILL');
    a.wire.close();
    const b = await login(nodeB);
    expect(b.reply).toMatch(/^-ERR \[IN-USE\]/);
    b.wire.close();
    await sleep(2500); // lease_timeout = 2
    const b2 = await login(nodeB);
    expect(b2.reply).toMatch(/^\+OK/);
    expect(await b2.wire.cmd('STAT')).toMatch(/^\+OK 1 /);
    expect(await b2.wire.cmd('QUIT')).toMatch(/^\+OK/);
    expect(await stored()).toBe(1);
  });

  it('exits 78 with one clear line when the store database cannot be reached', async () => {
    const file = path.join(dir, 'down.toml');
    await fs.writeFile(file, '[store]\ntype = "postgres"\n[store.postgres]\nurl = "postgres://postgres@127.0.0.1:1/test"\nconnect_timeout = 1\n');
    const r = await runPoplar(['serve', '--data-dir', path.join(dir, 'down'), '--config', file], { cwd: dir });
    expect(r.code).toBe(78);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/cannot use the PostgreSQL mail store/);
  });

  it('exits 78 when store.type = "postgres" has no [store.postgres] section', async () => {
    const file = path.join(dir, 'nosection.toml');
    await fs.writeFile(file, '[store]\ntype = "postgres"\n');
    const r = await runPoplar(['serve', '--data-dir', path.join(dir, 'nosection'), '--config', file], { cwd: dir });
    expect(r.code).toBe(78);
    expect(r.stderr).toMatch(/needs a \[store\.postgres\] section/);
  });
});
