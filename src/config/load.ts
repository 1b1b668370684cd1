import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { ConfigSchema, type Config } from './schema.js';
import { SERVER_MECHANISM_NAMES } from '../protocol/sasl/index.js';

import { ConfigError } from './errors.js';
import { parseCidr } from './cidr.js';
import type { SniCertificate } from './sni.js';

export { ConfigError };

export interface ServeFlags {
  config?: string;
  dataDir?: string;
  listen?: string[];
  listenTls?: string[];
  maildirRoot?: string;
  users?: string;
  tlsCert?: string;
  tlsKey?: string;
  logLevel?: string;
  workers?: number;
  user?: string;
  group?: string;
  allowRoot?: boolean;
}

/** Fully resolved settings: every path absolute, every default filled in. */
export interface ResolvedConfig extends Config {
  readonly dataDir: string;
  readonly maildirRoot: string;
  readonly usersFile: string;
  readonly tlsCertFile: string;
  readonly tlsKeyFile: string;
  readonly clientCaFile: string | undefined;
  /** `[[tls.sni]]`: a certificate per server name, files resolved. */
  readonly sniCertificates: readonly SniCertificate[];
  /** True when the certificate is ours to create (no cert configured). */
  readonly generateCertificate: boolean;
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = issue.path.length > 0 ? issue.path.join('.') : '(top level)';
  if (issue.code === 'unrecognized_keys') return `unknown setting ${issue.keys.map((k) => (issue.path.length ? `${where}.${k}` : k)).join(', ')}`;
  return `${where}: ${issue.message}`;
}

export function loadConfig(flags: ServeFlags, cwd = process.cwd()): ResolvedConfig {
  let raw: Record<string, unknown> = {};
  let base = cwd;
  if (flags.config !== undefined) {
    const file = path.resolve(cwd, flags.config);
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
    }
    try {
      raw = parseToml(text) as Record<string, unknown>;
    } catch (e) {
      const msg = (e as Error).message.split('\n')[0] ?? 'syntax error';
      throw new ConfigError(`config file ${file}: ${msg}`);
    }
    base = path.dirname(file);
  }
  const obj = structuredClone(raw) as Record<string, Record<string, unknown> | unknown>;
  const section = (name: string): Record<string, unknown> => {
    const s = obj[name];
    if (s === undefined) return ((obj[name] = {}) as Record<string, unknown>);
    if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new ConfigError(`${name}: expected a table`);
    return s as Record<string, unknown>;
  };
  // Command-line flags override the file; relative paths given on the command line are relative to cwd.
  if (flags.dataDir !== undefined) obj.data_dir = path.resolve(cwd, flags.dataDir);
  if (flags.logLevel !== undefined) obj.log_level = flags.logLevel;
  if (flags.listen !== undefined || flags.listenTls !== undefined) {
    // Naming any listener replaces both defaults: the admin says exactly what to open.
    section('server').listen = flags.listen ?? [];
    section('server').listen_tls = flags.listenTls ?? [];
  }
  if (flags.user !== undefined) section('server').user = flags.user;
  if (flags.group !== undefined) section('server').group = flags.group;
  if (flags.allowRoot === true) section('server').allow_root = true;
  if (flags.maildirRoot !== undefined) section('store').maildir_root = path.resolve(cwd, flags.maildirRoot);
  if (flags.users !== undefined) section('auth').users = path.resolve(cwd, flags.users);
  if (flags.tlsCert !== undefined) section('tls').cert = path.resolve(cwd, flags.tlsCert);
  if (flags.tlsKey !== undefined) section('tls').key = path.resolve(cwd, flags.tlsKey);

  const parsed = ConfigSchema.safeParse(obj);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new ConfigError(first ? `invalid configuration: ${describeIssue(first)}` : 'invalid configuration');
  }
  const c = parsed.data;
  if ((c.tls.cert === undefined) !== (c.tls.key === undefined)) {
    throw new ConfigError('invalid configuration: tls.cert and tls.key must be given together');
  }
  for (const a of [...c.server.listen, ...c.server.listen_tls]) {
    const port = Number(a.slice(a.lastIndexOf(':') + 1));
    if (port > 65535) throw new ConfigError(`invalid configuration: port out of range in ${a}`);
  }
  for (const m of c.server.sasl_mechanisms ?? []) {
    if (!SERVER_MECHANISM_NAMES.includes(m)) throw new ConfigError(`invalid configuration: server.sasl_mechanisms: unknown mechanism ${m} (known: ${SERVER_MECHANISM_NAMES.join(' ')})`);
  }
  if ((c.server.sasl_mechanisms ?? []).some((m) => m === 'XOAUTH2' || m === 'OAUTHBEARER') && c.auth.oauth === undefined) {
    throw new ConfigError('invalid configuration: server.sasl_mechanisms offers OAuth mechanisms but there is no [auth.oauth] section');
  }
  if (c.store.type === 'postgres' && c.store.postgres === undefined) {
    throw new ConfigError('invalid configuration: store.type = "postgres" needs a [store.postgres] section');
  }
  if (c.auth.type === 'postgres' && c.auth.postgres === undefined) {
    throw new ConfigError('invalid configuration: auth.type = "postgres" needs an [auth.postgres] section');
  }
  for (const cidr of c.server.trusted_proxies) {
    if (parseCidr(cidr) === null) throw new ConfigError(`invalid configuration: server.trusted_proxies: ${JSON.stringify(cidr)} is not an address or CIDR`);
  }
  if (c.server.proxy_protocol && c.server.trusted_proxies.length === 0) {
    throw new ConfigError('invalid configuration: server.proxy_protocol = true needs server.trusted_proxies (the load balancers\' addresses)');
  }
  const sniNames = new Set<string>();
  for (const e of c.tls.sni) {
    if (sniNames.has(e.name.toLowerCase())) throw new ConfigError(`invalid configuration: tls.sni: ${e.name} is listed twice`);
    sniNames.add(e.name.toLowerCase());
  }
  const dataDir = path.resolve(base, c.data_dir);
  const generateCertificate = c.tls.cert === undefined;
  return {
    ...c,
    dataDir,
    maildirRoot: path.resolve(base, c.store.maildir_root ?? path.join(dataDir, 'mail')),
    usersFile: path.resolve(base, c.auth.users ?? path.join(dataDir, 'users')),
    tlsCertFile: path.resolve(base, c.tls.cert ?? path.join(dataDir, 'tls', 'cert.pem')),
    tlsKeyFile: path.resolve(base, c.tls.key ?? path.join(dataDir, 'tls', 'key.pem')),
    clientCaFile: c.tls.client_ca !== undefined ? path.resolve(base, c.tls.client_ca) : undefined,
    sniCertificates: c.tls.sni.map((e) => ({ name: e.name, certFile: path.resolve(base, e.cert), keyFile: path.resolve(base, e.key) })),
    generateCertificate,
  };
}

export function parseHostPort(a: string): { host: string; port: number } {
  const i = a.lastIndexOf(':');
  let host = a.slice(0, i);
  if (host.startsWith('[')) host = host.slice(1, -1);
  return { host, port: Number(a.slice(i + 1)) };
}
