/**
 * Test helpers for delivery: `poplar serve` with an LMTP listener over
 * either store (a random PostgreSQL schema for each server), swaks as the
 * LMTP client, and retrieval of a whole maildrop over POP3 as the bytes a
 * client gets (dot-unstuffed).
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { startServe, type ServeProcess } from './cli.js';
import { Wire } from './wire.js';

/** The tests' PostgreSQL (POSTGRES_CONNECTION of peers.ts, which the bench cannot import: it loads vitest). */
export const POSTGRES_CONNECTION = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };

export type StoreKind = 'maildir' | 'postgres';

export interface LmtpUser {
  name: string;
  password?: string;
  quotaBytes?: number;
  quotaMessages?: number;
}

export interface LmtpPoplar {
  readonly dir: string;
  readonly serve: ServeProcess;
  readonly pop3Port: number;
  readonly lmtpPort: number;
  readonly socketPath: string;
  readonly maildirRoot: string;
  readonly schema: string | undefined;
  readonly configFile: string;
  stop(): Promise<void>;
}

const URL = `postgres://${POSTGRES_CONNECTION.user}@${POSTGRES_CONNECTION.host}:${POSTGRES_CONNECTION.port}/${POSTGRES_CONNECTION.database}`;

export function passwdLine(u: LmtpUser): string {
  const extra = [u.quotaBytes !== undefined ? `quota_bytes=${u.quotaBytes}` : '', u.quotaMessages !== undefined ? `quota_messages=${u.quotaMessages}` : ''].filter(Boolean).join(' ');
  return `${u.name}:{PLAIN}${u.password ?? 'secret'}::::::${extra}\n`;
}

/** Config text for a Poplar with LMTP on 127.0.0.1:0 and a UNIX socket in `dir`. */
export function lmtpConfig(dir: string, store: StoreKind, schema: string | undefined, extra: { lmtp?: string[]; quota?: string[]; fsync?: boolean; user?: string } = {}): string {
  return [
    `data_dir = ${JSON.stringify(dir)}`,
    'log_format = "json"',
    '[server]',
    'listen = ["127.0.0.1:0"]',
    'listen_tls = []',
    ...(extra.user !== undefined ? [`user = "${extra.user}"`] : []),
    '[auth]',
    `users = ${JSON.stringify(path.join(dir, 'users'))}`,
    '[store]',
    `type = "${store}"`,
    ...(extra.fsync === false ? ['fsync = false'] : []),
    ...(store === 'postgres' ? ['[store.postgres]', `url = "${URL}"`, `schema = "${schema}"`, 'pool_size = 8'] : []),
    '[lmtp]',
    `listen = ["127.0.0.1:0", ${JSON.stringify(path.join(dir, 'lmtp.sock'))}]`,
    ...(extra.lmtp ?? []),
    '[quota]',
    ...(extra.quota ?? []),
    '',
  ].join('\n');
}

export async function createSchema(): Promise<string> {
  const schema = `poplar_lmtp_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client(POSTGRES_CONNECTION);
  await admin.connect();
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.end();
  return schema;
}

export async function dropSchema(schema: string): Promise<void> {
  const admin = new pg.Client(POSTGRES_CONNECTION);
  await admin.connect();
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await admin.end();
}

/** `poplar serve` with POP3 on a free port and LMTP on a free port and a UNIX socket. */
export async function startLmtpPoplar(
  store: StoreKind,
  users: LmtpUser[],
  extra: { lmtp?: string[]; quota?: string[]; dir?: string; fsync?: boolean; schema?: string; env?: NodeJS.ProcessEnv; user?: string } = {},
): Promise<LmtpPoplar> {
  const dir = extra.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-lmtp-')));
  const schema = store === 'postgres' ? (extra.schema ?? (await createSchema())) : undefined;
  await fs.writeFile(path.join(dir, 'users'), users.map(passwdLine).join(''), { mode: 0o644 });
  const configFile = path.join(dir, 'poplar.toml');
  await fs.writeFile(configFile, lmtpConfig(dir, store, schema, extra));
  const serve = await startServe(['--config', configFile], { cwd: dir, expectListeners: 1, ...(extra.env !== undefined ? { env: extra.env } : {}) });
  let lmtpPort = 0;
  for (const line of serve.stderr().split('\n')) {
    if (!line.includes('lmtp listening')) continue;
    const m = /"lmtp":"127\.0\.0\.1:(\d+)"/.exec(line);
    if (m) lmtpPort = Number(m[1]);
  }
  if (lmtpPort === 0) throw new Error(`no LMTP listener:\n${serve.stderr()}`);
  return {
    dir,
    serve,
    pop3Port: serve.plainPort,
    lmtpPort,
    socketPath: path.join(dir, 'lmtp.sock'),
    maildirRoot: path.join(dir, 'mail'),
    schema,
    configFile,
    stop: async () => {
      await serve.stop();
      if (schema !== undefined && extra.schema === undefined) await dropSchema(schema);
      if (extra.dir === undefined) await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

export interface SwaksResult {
  code: number | null;
  out: string;
  /** The server's reply lines (`<-  250 ...` / `<** 550 ...`), without the arrows. */
  replies: string[];
}

export function swaks(args: string[], input?: string | Buffer): Promise<SwaksResult> {
  return new Promise((resolve, reject) => {
    const child = execFile('swaks', ['--protocol', 'LMTP', '--helo', 'mta.test', '--timeout', '20', ...args], { encoding: 'utf8', timeout: 30_000 }, (err, stdout, stderr) => {
      const out = stdout + stderr;
      const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null;
      if (code === null && err !== null) return reject(err);
      const replies = out
        .split('\n')
        .filter((l) => /^<(-|\*\*) /.test(l))
        .map((l) => l.replace(/^<(-|\*\*)\s+/, ''));
      resolve({ code, out, replies });
    });
    child.stdin?.end(input ?? '');
  });
}

/** Every message of a maildrop over POP3, as the client gets it (dot-unstuffed, CRLF). */
export async function retrieveAll(port: number, user: string, password = 'secret'): Promise<Buffer[]> {
  const wire = await Wire.connect(port);
  try {
    await wire.line();
    await wire.login(user, password);
    const list = await wire.cmdLines('LIST');
    const out: Buffer[] = [];
    for (const l of list.lines) {
      const n = l.split(' ')[0];
      const { status, body } = await wire.cmdMulti(`RETR ${n}`);
      if (!status.startsWith('+OK')) throw new Error(`RETR ${n}: ${status}`);
      out.push(unstuff(body));
    }
    await wire.cmd('QUIT');
    return out;
  } finally {
    wire.close();
  }
}

/** A multi-line POP3 body (with its terminator) as the message bytes. */
export function unstuff(body: Buffer): Buffer {
  const text = body.subarray(0, body.length - 3).toString('latin1');
  return Buffer.from(text.replace(/(^|\r\n)\.\./g, '$1.'), 'latin1');
}
