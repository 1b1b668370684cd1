/**
 * A PostgreSQL cluster of a test's own (initdb + pg_ctl from Debian's
 * `postgresql` package), on a free loopback port, that the test may stop and
 * start at will: the database going away under a running Poplar.
 *
 * initdb refuses to run as root, so as root the cluster belongs to the
 * `postgres` account the package creates.
 */
import { execFile } from 'node:child_process';
import { existsSync, promises as fs, readdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The directory with initdb and pg_ctl: PATH first, then Debian's versioned directories. */
export function postgresBinDir(): string | null {
  for (const d of (process.env.PATH ?? '').split(':')) if (d && existsSync(path.join(d, 'initdb')) && existsSync(path.join(d, 'pg_ctl'))) return d;
  const base = '/usr/lib/postgresql';
  try {
    const versions = readdirSync(base);
    for (const v of versions.sort((a, b) => Number(b) - Number(a))) {
      const d = path.join(base, v, 'bin');
      if (existsSync(path.join(d, 'initdb'))) return d;
    }
  } catch {
    // no PostgreSQL installed
  }
  return null;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export interface PrivatePostgres {
  readonly port: number;
  readonly url: string;
  start(): Promise<void>;
  /** `pg_ctl stop -m fast`: every connection is cut, as when the database host goes down. */
  stop(): Promise<void>;
  destroy(): Promise<void>;
}

export async function privatePostgres(bin: string): Promise<PrivatePostgres> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-pg-'));
  const data = path.join(dir, 'data');
  const port = await freePort();
  const asRoot = process.getuid?.() === 0;
  const as = async (cmd: string, args: string[]): Promise<void> => {
    if (asRoot) await run('runuser', ['-u', 'postgres', '--', path.join(bin, cmd), ...args], { cwd: '/' });
    else await run(path.join(bin, cmd), args);
  };
  if (asRoot) await run('chown', ['postgres:postgres', dir]);
  await as('initdb', ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8']);
  const opts = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`;
  const pg: PrivatePostgres = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    start: () => as('pg_ctl', ['-D', data, '-o', opts, '-l', path.join(dir, 'log'), '-w', '-t', '60', 'start']),
    stop: () => as('pg_ctl', ['-D', data, '-m', 'fast', '-w', '-t', '60', 'stop']),
    destroy: async () => {
      await pg.stop().catch(() => undefined);
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
  await pg.start();
  return pg;
}
