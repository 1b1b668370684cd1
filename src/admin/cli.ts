/**
 * `poplar who [--config FILE] [--json]` and `poplar kick USER [--config FILE]`:
 * the running server's open sessions (every worker's), and ending a user's
 * sessions without UPDATE. Both ask the server through `[admin] socket`, or,
 * without one, through `[admin] listen` with the secret of `token_file`.
 */
import http from 'node:http';
import type { Command } from 'commander';
import { ConfigError } from '../config/errors.js';
import { loadConfig } from '../config/load.js';
import { EX_CONFIG, EX_NOPERM, EX_OK, EX_UNAVAILABLE } from '../cli/exit-codes.js';
import { readToken } from './bind.js';
import { splitHostPort } from './http.js';
import type { SessionRow } from './sessions.js';

/** Largest answer read from the server (a `who` of some 100 000 sessions). */
const MAX_ANSWER = 64 * 1024 * 1024;

interface Target {
  readonly socketPath?: string;
  readonly host?: string;
  readonly port?: number;
  readonly token?: string;
  readonly describe: string;
}

class AdminCallError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

function targetOf(configFile: string | undefined): Target {
  const config = loadConfig({ ...(configFile !== undefined ? { config: configFile } : {}) });
  const a = config.admin;
  if (a.socket !== undefined) return { socketPath: a.socket, describe: a.socket };
  if (a.listen !== undefined && a.token_file !== undefined) {
    let { host, port } = splitHostPort(a.listen);
    if (host === '0.0.0.0') host = '127.0.0.1';
    if (host === '::') host = '::1';
    return { host, port, token: readToken(a.token_file), describe: a.listen };
  }
  throw new ConfigError('no way to reach the server: set [admin] socket (or [admin] listen with token_file) in the configuration');
}

function call(t: Target, method: 'GET' | 'POST', path: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        method,
        path,
        ...(t.socketPath !== undefined ? { socketPath: t.socketPath } : { host: t.host, port: t.port }),
        headers: t.token !== undefined ? { authorization: `Bearer ${t.token}` } : {},
        timeout: 30_000,
      },
      (res) => {
        const chunks: Buffer[] = [];
        let n = 0;
        res.on('data', (c: Buffer) => {
          n += c.length;
          if (n > MAX_ANSWER) req.destroy(new Error('answer too large'));
          else chunks.push(c);
        });
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          if (res.statusCode === 403) return reject(new AdminCallError(`not allowed: ${body.trim()}`, EX_NOPERM));
          if (res.statusCode !== 200) return reject(new AdminCallError(`the server answered ${res.statusCode}: ${body.trim().slice(0, 200)}`, EX_UNAVAILABLE));
          try {
            resolve(JSON.parse(body));
          } catch {
            reject(new AdminCallError('the server sent an answer that is not JSON', EX_UNAVAILABLE));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('no answer within 30 s')));
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EACCES') reject(new AdminCallError(`permission denied on ${t.describe}: only root and the service group may use it`, EX_NOPERM));
      else if (e.code === 'ENOENT' || e.code === 'ECONNREFUSED') reject(new AdminCallError(`poplar is not running (nothing answers on ${t.describe})`, EX_UNAVAILABLE));
      else reject(new AdminCallError(`cannot reach the server on ${t.describe}: ${e.message}`, EX_UNAVAILABLE));
    });
    req.end();
  });
}

function isRow(r: unknown): r is SessionRow {
  const s = r as SessionRow | null;
  return typeof s === 'object' && s !== null && typeof s.address === 'string' && typeof s.state === 'string' && typeof s.since === 'string';
}

/** One line per session, columns aligned; a name is shown with control characters escaped. */
export function formatSessions(rows: readonly SessionRow[]): string {
  const clean = (s: string): string => s.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  const table = [
    ['USER', 'ADDRESS', 'SINCE', 'STATE', 'TLS', 'IN', 'OUT', 'PID'],
    ...rows.map((r) => [
      r.user === undefined ? '-' : clean(r.user),
      r.address.includes(':') ? `[${r.address}]:${r.port}` : `${r.address}:${r.port}`,
      r.since.replace(/\.\d+Z$/, 'Z'),
      r.state,
      r.tls ? 'yes' : 'no',
      String(r.bytesIn),
      String(r.bytesOut),
      String(r.pid),
    ]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n') + '\n';
}

async function run(work: () => Promise<void>): Promise<void> {
  try {
    await work();
    process.exitCode = EX_OK;
  } catch (e) {
    if (e instanceof AdminCallError) {
      process.stderr.write(`poplar: ${e.message}\n`);
      process.exitCode = e.exitCode;
    } else if (e instanceof ConfigError) {
      process.stderr.write(`poplar: ${e.message}\n`);
      process.exitCode = EX_CONFIG;
    } else throw e;
  }
}

export function registerAdminCommands(program: Command): void {
  program
    .command('who')
    .description('list the open sessions of the running server (every worker): user, address, since, state, bytes')
    .option('--config <file>', 'TOML configuration file (the one poplar serve uses)')
    .option('--json', 'one JSON array instead of a table')
    .action((flags: { config?: string; json?: boolean }) =>
      run(async () => {
        const answer = await call(targetOf(flags.config), 'GET', '/sessions');
        const rows = (Array.isArray(answer) ? answer : []).filter(isRow).sort((a, b) => a.since.localeCompare(b.since));
        process.stdout.write(flags.json === true ? JSON.stringify(rows, null, 2) + '\n' : formatSessions(rows));
      }),
    );
  program
    .command('kick')
    .description("end a user's sessions on the running server, without UPDATE (messages marked deleted stay)")
    .argument('<user>', 'the user name, as `poplar who` shows it')
    .option('--config <file>', 'TOML configuration file (the one poplar serve uses)')
    .action((user: string, flags: { config?: string }) =>
      run(async () => {
        const answer = (await call(targetOf(flags.config), 'POST', `/kick?user=${encodeURIComponent(user)}`)) as { kicked?: unknown };
        const n = typeof answer.kicked === 'number' ? answer.kicked : 0;
        process.stdout.write(`${n} session${n === 1 ? '' : 's'} of ${user} ended\n`);
      }),
    );
}
