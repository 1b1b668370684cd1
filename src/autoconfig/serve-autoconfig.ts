/**
 * The autoconfig part of `poplar serve`: from `[autoconfig]` to a bound
 * AutoconfigServer, or none when it has no listener. The client settings
 * are derived (and checked) here, once, from the same configuration the
 * POP3 listeners use.
 */
import { ConfigError } from '../config/errors.js';
import type { ResolvedConfig } from '../config/load.js';
import { readTlsFiles } from '../config/tls-material.js';
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

/** The running listener, as `poplar serve` holds it. */
export interface AutoconfigService {
  readonly server: AutoconfigServer;
  /** After SIGHUP: settings derived again from the configuration in force (mechanisms, APOP, EXPIRE may have changed), the certificate read again. */
  reload(config: ResolvedConfig): Promise<void>;
  close(graceMs: number): Promise<void>;
}

export async function bindAutoconfig(config: ResolvedConfig, deps: AutoconfigDeps): Promise<AutoconfigService | null> {
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
  const stls = deps.tls !== undefined;
  return {
    server,
    close: (graceMs) => server.close(graceMs),
    reload: async (fresh) => {
      try {
        server.update(clientSettings(fresh, { stls }));
      } catch (e) {
        deps.logger.error({ err: (e as Error).message }, 'autoconfig: the reloaded configuration gives no client settings; keeping the previous ones');
      }
      if (!server.https) return;
      try {
        server.reloadTls({ ...(await readTlsFiles(fresh.tlsCertFile, fresh.tlsKeyFile)), minVersion: fresh.tls.min_version });
      } catch (e) {
        deps.logger.error({ err: (e as Error).message }, 'autoconfig: TLS reload failed; the HTTPS listener keeps the previous certificate');
      }
    },
  };
}
