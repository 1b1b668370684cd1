import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addUser, createPostgresPool } from '../../src/auth/postgres/index.js';
import { hashPassword } from '../../src/auth/schemes.js';
import { LIMITS_MIGRATIONS } from '../../src/auth/throttle-postgres.js';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { POSTGRES_CONNECTION as PG, lacksPostgres } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

const PG_DOWN = await lacksPostgres();
const pgUrl = `postgres://${PG.user}@${PG.host}:${PG.port}/${PG.database}`;

/**
 * Two `poplar serve` nodes on one PostgreSQL database (users there too):
 * an address blocked through one node is refused by the other, and a
 * LOGIN-DELAY started by a login on one is enforced by the other.
 */
describe.skipIf(PG_DOWN)('two nodes on one database share login limits', () => {
  const schema = `poplar_limits_nodes_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Pool({ ...PG, max: 2 });
  let dir: string;
  let a: ServeProcess;
  let b: ServeProcess;

  async function node(name: string): Promise<ServeProcess> {
    const file = path.join(dir, `${name}.toml`);
    await fs.writeFile(
      file,
      [
        `data_dir = "${dir}/${name}"`,
        'log_format = "json"',
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = []',
        'auth_failure_delay = 0.05',
        'auth_failure_max_delay = 0.1',
        'auth_block_after = 3',
        'login_delay = 600',
        '[auth]',
        'type = "postgres"',
        '[auth.postgres]',
        `url = "${pgUrl}"`,
        `schema = "${schema}"`,
        'pool_size = 2',
        '',
      ].join('\n'),
    );
    return startServe(['--config', file], { expectListeners: 1 });
  }

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-limits-nodes-'));
    await admin.query(`CREATE SCHEMA ${schema}`);
    [a, b] = await Promise.all([node('a'), node('b')]);
    const pool = createPostgresPool({ url: pgUrl, schema });
    try {
      for (const u of ['alice', 'bob']) await addUser(pool, { username: u, password: await hashPassword(`${u}-pw`, 'PLAIN') });
    } finally {
      await pool.end();
    }
  }, 60_000);
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
    await admin.end();
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function pass(srv: ServeProcess, user: string, password: string): Promise<string> {
    const w = await Wire.connect(srv.plainPort);
    await w.line();
    await w.cmd(`USER ${user}`);
    const answer = await w.cmd(`PASS ${password}`);
    if (answer.startsWith('+OK')) await w.cmd('QUIT');
    w.close();
    return answer;
  }

  it('both nodes created the limits tables once, in their own history', async () => {
    const { rows } = await admin.query<{ version: number }>(`SELECT version FROM ${schema}.poplar_limits_migrations`);
    expect(rows.map((r) => r.version).sort((x, y) => x - y)).toEqual(LIMITS_MIGRATIONS.map((m) => m.version));
  });

  it('LOGIN-DELAY set by a login on node A is enforced on node B', async () => {
    expect(await pass(a, 'alice', 'alice-pw')).toMatch(/^\+OK/);
    expect(await pass(b, 'alice', 'alice-pw')).toMatch(/^-ERR \[LOGIN-DELAY\] Minimum time between logins is 600 seconds; try again in (599|600) seconds/);
    expect(await pass(a, 'alice', 'alice-pw')).toMatch(/^-ERR \[LOGIN-DELAY\] /);
    // another user is not held back
    expect(await pass(b, 'bob', 'bob-pw')).toMatch(/^\+OK/);
  });

  it('an address blocked through node A is refused on node B, even with the right password', async () => {
    for (let i = 0; i < 3; i++) expect(await pass(a, 'nobody', 'guess')).toMatch(/^-ERR \[AUTH\] /);
    // B never saw a failure from this address itself.
    expect(b.stderr()).not.toMatch(/"event":"auth-failed"/);
    expect(await pass(b, 'bob', 'bob-pw')).toMatch(/^-ERR \[AUTH\] /);
    expect(b.stderr()).toMatch(/"event":"auth-failed".*"why":"blocked"/);
    expect(await pass(a, 'bob', 'bob-pw')).toMatch(/^-ERR \[AUTH\] /);
    const { rows } = await admin.query<{ failures: number }>(`SELECT failures FROM ${schema}.poplar_auth_failures WHERE key = 'ip:127.0.0.1'`);
    expect(rows[0]?.failures).toBe(5); // the refusals are counted too: a client that keeps trying stays blocked
    for (const s of [a, b]) expect(s.stderr()).not.toMatch(/shared login counters .* unavailable/);
  });
});
