/**
 * The autoconfig part of `poplar serve`: from `[autoconfig]` to a bound
 * AutoconfigServer, or none when it has no listener. The client settings
 * are derived (and checked) here, once, from the same configuration the
 * POP3 listeners use.
 */
import { ConfigError } from '../config/errors.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../observability/log.js';
import { AutoconfigServer, type AutoconfigTls, type HttpListenSpec } from './http-server.js';
import { clientSettings } from './settings.js';

export interface AutoconfigDeps {
  readonly logger: Logger;
  /** The POP3 server's certificate and key (STLS is on offer only with them; HTTPS uses them). */
  readonly tls: AutoconfigTls | undefined;
}

function spec(a: string, tls: boolean): HttpListenSpec {
  const i = a.lastIndexOf(':');
  const host = a.slice(0, i).replace(/^\[(.*)\]$/, '$1');
  const port = Number(a.slice(i + 1));
  if (port > 65535) throw new ConfigError(`invalid configuration: autoconfig: port out of range in ${a}`);
  return { host, port, tls };
}

export async function bindAutoconfig(config: Config, deps: AutoconfigDeps): Promise<AutoconfigServer | null> {
  const a = config.autoconfig;
  if (a.listen.length === 0 && a.listen_tls.length === 0) return null;
  const specs = [...a.listen.map((x) => spec(x, false)), ...a.listen_tls.map((x) => spec(x, true))];
  if (a.listen_tls.length > 0 && deps.tls === undefined) throw new ConfigError('invalid configuration: autoconfig.listen_tls needs the [tls] certificate');
  const settings = clientSettings(config, { stls: deps.tls !== undefined });
  if (settings.outgoing === undefined) {
    deps.logger.warn({ autoconfig: 'smtp_host' }, 'autoconfig: no outgoing server (autoconfig.smtp_host): Thunderbird rejects a configuration without one and no Apple profile is offered');
  }
  const server = new AutoconfigServer({ settings, logger: deps.logger, tls: deps.tls, maxConnections: a.max_connections });
  const bound = await server.listen(specs);
  for (const b of bound) deps.logger.info({ autoconfig: `${b.host.includes(':') ? `[${b.host}]` : b.host}:${b.port}`, tls: b.tls }, 'autoconfig listening');
  return server;
}
