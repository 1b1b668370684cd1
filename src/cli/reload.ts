import { isDeepStrictEqual } from 'node:util';
import { promises as fs } from 'node:fs';
import type { Authenticator } from '../auth/types.js';
import { ConfigError, loadConfig, type ResolvedConfig, type ServeFlags } from '../config/load.js';
import { readTlsFiles } from '../config/tls-material.js';
import type { Logger } from '../observability/log.js';
import type { Pop3Server, TlsMaterial } from '../server/server.js';

/**
 * SIGHUP: the configuration file is read again and what can change without
 * dropping a connection is applied to the sessions that start from then on:
 * certificates (the default one and those chosen by SNI), the user database,
 * limits and timeouts, the login throttle, SASL mechanisms, plaintext_auth,
 * the log level. A setting bound to something made at start (a listening
 * socket, the mail store, the service user, the workers) keeps its old value
 * until a restart; each one that changed is named in a log line. A file that
 * no longer parses or validates, a certificate that cannot be read or does not
 * match its key, or a user database that cannot be opened: logged, and the
 * old configuration stays in force, all of it.
 */

/** Settings applied on SIGHUP (dotted names; a name ending in `.` covers a whole section). */
const RELOADABLE = [
  'log_level',
  'tls.',
  'auth.',
  'server.hostname',
  'server.implementation',
  'server.plaintext_auth',
  'server.max_line_length',
  'server.max_auth_line_length',
  'server.max_bad_commands',
  'server.max_connections',
  'server.max_connections_per_ip',
  'server.ipv4_prefix',
  'server.ipv6_prefix',
  'server.login_timeout',
  'server.login_deadline',
  'server.idle_timeout',
  'server.auth_failure_delay',
  'server.auth_failure_max_delay',
  'server.auth_block_after',
  'server.apop',
  'server.sasl_mechanisms',
  'server.shutdown_grace',
  'server.login_delay',
  'server.expire',
];

const reloadable = (name: string): boolean => RELOADABLE.some((r) => (r.endsWith('.') ? name.startsWith(r) : name === r));

/** Every setting of the file's schema by dotted name (arrays are one value). */
function flatten(v: unknown, prefix: string, out: Map<string, unknown>): Map<string, unknown> {
  if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
    for (const [k, x] of Object.entries(v as Record<string, unknown>)) flatten(x, prefix === '' ? k : `${prefix}.${k}`, out);
  } else out.set(prefix, v);
  return out;
}

/** The schema's part of a resolved config (the resolved paths repeat it). */
function settingsOf(c: ResolvedConfig): Record<string, unknown> {
  const { dataDir: _d, maildirRoot: _m, usersFile: _u, tlsCertFile: _c, tlsKeyFile: _k, clientCaFile: _a, sniCertificates: _s, generateCertificate: _g, ...rest } = c;
  return rest;
}

/** Names of the settings that differ between `old` and `fresh`, split by whether SIGHUP applies them. */
export function changedSettings(old: ResolvedConfig, fresh: ResolvedConfig): { applied: string[]; needRestart: string[] } {
  const a = flatten(settingsOf(old), '', new Map());
  const b = flatten(settingsOf(fresh), '', new Map());
  const applied: string[] = [];
  const needRestart: string[] = [];
  for (const name of new Set([...a.keys(), ...b.keys()])) {
    if (isDeepStrictEqual(a.get(name), b.get(name))) continue;
    (reloadable(name) ? applied : needRestart).push(name);
  }
  return { applied: applied.sort(), needRestart: needRestart.sort() };
}

/** The certificate and key, the client CA and every SNI certificate, read now (throws on any failure). */
export async function readTlsMaterial(config: ResolvedConfig): Promise<TlsMaterial> {
  const main = await readTlsFiles(config.tlsCertFile, config.tlsKeyFile);
  const sni = await Promise.all(
    config.sniCertificates.map(async (e) => {
      try {
        return { name: e.name, ...(await readTlsFiles(e.certFile, e.keyFile)) };
      } catch (err) {
        throw new Error(`the certificate for ${e.name}: ${(err as Error).message}`);
      }
    }),
  );
  return {
    ...main,
    minVersion: config.tls.min_version,
    ...(config.clientCaFile !== undefined ? { clientCa: await fs.readFile(config.clientCaFile) } : {}),
    sni,
  };
}

export interface ReloaderDeps {
  readonly flags: ServeFlags;
  readonly server: Pop3Server;
  readonly logger: Logger;
  /** Whether the server has TLS material at all (a listener or STLS needs it). */
  readonly tls: boolean;
  /** Whether an LMTP listener runs (it keeps the user database it started with). */
  readonly lmtp: boolean;
  /** The service user's name, for a failure to read a file after the switch. */
  readonly serviceUser: string | undefined;
  readonly buildAuthenticator: (config: ResolvedConfig) => Promise<Authenticator>;
}

/** Holds the configuration in force and applies a new one on SIGHUP. */
export class Reloader {
  #config: ResolvedConfig;
  #authenticator: Authenticator;
  /** Replaced user databases: a session may still be using one; closed at stop. */
  readonly #retired: Authenticator[] = [];
  readonly #deps: ReloaderDeps;
  #running: Promise<void> = Promise.resolve();

  constructor(deps: ReloaderDeps, config: ResolvedConfig, authenticator: Authenticator) {
    this.#deps = deps;
    this.#config = config;
    this.#authenticator = authenticator;
  }

  get config(): ResolvedConfig {
    return this.#config;
  }

  /** One reload at a time: a second SIGHUP during one runs after it. */
  reload(): Promise<void> {
    this.#running = this.#running.then(() => this.#reload());
    return this.#running;
  }

  async #reload(): Promise<void> {
    const { logger, server } = this.#deps;
    let fresh: ResolvedConfig;
    try {
      fresh = loadConfig(this.#deps.flags);
    } catch (e) {
      logger.error({ err: e instanceof ConfigError ? e.message : String(e) }, `reload failed: ${e instanceof Error ? e.message : String(e)}; keeping the previous configuration`);
      return;
    }
    const { applied, needRestart } = changedSettings(this.#config, fresh);
    // The user database first: it makes no change the server sees until reconfigure() below.
    let authenticator = this.#authenticator;
    const authChanged = !isDeepStrictEqual(this.#config.auth, fresh.auth) || this.#config.usersFile !== fresh.usersFile;
    if (authChanged) {
      try {
        authenticator = await this.#deps.buildAuthenticator(fresh);
      } catch (e) {
        logger.error({ err: (e as Error).message }, `reload failed: ${(e as Error).message}; keeping the previous configuration`);
        return;
      }
    }
    let material: TlsMaterial | undefined;
    if (this.#deps.tls) {
      try {
        material = await readTlsMaterial(fresh);
        // Every context is made before any is used: a bad certificate or a key that does not match changes nothing.
        server.reloadTls(material);
      } catch (e) {
        if (authenticator !== this.#authenticator) await authenticator.close?.().catch(() => undefined);
        const code = (e as NodeJS.ErrnoException).code;
        logger.error(
          { err: (e as Error).message },
          code === 'EACCES' && this.#deps.serviceUser !== undefined
            ? `TLS reload failed: user ${this.#deps.serviceUser} cannot read the certificate or key; keeping the previous certificate and configuration`
            : `TLS reload failed: ${(e as Error).message}; keeping the previous certificate and configuration`,
        );
        return;
      }
    }
    // What needs a restart keeps its old value: only the reloadable settings are taken from the new file.
    const old = this.#config;
    const settings = { ...old.server };
    for (const k of Object.keys(fresh.server) as (keyof typeof settings)[]) {
      if (reloadable(`server.${k}`)) (settings as Record<string, unknown>)[k] = fresh.server[k];
    }
    server.reconfigure({ settings, authenticator, oauth: fresh.auth.oauth !== undefined });
    if (authenticator !== this.#authenticator) this.#retired.push(this.#authenticator);
    this.#authenticator = authenticator;
    logger.level = fresh.log_level;
    this.#config = {
      ...old,
      log_level: fresh.log_level,
      server: settings,
      tls: fresh.tls,
      auth: fresh.auth,
      usersFile: fresh.usersFile,
      tlsCertFile: fresh.tlsCertFile,
      tlsKeyFile: fresh.tlsKeyFile,
      clientCaFile: fresh.clientCaFile,
      sniCertificates: fresh.sniCertificates,
      generateCertificate: fresh.generateCertificate,
    };
    for (const name of needRestart) {
      logger.warn({ setting: name }, `reload: ${name} changed but needs a restart to take effect; the running server keeps the old value`);
    }
    if (authChanged && this.#deps.lmtp) {
      logger.warn({ setting: 'auth' }, 'reload: the LMTP listener keeps the user database it started with until a restart');
    }
    logger.info({ changed: applied, tls: material !== undefined ? 1 + (material.sni?.length ?? 0) : 0 }, 'configuration reloaded');
  }

  /** The user database in force now. */
  get authenticator(): Authenticator {
    return this.#authenticator;
  }

  /** Close the user databases replaced by reloads. */
  async close(): Promise<void> {
    await Promise.allSettled(this.#retired.map((a) => a.close?.()));
  }
}
