import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ConfigError } from '../config/errors.js';
import type { ResolvedConfig } from '../config/load.js';
import type { Logger } from '../observability/log.js';
import { AdminServer, type AdminBackend } from './http.js';

/** Shortest token accepted from token_file. */
const MIN_TOKEN = 16;

/**
 * Bind the admin listener and socket of `[admin]` (as root, before the switch
 * to the service user: the token file may be root's alone, and the socket is
 * given to the service group here). `serviceGid`: the group of `[server] user`.
 */
export async function bindAdmin(config: ResolvedConfig, backend: AdminBackend, logger: Logger, serviceGid: number | undefined): Promise<AdminServer> {
  const c = config.admin;
  const token = c.token_file === undefined ? undefined : readToken(c.token_file);
  const gid = c.socket_group !== undefined ? groupId(c.socket_group) : serviceGid;
  const server = new AdminServer(c, backend, logger, token);
  const bound = await server.listen(gid);
  if (bound.tcp !== undefined) logger.info({ admin: `${bound.tcp.host.includes(':') ? `[${bound.tcp.host}]` : bound.tcp.host}:${bound.tcp.port}` }, 'admin listening');
  if (bound.socket !== undefined) logger.info({ adminSocket: bound.socket }, 'admin socket listening');
  return server;
}

/** The token from `token_file`: its first line, at least MIN_TOKEN printable characters. */
export function readToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read admin.token_file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  const token = (text.split('\n')[0] ?? '').trim();
  if (token.length < MIN_TOKEN || !/^[\x21-\x7e]+$/.test(token)) {
    throw new ConfigError(`admin.token_file ${file}: expected one line of at least ${MIN_TOKEN} printable characters without spaces`);
  }
  return token;
}

/** A group name or number, through NSS. */
function groupId(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  const r = spawnSync('getent', ['group', '--', name], { encoding: 'utf8', timeout: 10_000 });
  const id = Number((r.stdout ?? '').split(':')[2]);
  if (r.status !== 0 || !Number.isInteger(id)) throw new ConfigError(`admin.socket_group: no such group: ${name}`);
  return id;
}
