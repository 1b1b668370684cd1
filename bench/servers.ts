/**
 * The servers under test (Poplar on Maildir, Poplar on PostgreSQL, Dovecot),
 * behind one small interface: where they listen, which processes are theirs
 * (for memory and CPU), and how to stop them.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { startDovecot, type DovecotHandle } from '../test/helpers/dovecot.js';
import type { BenchUser } from './protocol.js';
import { cpuSeconds, findDovecotMaster, groupMembers } from './procfs.js';

export interface BenchServer {
  readonly name: 'Poplar' | 'Dovecot' | 'Poplar-PG' | 'HAProxy';
  readonly port: number;
  /** Every process of this server instance, right now. */
  pids(): number[];
  /** CPU seconds used so far by the instance (live processes plus reaped children). */
  cpuSeconds(): number;
  /** The settings that differ from the defaults, for the report. */
  readonly settings: string;
  /** Make a maildir copied in after the start usable by the server (Dovecot: owned by its mail uid). */
  adopt(dir: string): void;
  stop(): Promise<void>;
}

/** Raise the open-files limit for a child (it inherits it), then exec the real command. */
export function withFileLimit(limit: number, argv: string[]): [string, string[]] {
  const script = `ulimit -n ${limit} 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"`;
  return ['sh', ['-c', script, 'sh', ...argv]];
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const a = srv.address();
      const port = a !== null && typeof a === 'object' ? a.port : 0;
      srv.close(() => (port > 0 ? resolve(port) : reject(new Error('no free port'))));
    });
  });
}

/** Resolves once a connection to `port` gets a "+OK" greeting (after a PROXY v1 header with `proxy`). */
function greets(port: number, proxy = false): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port });
    if (proxy) s.write('PROXY TCP4 127.0.0.1 127.0.0.1 40000 110\r\n');
    let buf = '';
    const done = (ok: boolean): void => {
      clearTimeout(t);
      s.destroy();
      resolve(ok);
    };
    const t = setTimeout(() => done(false), 1000);
    s.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.includes('\r\n')) done(buf.startsWith('+OK'));
    });
    s.on('error', () => done(false));
    s.on('close', () => done(false));
  });
}

export interface PoplarOptions {
  root: string;
  workDir: string;
  /** The Maildir root; unset with `postgres`. */
  maildirRoot?: string;
  /** The PostgreSQL store instead of Maildir: the `[store]` and `[store.postgres]` sections (bench/pgdata.ts storeConfig). */
  postgres?: { storeConfig: string };
  /** `[server] proxy_protocol = true` with `trusted_proxies = ["127.0.0.1/32"]` (a node behind HAProxy). */
  proxyProtocol?: boolean;
  /** Listen on this port (default: a free one). */
  port?: number;
  users: BenchUser[];
  /** Extra node flags, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** `poplar serve --workers N` (the cluster shares the listeners); 1 = a single process. */
  serverWorkers?: number;
}

/** Poplar's settings for the bench: the default limits would refuse 2000 connections from one address. */
export const POPLAR_CONFIG = [
  '[server]',
  'max_connections = 100000',
  'max_connections_per_ip = 100000',
  'auth_failure_delay = 0',
  'login_timeout = 900',
  'shutdown_grace = 1',
  '',
].join('\n');

/** The whole configuration file of one instance. */
export function poplarConfig(o: Pick<PoplarOptions, 'postgres' | 'proxyProtocol'>): string {
  let c = POPLAR_CONFIG;
  if (o.proxyProtocol === true) c = c.replace('[server]\n', '[server]\nproxy_protocol = true\ntrusted_proxies = ["127.0.0.1/32"]\n');
  if (o.postgres !== undefined) c += '\n' + o.postgres.storeConfig;
  return c;
}

export async function startPoplar(o: PoplarOptions): Promise<BenchServer> {
  if ((o.maildirRoot === undefined) === (o.postgres === undefined)) throw new Error('startPoplar: a Maildir root or PostgreSQL, one of the two');
  mkdirSync(o.workDir, { recursive: true });
  const usersFile = path.join(o.workDir, 'users');
  // {PLAIN} like the Dovecot instance's passwd-file, so both pay the same (negligible) password check.
  writeFileSync(usersFile, o.users.map((u) => `${u.name}:{PLAIN}${u.password}::::::`).join('\n') + '\n', { mode: 0o600 });
  const configFile = path.join(o.workDir, 'poplar.toml');
  const config = poplarConfig(o);
  writeFileSync(configFile, config);
  const port = o.port ?? (await freePort());
  let tlsPort = await freePort();
  while (tlsPort === port) tlsPort = await freePort();
  const main = path.join(o.root, 'dist', 'cli', 'main.js');
  const [cmd, args] = withFileLimit(65536, [
    process.execPath,
    ...(o.nodeArgs ?? []),
    main,
    'serve',
    '--config', configFile,
    '--data-dir', path.join(o.workDir, 'data'),
    '--users', usersFile,
    ...(o.maildirRoot !== undefined ? ['--maildir-root', o.maildirRoot] : []),
    '--listen', `127.0.0.1:${port}`,
    '--listen-tls', `127.0.0.1:${tlsPort}`,
    '--log-level', 'warn',
    ...(process.getuid?.() === 0 ? ['--allow-root'] : []), // the bench's copies belong to the user running it
    ...((o.serverWorkers ?? 1) > 1 ? ['--workers', String(o.serverWorkers)] : []),
  ]);
  const child: ChildProcess = spawn(cmd, args, { cwd: o.workDir, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  const keep = (d: Buffer): void => {
    output += d.toString();
    if (output.length > 20_000) output = output.slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once('exit', () => ((exited = true), resolve())));
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start Poplar');
  const killGroup = (sig: NodeJS.Signals): void => {
    try {
      process.kill(-pid, sig);
    } catch {
      // already gone
    }
  };
  const stop = async (): Promise<void> => {
    if (!exited) {
      child.kill('SIGTERM');
      const t = setTimeout(() => killGroup('SIGKILL'), 5000);
      await exit;
      clearTimeout(t);
    }
    killGroup('SIGKILL');
  };

  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited) throw new Error(`Poplar exited during startup (is dist/ up to date? run npm run build):\n${output}`);
    if (await greets(port, o.proxyProtocol === true)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`Poplar did not greet on port ${port} within 20 s:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  // The first worker greets before the others are up; a figure taken now would time the others'
  // start-up. Wait for every worker process, then give them a moment to load and listen.
  const workers = o.serverWorkers ?? 1;
  if (workers > 1) {
    while (groupMembers(pid).length < workers + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    await new Promise((r) => setTimeout(r, 3000));
  }
  return {
    name: o.postgres !== undefined ? 'Poplar-PG' : 'Poplar',
    port,
    // With --workers the cluster's processes share the primary's process group.
    pids: () => (exited ? [] : groupMembers(pid)),
    cpuSeconds: () => groupMembers(pid).reduce((t, p) => t + cpuSeconds(p, p === pid), 0),
    settings: config.trim() + `\n# command line: poplar serve --workers ${o.serverWorkers ?? 1} ...`,
    adopt: () => undefined, // Poplar runs as the owner of the copies
    stop,
  };
}

/**
 * Dovecot's high-performance mode (test/helpers/dovecot.ts) plus what the bench
 * needs: no cap on sessions per user and address (default 10), and no per-login
 * info lines (Poplar runs at log level warn, so it writes none either).
 */
export const DOVECOT_EXTRA_CONF = [
  '# bench/servers.ts',
  'mail_max_userip_connections = 100000',
  'info_log_path = /dev/null',
  'auth_verbose = no',
].join('\n');

export interface DovecotBench extends BenchServer {
  readonly handle: DovecotHandle;
}

export async function startDovecotBench(maildirRoot: string, users: BenchUser[]): Promise<DovecotBench> {
  const handle = await startDovecot({ maildirRoot, users, highPerformance: true, extraConf: DOVECOT_EXTRA_CONF });
  const conf = path.join(handle.dir, 'dovecot.conf');
  const master = findDovecotMaster(conf);
  if (master === undefined) {
    await handle.stop();
    throw new Error(`started Dovecot but cannot find its master process (-c ${conf}) in /proc`);
  }
  let stopped = false;
  return {
    name: 'Dovecot',
    port: handle.port,
    handle,
    pids: () => (stopped ? [] : groupMembers(master)),
    cpuSeconds: () => {
      let s = cpuSeconds(master, true);
      for (const p of groupMembers(master)) if (p !== master) s += cpuSeconds(p);
      return s;
    },
    settings: DOVECOT_EXTRA_CONF,
    adopt: (dir) => {
      const r = spawnSync('chown', ['-R', `${handle.mailUid}:${handle.mailGid}`, dir], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`chown -R ${dir} failed: ${r.stderr}`);
    },
    stop: async () => {
      stopped = true;
      await handle.stop();
    },
  };
}
