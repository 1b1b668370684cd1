/**
 * Benchmark data for Poplar on PostgreSQL: the template maildirs (bench/data.ts)
 * loaded once into a schema of their own (poplar_bench) with `poplar migrate`,
 * so the PostgreSQL store serves the same users and messages as the Maildir
 * servers. The load is kept between runs and redone only when the template
 * changes or the database no longer holds what was loaded.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { copyMaildirs, type Manifest } from './data.js';

/** The database the bench uses: a local server as the machine has it (default settings). */
export const PG_URL = process.env['POPLAR_BENCH_PG_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test';
export const PG_SCHEMA = 'poplar_bench';

/** Bump when the way the data is loaded changes. */
const LOAD_VERSION = 1;

export interface PgUserCount {
  messages: number;
  /** Sum of the messages' sizes in CRLF octets (what LIST reports). */
  octets: number;
}

interface Marker {
  version: number;
  fingerprint: string;
  schema: string;
  users: Record<string, PgUserCount>;
  loadedAt: string;
  loadS: number;
}

/** A client for the bench itself (application_name "poplar-bench", so it is not counted among Poplar's connections). */
export async function benchClient(): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: PG_URL, application_name: 'poplar-bench', connectionTimeoutMillis: 3000 });
  await c.connect();
  return c;
}

/** Whether the bench's PostgreSQL answers; the reason when not. */
export async function postgresReachable(): Promise<string | null> {
  try {
    const c = await benchClient();
    await c.end();
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}

/** What the template holds per user: messages and CRLF octets (each LF not preceded by CR counts one more). */
function templateCounts(templateDir: string, users: string[]): Record<string, PgUserCount> {
  const out: Record<string, PgUserCount> = {};
  for (const u of users) {
    const cur = path.join(templateDir, 'mail', u, 'cur');
    let messages = 0;
    let octets = 0;
    for (const f of readdirSync(cur)) {
      const data = readFileSync(path.join(cur, f));
      let bare = 0;
      for (let i = data.indexOf(10); i >= 0; i = data.indexOf(10, i + 1)) if (i === 0 || data[i - 1] !== 13) bare++;
      messages++;
      octets += data.length + bare;
    }
    out[u] = { messages, octets };
  }
  return out;
}

async function databaseCounts(): Promise<Record<string, PgUserCount> | null> {
  const c = await benchClient();
  try {
    const has = await c.query(`SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'poplar_messages'`, [PG_SCHEMA]);
    if (has.rowCount === 0) return null;
    const { rows } = await c.query<{ username: string; messages: string; octets: string }>(
      `SELECT b.username, count(m.uid) AS messages, coalesce(sum(m.size), 0) AS octets
         FROM ${PG_SCHEMA}.poplar_mailboxes b LEFT JOIN ${PG_SCHEMA}.poplar_messages m USING (mailbox_id) GROUP BY b.username`,
    );
    return Object.fromEntries(rows.map((r) => [r.username, { messages: Number(r.messages), octets: Number(r.octets) }]));
  } finally {
    await c.end();
  }
}

function matches(want: Record<string, PgUserCount>, have: Record<string, PgUserCount> | null): boolean {
  if (have === null) return false;
  return Object.entries(want).every(([u, w]) => have[u]?.messages === w.messages && have[u]?.octets === w.octets);
}

/** Frees every lease in the bench schema (an interrupted run leaves them held until they time out). */
export async function freeLeases(): Promise<void> {
  const c = await benchClient();
  try {
    await c.query(`UPDATE ${PG_SCHEMA}.poplar_mailboxes SET lease_holder = NULL, lease_expires = NULL WHERE lease_holder IS NOT NULL`);
  } finally {
    await c.end();
  }
}

/**
 * VACUUM (ANALYZE) of the bench schema's tables, before every run that measures Poplar on
 * PostgreSQL: what autovacuum (on by PostgreSQL's default) does after a bulk load and after the
 * held-connections figure's 20,000 leases; without statistics the planner lists the
 * 100,000-message maildrop with a sort on disk instead of the covering primary key, and without
 * the visibility map it cannot scan that index alone. Returns the seconds it took.
 */
export async function maintain(): Promise<number> {
  const t0 = Date.now();
  const c = await benchClient();
  try {
    const { rows } = await c.query<{ t: string }>(`SELECT tablename AS t FROM pg_tables WHERE schemaname = $1 ORDER BY 1`, [PG_SCHEMA]);
    if (rows.length > 0) await c.query(`VACUUM (ANALYZE) ${rows.map((r) => `${PG_SCHEMA}.${r.t}`).join(', ')}`);
  } finally {
    await c.end();
  }
  return (Date.now() - t0) / 1000;
}

/** The [store.postgres] section the bench's Poplar instances and the load use. */
export function storeConfig(poolSize: number): string {
  return ['[store]', 'type = "postgres"', '', '[store.postgres]', `url = "${PG_URL}"`, `schema = "${PG_SCHEMA}"`, `pool_size = ${poolSize}`, ''].join('\n');
}

/**
 * Makes sure the bench schema holds the template's users and messages.
 * Loads it (drop, `poplar migrate --from maildir:COPY --to postgres --all`)
 * when the template changed since the last load or the counts differ.
 */
export async function ensurePgData(o: { root: string; work: string; templateDir: string; manifest: Manifest; log: (s: string) => void }): Promise<{ loaded: boolean; loadS: number; loadedAt: string }> {
  const markerPath = path.join(o.work, 'pg-data.json');
  const manifestPath = path.join(o.templateDir, 'manifest.json');
  const fingerprint = createHash('sha256')
    .update(`${LOAD_VERSION}\n${PG_URL}\n${statSync(manifestPath).mtimeMs}\n`)
    .update(readFileSync(manifestPath))
    .digest('hex');
  let marker: Marker | undefined;
  try {
    marker = JSON.parse(readFileSync(markerPath, 'utf8')) as Marker;
  } catch {
    marker = undefined;
  }
  const users = readdirSync(path.join(o.templateDir, 'mail')).sort();
  const want = marker?.fingerprint === fingerprint ? marker.users : templateCounts(o.templateDir, users);
  if (matches(want, await databaseCounts())) {
    if (marker?.fingerprint !== fingerprint) {
      marker = { version: LOAD_VERSION, fingerprint, schema: PG_SCHEMA, users: want, loadedAt: new Date().toISOString(), loadS: NaN };
      writeFileSync(markerPath, JSON.stringify(marker));
    }
    return { loaded: false, loadS: marker.loadS, loadedAt: marker.loadedAt };
  }

  const t0 = Date.now();
  o.log(`loading the template maildirs into PostgreSQL schema ${PG_SCHEMA} with poplar migrate (once; kept for later runs) ...`);
  rmSync(markerPath, { force: true });
  const c = await benchClient();
  try {
    await c.query(`DROP SCHEMA IF EXISTS ${PG_SCHEMA} CASCADE`);
    await c.query(`CREATE SCHEMA ${PG_SCHEMA}`);
  } finally {
    await c.end();
  }
  // The Maildir side of a migration writes its uidlist into the maildir it reads: a copy, not the template.
  const copy = path.join(o.work, 'pg-load');
  rmSync(copy, { recursive: true, force: true });
  copyMaildirs(o.templateDir, path.join(copy, 'mail'), users);
  const cfg = path.join(copy, 'store.toml');
  // The load alone skips the flush at each COMMIT (synchronous_commit = off for its own connections,
  // set in the URL; the servers under test run with the database's defaults): 100,000 messages,
  // one transaction each, would otherwise wait for as many WAL flushes.
  const loadUrl = `${PG_URL}${PG_URL.includes('?') ? '&' : '?'}options=${encodeURIComponent(`-c search_path=${PG_SCHEMA} -c synchronous_commit=off`)}`;
  writeFileSync(cfg, ['[store.postgres]', `url = "${loadUrl}"`, 'pool_size = 4', ''].join('\n'));
  try {
    const r = spawnSync(
      process.execPath,
      [path.join(o.root, 'dist', 'cli', 'main.js'), 'migrate', '--from', `maildir:${path.join(copy, 'mail')}`, '--to', 'postgres', '--config', cfg, '--all', '--no-progress'],
      { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 64 * 2 ** 20 },
    );
    if (r.status !== 0) throw new Error(`poplar migrate failed (exit ${r.status ?? r.signal ?? '?'}): ${(r.stdout ?? '').split('\n').slice(-5).join(' / ')}`);
  } finally {
    if (existsSync(copy)) execFileSync('rm', ['-rf', copy]);
  }
  const have = await databaseCounts();
  if (!matches(want, have)) throw new Error(`after loading, schema ${PG_SCHEMA} does not hold the template's messages (${JSON.stringify(have).slice(0, 300)})`);
  const loadS = (Date.now() - t0) / 1000;
  const loadedAt = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  writeFileSync(markerPath, JSON.stringify({ version: LOAD_VERSION, fingerprint, schema: PG_SCHEMA, users: want, loadedAt, loadS } satisfies Marker));
  o.log(`  loaded in ${loadS.toFixed(0)} s`);
  return { loaded: true, loadS, loadedAt };
}
