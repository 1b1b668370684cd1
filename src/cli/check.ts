import { promises as fs } from 'node:fs';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import path from 'node:path';
import type { Command } from 'commander';
import type { PostgresConfigInput } from '../auth/postgres/config.js';
import { ConfigError, loadConfig, type ResolvedConfig } from '../config/load.js';
import { EX_CONFIG, EX_OK } from './exit-codes.js';
import { resolveServiceIdentity, type ServiceIdentity } from './privileges.js';

/**
 * `poplar check [--config FILE]`: what would stop `poplar serve`, or make it
 * unsafe, found before it runs. One line per finding; exit 0 when there is no
 * problem (warnings allowed), 78 (EX_CONFIG) otherwise. It reads the same
 * configuration as `serve` and changes nothing.
 */

export interface Finding {
  readonly level: 'problem' | 'warning';
  readonly text: string;
}

/** A certificate that ends within this many days is a warning (an ACME client renews at 30). */
export const EXPIRY_WARNING_DAYS = 14;

const DAY_MS = 86_400_000;

/** Who the files must be usable by: the service user, or the account running the check. */
interface Account {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

const R = 4;
const W = 2;
const X = 1;

/**
 * Whether `who` may use `p` for `want` (R|W|X bits), the way the kernel
 * decides for a process with that uid and only that group (Poplar keeps no
 * supplementary groups), every directory on the way needing search (x).
 * Null when it may, else why not.
 */
async function usableBy(p: string, who: Account, want: number): Promise<string | null> {
  if (who.uid === 0) return null;
  const bits = (st: { uid: number; gid: number; mode: number }): number =>
    st.uid === who.uid ? (st.mode >> 6) & 7 : st.gid === who.gid ? (st.mode >> 3) & 7 : st.mode & 7;
  const abs = path.resolve(p);
  for (let dir = path.dirname(abs); ; dir = path.dirname(dir)) {
    const st = await fs.stat(dir).catch(() => null);
    if (st !== null && (bits(st) & X) === 0) return `cannot enter ${dir}`;
    if (dir === path.dirname(dir)) break;
  }
  const st = await fs.stat(abs).catch((e: NodeJS.ErrnoException) => e);
  if (st instanceof Error) return st.code ?? st.message;
  const missing = want & ~bits(st);
  if (missing === 0) return null;
  return `no ${[missing & R ? 'read' : '', missing & W ? 'write' : '', missing & X ? (st.isDirectory() ? 'search' : 'execute') : ''].filter(Boolean).join('/')} permission`;
}

/** PEM certificates in a file, in order (leaf first). */
function parseChain(pem: string): X509Certificate[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  return blocks.map((b) => new X509Certificate(b));
}

/** A name a wildcard entry stands for, to ask the certificate about. */
const sampleHost = (name: string): string => (name.startsWith('*.') ? `poplar-check.${name.slice(2)}` : name);

async function checkMode(file: string, what: string, out: Finding[], secret: boolean): Promise<void> {
  const st = await fs.stat(file).catch(() => null);
  if (st === null) return;
  if ((st.mode & 0o002) !== 0) out.push({ level: 'problem', text: `${what} ${file} is writable by every user (mode ${(st.mode & 0o777).toString(8)}): chmod o-w` });
  if (secret && (st.mode & 0o004) !== 0) out.push({ level: 'problem', text: `${what} ${file} is readable by every user (mode ${(st.mode & 0o777).toString(8)}): chmod o-r (e.g. 0640, group of the service user)` });
}

/** One certificate file and its key: readable, parsed, matching, in date, a chain whose links verify. */
async function checkCertificate(certFile: string, keyFile: string, label: string, now: Date, who: Account, rootStart: boolean, out: Finding[], serverName?: string): Promise<void> {
  let chain: X509Certificate[];
  try {
    chain = parseChain(await fs.readFile(certFile, 'utf8'));
  } catch (e) {
    out.push({ level: 'problem', text: `${label}: cannot read ${certFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
    return;
  }
  if (chain.length === 0) {
    out.push({ level: 'problem', text: `${label}: ${certFile} holds no PEM certificate` });
    return;
  }
  const leaf = chain[0]!;
  try {
    const key = createPrivateKey(await fs.readFile(keyFile));
    if (!leaf.checkPrivateKey(key)) out.push({ level: 'problem', text: `${label}: the key ${keyFile} does not match the certificate ${certFile}` });
  } catch (e) {
    out.push({ level: 'problem', text: `${label}: cannot use the key ${keyFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
  }
  await checkMode(keyFile, `${label}: the private key`, out, true);
  await checkMode(certFile, `${label}: the certificate`, out, false);
  for (const [i, c] of chain.entries()) {
    const which = i === 0 ? 'the certificate' : `certificate ${i + 1} of the chain (${c.subject.replace(/\n/g, ', ')})`;
    const end = new Date(c.validTo);
    const days = Math.floor((end.getTime() - now.getTime()) / DAY_MS);
    if (end.getTime() <= now.getTime()) out.push({ level: 'problem', text: `${label}: ${which} in ${certFile} expired on ${end.toISOString()}` });
    else if (days < EXPIRY_WARNING_DAYS) out.push({ level: 'warning', text: `${label}: ${which} in ${certFile} expires in ${days} days (${end.toISOString()})` });
    if (new Date(c.validFrom).getTime() > now.getTime()) out.push({ level: 'problem', text: `${label}: ${which} in ${certFile} is not valid before ${new Date(c.validFrom).toISOString()}` });
    const next = chain[i + 1];
    if (next !== undefined && !(c.checkIssued(next) && c.verify(next.publicKey))) {
      out.push({ level: 'problem', text: `${label}: in ${certFile}, certificate ${i + 1} is not signed by certificate ${i + 2} (the chain is out of order or mixed up)` });
    }
  }
  if (serverName !== undefined && leaf.checkHost(sampleHost(serverName), { wildcards: true }) === undefined) {
    out.push({ level: 'warning', text: `${label}: the certificate in ${certFile} is not for ${serverName} (clients will reject it)` });
  }
  // Started as root, Poplar reads the key before the switch; SIGHUP and a replacement worker read it as the service user.
  const why = await usableBy(keyFile, who, R);
  if (why !== null) {
    out.push(
      rootStart
        ? { level: 'warning', text: `${label}: user ${who.name} cannot read the key ${keyFile} (${why}): SIGHUP cannot reload it and a replacement worker cannot start` }
        : { level: 'problem', text: `${label}: user ${who.name} cannot read the key ${keyFile} (${why})` },
    );
  }
}

/** Connects and runs one query; null when that worked, else why not. */
async function reachPostgres(config: PostgresConfigInput): Promise<string | null> {
  // Loaded only here: every other command starts without the database driver.
  const { default: pg } = await import('pg');
  const { postgresClientConfig } = await import('../auth/postgres/config.js');
  const client = new pg.Client(postgresClientConfig(config));
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('SELECT 1');
    return null;
  } catch (e) {
    return (e as Error).message || String(e);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Every finding for the configuration `flags` name (nothing is changed). */
export async function checkConfiguration(flags: { config?: string }, now = new Date()): Promise<Finding[]> {
  const out: Finding[] = [];
  let config: ResolvedConfig;
  try {
    config = loadConfig(flags);
  } catch (e) {
    if (e instanceof ConfigError) return [{ level: 'problem', text: e.message }];
    throw e;
  }
  if (flags.config !== undefined) await checkMode(path.resolve(flags.config), 'the configuration file', out, false);

  let identity: ServiceIdentity | null = null;
  try {
    identity = resolveServiceIdentity(config.server);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    out.push({ level: 'problem', text: e.message });
  }
  const euid = process.geteuid?.() ?? -1;
  const who: Account =
    identity !== null
      ? { name: identity.user, uid: identity.uid, gid: identity.gid }
      : { name: process.env['USER'] ?? `uid ${euid}`, uid: euid, gid: process.getegid?.() ?? -1 };
  const rootStart = euid === 0;

  // Certificates: the default one (unless it is yet to be made) and every SNI entry.
  const generated = config.generateCertificate && !(await fs.access(config.tlsCertFile).then(() => true, () => false));
  if (!generated) await checkCertificate(config.tlsCertFile, config.tlsKeyFile, 'tls', now, who, rootStart, out, config.server.hostname);
  for (const e of config.sniCertificates) await checkCertificate(e.certFile, e.keyFile, `tls.sni ${e.name}`, now, who, rootStart, out, e.name);
  if (config.clientCaFile !== undefined) {
    try {
      if (parseChain(await fs.readFile(config.clientCaFile, 'utf8')).length === 0) out.push({ level: 'problem', text: `tls.client_ca: ${config.clientCaFile} holds no PEM certificate` });
    } catch (e) {
      out.push({ level: 'problem', text: `tls.client_ca: cannot read ${config.clientCaFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}` });
    }
  }

  // The users file: readable by the service user, by nobody else.
  if (config.auth.type === 'passwd-file') {
    if (!(await fs.access(config.usersFile).then(() => true, () => false))) {
      out.push({ level: 'warning', text: `auth.users: ${config.usersFile} does not exist yet (the first start creates it with a demo user)` });
    } else {
      await checkMode(config.usersFile, 'auth.users: the users file', out, true);
      const why = await usableBy(config.usersFile, who, R);
      if (why !== null) out.push({ level: 'problem', text: `auth.users: user ${who.name} cannot read ${config.usersFile} (${why})` });
    }
  }

  // Directories the service user writes.
  const dirs: [string, string][] = [['data_dir', config.dataDir]];
  if (config.store.type === 'maildir') dirs.push(['store.maildir_root', config.maildirRoot]);
  for (const [name, dir] of dirs) {
    const st = await fs.stat(dir).catch(() => null);
    if (st === null) {
      out.push({ level: 'warning', text: `${name}: ${dir} does not exist yet (the first start creates it)` });
      continue;
    }
    if (!st.isDirectory()) {
      out.push({ level: 'problem', text: `${name}: ${dir} is not a directory` });
      continue;
    }
    const why = await usableBy(dir, who, R | W | X);
    if (why !== null) out.push({ level: 'problem', text: `${name}: user ${who.name} cannot write ${dir} (${why})` });
    if ((st.mode & 0o002) !== 0) out.push({ level: 'problem', text: `${name}: ${dir} is writable by every user (mode ${(st.mode & 0o777).toString(8)})` });
  }

  // Backends.
  const pgs: [string, PostgresConfigInput | undefined][] = [];
  if (config.auth.type === 'postgres') pgs.push(['auth.postgres', config.auth.postgres]);
  if (config.store.type === 'postgres') pgs.push(['store.postgres', config.store.postgres]);
  for (const [name, c] of pgs) {
    if (c === undefined) continue;
    const why = await reachPostgres(c);
    if (why !== null) out.push({ level: 'problem', text: `${name}: cannot reach PostgreSQL: ${why}` });
  }
  return out;
}

export function registerCheckCommand(program: Command): void {
  program
    .command('check')
    .description('check the configuration, certificates, file permissions and backends; exit 0, or 78 with one line per problem')
    .option('--config <file>', 'TOML configuration file (as for serve)')
    .action(async (opts: { config?: string }) => {
      const { lines, code } = report(await checkConfiguration(opts), opts.config);
      process.stdout.write(lines.map((l) => `${l}\n`).join(''));
      process.exitCode = code;
    });
}

/** What `poplar check` prints, and its exit code. */
export function report(findings: readonly Finding[], config: string | undefined): { lines: string[]; code: number } {
  const lines = findings.map((f) => `${f.level}: ${f.text}`);
  const problems = findings.filter((f) => f.level === 'problem').length;
  if (problems === 0) lines.push(`ok: ${config ?? 'the default configuration'} (${findings.length} warning${findings.length === 1 ? '' : 's'})`);
  return { lines, code: problems === 0 ? EX_OK : EX_CONFIG };
}
