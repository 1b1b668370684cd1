/**
 * The LMTP part of `poplar serve`: from `[lmtp]` to a bound LmtpServer (or
 * none when `listen` is empty). Called before the switch to the service user
 * (a socket in Postfix's private/ directory needs root to be made); the
 * caller starts it after the switch.
 */
import { spawnSync } from 'node:child_process';
import os from 'node:os';
import type { Authenticator } from '../auth/types.js';
import { ConfigError } from '../config/errors.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/log.js';
import type { MailStore } from '../store/types.js';
import type { DeliveryObserver } from '../observability/metrics.js';
import { LmtpServer, lmtpListenSpecs } from './lmtp-server.js';

export interface LmtpDeps {
  readonly store: MailStore;
  readonly authenticator: Authenticator;
  readonly logger: Logger;
  /** A --workers worker: TCP listeners come from the primary; UNIX sockets are refused. */
  readonly worker: boolean;
  /** Told of every recipient's outcome (metrics). */
  readonly deliveries?: DeliveryObserver | undefined;
}

export async function bindLmtp(config: Config, deps: LmtpDeps): Promise<LmtpServer | null> {
  if (config.lmtp.listen.length === 0) return null;
  const specs = lmtpListenSpecs(config.lmtp);
  if (deps.worker && specs.some((s) => 'path' in s)) {
    throw new ConfigError('invalid configuration: lmtp.listen: a UNIX socket needs a single process (no --workers); use a loopback TCP address');
  }
  const server = new LmtpServer({
    config: config.lmtp,
    quota: config.quota,
    store: deps.store,
    authenticator: deps.authenticator,
    logger: deps.logger,
    hostname: config.server.hostname ?? os.hostname(),
    socketGid: config.lmtp.socket_group === undefined ? undefined : groupId(config.lmtp.socket_group),
    deliveries: deps.deliveries,
  });
  const bound = await server.listen(specs);
  for (const b of bound) deps.logger.info(b.path !== undefined ? { lmtp: b.path } : { lmtp: `${b.host}:${b.port}` }, 'lmtp listening');
  return server;
}

/** A group name or number, through NSS. */
function groupId(name: string): number {
  if (/^\d+$/.test(name)) return Number(name);
  const r = spawnSync('getent', ['group', '--', name], { encoding: 'utf8', timeout: 10_000 });
  const id = Number((r.stdout ?? '').split(':')[2]);
  if (r.status !== 0 || !Number.isInteger(id)) throw new ConfigError(`lmtp.socket_group: no such group: ${name}`);
  return id;
}
