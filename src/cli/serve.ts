import cluster from 'node:cluster';
import { constants as fsc, promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { ChainAuthenticator } from '../auth/chain.js';
import { OAuthAuthenticator } from '../auth/oauth/index.js';
import { PasswdFileAuthenticator } from '../auth/passwd-file/authenticator.js';
import { PostgresAuthenticator } from '../auth/postgres/index.js';
import type { Authenticator } from '../auth/types.js';
import { addUser, listUsers } from '../auth/passwd-file/passwd-file.js';
import { hashPassword } from '../auth/schemes.js';
import { ConfigError, loadConfig, parseHostPort, type ResolvedConfig, type ServeFlags } from '../config/load.js';
import { ensureSelfSignedCertificate } from '../config/tls-material.js';
import { readTlsMaterial, Reloader } from './reload.js';
import { createLogger, type Logger } from '../observability/log.js';
import { Pop3Server, type BoundListener, type ListenSpec, type TlsMaterial } from '../server/server.js';
import { fileCodec } from '../server/retr-file.js';
import { MaildirStore } from '../store/maildir/maildir-store.js';
import { PostgresStore } from '../store/postgres/postgres-store.js';
import type { MailStore } from '../store/types.js';
import { dropPrivileges, Handover, resolveServiceIdentity, usable, type ServiceIdentity } from './privileges.js';
import { sharedLimits } from './shared-limits.js';
import { bindLmtp } from '../delivery/serve-lmtp.js';
import type { LmtpServer } from '../delivery/lmtp-server.js';
import { bindAutoconfig, type AutoconfigService } from '../autoconfig/serve-autoconfig.js';
import { adminEnabled, ProcessAdmin } from '../admin/process-admin.js';
import { bindAdmin } from '../admin/bind.js';
import { serveAdminRequests } from '../admin/cluster-admin.js';
import type { AdminServer } from '../admin/http.js';

export interface RunningServer {
  readonly server: Pop3Server;
  readonly listeners: BoundListener[];
  readonly config: ResolvedConfig;
  readonly logger: Logger;
  reload(): Promise<void>;
  stop(): Promise<void>;
}

/** Compose config → store, authenticator, listeners. No protocol logic here. */
export async function startServer(flags: ServeFlags, out: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<RunningServer> {
  const config = loadConfig(flags);
  // Root without `user`, an unknown account, a switch only root could make: one line, exit 78.
  const identity = resolveServiceIdentity(config.server);
  const logger = createLogger({ level: config.log_level, format: config.log_format });

  // Metrics, health and who/kick (docs/monitoring.md): the backends are timed by a decorator.
  const admin = adminEnabled(config) ? new ProcessAdmin(config) : null;
  const timedAuth = (a: Authenticator): Authenticator => admin?.meters.instrumentAuthenticator(a) ?? a;
  // The user database first: an unreachable one is reported before anything is created.
  const authenticator = timedAuth(await buildAuthenticator(config, logger));
  // Then the mail store, for the same reason.
  const store = await buildStore(config, logger).catch(async (e: unknown) => {
    await authenticator.close?.().catch(() => undefined);
    throw e;
  });
  // Login failure counters and LOGIN-DELAY times: the database, the --workers primary, or this process.
  const limits = await sharedLimits(config, logger, cluster.isWorker).catch(async (e: unknown) => {
    await store.close?.().catch(() => undefined);
    await authenticator.close?.().catch(() => undefined);
    throw e;
  });
  // What Poplar creates for itself as root is handed to the service user (below, before the switch).
  const handover = new Handover(identity);
  await handover.mkdir(config.dataDir, 0o700);
  if (store instanceof MaildirStore) await handover.mkdir(config.maildirRoot, 0o700);
  const needTls = config.server.listen_tls.length > 0 || !config.generateCertificate || config.server.listen.length > 0;
  let tls: TlsMaterial | undefined;
  if (needTls) {
    if (config.generateCertificate) {
      await handover.mkdir(path.dirname(config.tlsCertFile), 0o700);
      await handover.mkdir(path.dirname(config.tlsKeyFile), 0o700);
      if (await ensureSelfSignedCertificate(config.tlsCertFile, config.tlsKeyFile, config.server.hostname ?? 'localhost')) {
        handover.add(config.tlsCertFile, config.tlsKeyFile);
        logger.info({ cert: config.tlsCertFile }, 'created a self-signed certificate');
      }
    }
    // Read now, while still root: the key may be readable by root only.
    try {
      tls = await readTlsMaterial(config);
    } catch (e) {
      await handover.commit(); // what was created is still the service user's on the next start
      throw new ConfigError(`cannot read TLS certificate or key: ${(e as Error).message}`);
    }
  }

  const listenSpecs: ListenSpec[] = [
    ...config.server.listen.map((a) => ({ ...parseHostPort(a), tls: false })),
    ...config.server.listen_tls.map((a) => ({ ...parseHostPort(a), tls: true })),
  ];
  if (listenSpecs.length === 0) throw new ConfigError('invalid configuration: no listeners (server.listen and server.listen_tls are both empty)');

  const demo = config.auth.type === 'passwd-file' ? await ensureDemoUser(config, store, handover) : null;
  await handover.commit();

  let server: Pop3Server;
  let listeners: BoundListener[];
  let lmtp: LmtpServer | null = null;
  let autoconfig: AutoconfigService | null = null;
  let adminServer: AdminServer | null = null;
  const served = admin?.meters.instrumentStore(store) ?? store;
  try {
    server = new Pop3Server({
      settings: config.server,
      authenticator,
      store: served,
      logger,
      observers: admin?.observers() ?? [],
      tls,
      oauth: config.auth.oauth !== undefined,
      throttleStore: limits.throttleStore,
      loginDelayStore: limits.loginDelayStore,
    });
    // A --workers worker never binds: the primary (still root) makes the listening sockets and
    // passes them over, so the worker switches before it has a socket. A single process binds
    // as root, and switches as soon as every listener is bound, before its event loop can accept
    // a connection (Node binds synchronously; nothing here waits on I/O in between).
    if (cluster.isWorker) switchUser(identity, logger);
    // LMTP (docs/delivery.md) is bound with the POP3 listeners and serves only after the switch.
    // The admin listener of a single process (under --workers the primary has it).
    if (admin !== null && !cluster.isWorker) adminServer = await bindAdmin(config, admin, logger, identity?.gid);
    lmtp = await bindLmtp(config, { store: served, authenticator, logger, worker: cluster.isWorker, deliveries: admin?.meters.deliveryObserver() });
    // Mail-client setup over HTTP (docs/client-setup.md): bound before the switch (ports 80 and 443 need root).
    autoconfig = await bindAutoconfig(config, { logger, tls });
    listeners = await server.listen(listenSpecs);
    admin?.listening();
    if (admin !== null) serveAdminRequests(admin);
    if (!cluster.isWorker) switchUser(identity, logger);
    lmtp?.start();
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { address?: string; port?: number };
    if (err.code === 'EADDRINUSE' || err.code === 'EACCES' || err.code === 'EADDRNOTAVAIL') {
      throw new ConfigError(`cannot listen on ${err.address ?? '?'}:${err.port ?? '?'}: ${err.code}`);
    }
    throw e;
  }
  if (identity !== null) await checkAccess(config, identity, tls !== undefined, logger, server);
  else if (process.geteuid?.() === 0 && !cluster.isWorker) logger.warn({ uid: 0 }, 'running as root (allow_root): set server.user to run as an unprivileged account');
  for (const l of listeners) logger.info({ host: l.host, port: l.port, tls: l.tls ? 'implicit' : 'stls' }, 'listening');
  if (fileCodec === undefined) {
    // RETR still works, with the same bytes, but at about a third of the speed: say so once, at start.
    logger.warn(
      { native: false },
      process.env['POPLAR_NO_NATIVE'] === '1'
        ? 'the native module is switched off (POPLAR_NO_NATIVE=1): RETR uses the slower JavaScript encoder'
        : 'the native module (build/Release/poplar_native.node) is not built: RETR uses the slower JavaScript encoder; `npm rebuild` builds it (needs make and a C compiler)',
    );
  }

  if (demo !== null) {
    const plain = listeners.find((l) => !l.tls);
    const secure = listeners.find((l) => l.tls);
    out('');
    out('Poplar is running. A demo user was created because there were no users yet:');
    out(`  user: demo    password: ${demo.password}`);
    out('Retrieve its welcome message with:');
    if (plain) out(`  curl --user 'demo:${demo.password}' pop3://${hostFor(plain.host)}:${plain.port}/1`);
    if (secure) out(`  curl --cacert ${path.relative(process.cwd(), config.tlsCertFile) || config.tlsCertFile} --user 'demo:${demo.password}' pop3s://localhost:${secure.port}/1`);
    const self = process.argv[1] ? `node ${path.relative(process.cwd(), process.argv[1]) || process.argv[1]}` : 'poplar';
    out(`Add users with: ${self} user add NAME --users ${path.relative(process.cwd(), config.usersFile) || config.usersFile}`);
    out('');
  }

  // SIGHUP (src/cli/reload.ts): the file again; certificates, users, limits, mechanisms and log level for new sessions.
  const reloader = new Reloader(
    { flags, server, logger, tls: tls !== undefined, lmtp: lmtp !== null, serviceUser: identity?.user, buildAuthenticator: async (c) => timedAuth(await buildAuthenticator(c, logger)) },
    config,
    authenticator,
  );
  // /readyz: a cheap call to each backend, through whichever user database is current.
  admin?.probe('users', (signal) => reloader.authenticator.lookupPrincipal?.('poplar-readiness-probe', signal) ?? Promise.resolve());
  admin?.probe('store', () => (store instanceof PostgresStore ? store.pool.query('SELECT 1') : fs.access(config.maildirRoot, fsc.R_OK | fsc.X_OK)));
  return {
    server,
    listeners,
    config,
    logger,
    reload: async () => {
      await reloader.reload();
      await autoconfig?.reload(reloader.config);
    },
    stop: async () => {
      if (adminServer !== null) adminServer.draining = true;
      const graceMs = reloader.config.server.shutdown_grace * 1000;
      await lmtp?.close(graceMs);
      await autoconfig?.close(graceMs);
      await server.close(graceMs);
      await store.close?.();
      await reloader.authenticator.close?.();
      await reloader.close();
      await limits.close();
      await adminServer?.close();
    },
  };
}

/** Switch to the service user (when one is set); a failure ends the process. */
function switchUser(identity: ServiceIdentity | null, logger: Logger): void {
  if (identity === null) return;
  const wasRoot = process.geteuid?.() === 0;
  dropPrivileges(identity);
  if (wasRoot) logger.info({ user: identity.user, uid: identity.uid, group: identity.group, gid: identity.gid }, 'switched to the service user');
}

/**
 * After the switch: what the service user must be able to use. The maildir
 * root and the users file are needed for every login (exit 78 when they are
 * not usable); the TLS key only for SIGHUP and a replacement worker (a warning).
 */
async function checkAccess(config: ResolvedConfig, id: ServiceIdentity, tls: boolean, logger: Logger, server: Pop3Server): Promise<void> {
  const need: [string, number, string][] = [];
  if (config.store.type === 'maildir') need.push([config.maildirRoot, fsc.R_OK | fsc.W_OK | fsc.X_OK, 'the maildir root']);
  if (config.auth.type === 'passwd-file') need.push([config.usersFile, fsc.R_OK, 'the users file']);
  for (const [p, mode, what] of need) {
    const code = await usable(p, mode);
    if (code !== null && !(code === 'ENOENT' && what === 'the users file')) {
      await server.close();
      throw new ConfigError(`user ${id.user} cannot use ${what} ${p}: ${code}`);
    }
  }
  if (tls && (await usable(config.tlsKeyFile, fsc.R_OK)) !== null) {
    logger.warn({ key: config.tlsKeyFile, user: id.user }, 'the service user cannot read the TLS key: SIGHUP cannot reload the certificate and a replacement worker cannot start');
  }
}

/** Maildirs under the root, or the PostgreSQL store (migrated at start; unreachable: exit 78). */
async function buildStore(config: ResolvedConfig, logger: Logger): Promise<MailStore> {
  if (config.store.type === 'postgres') {
    if (config.store.postgres === undefined) throw new ConfigError('invalid configuration: store.type = "postgres" needs a [store.postgres] section');
    try {
      return await PostgresStore.open(config.store.postgres, { logger });
    } catch (e) {
      throw new ConfigError(`cannot use the PostgreSQL mail store: ${(e as Error).message}`);
    }
  }
  return new MaildirStore({
    root: config.maildirRoot,
    logger,
    fsync: config.store.fsync,
    uidlistStaleSeconds: config.store.uidlist_lock_stale,
    allowSymlinkedMaildrops: config.store.allow_symlinked_maildrops,
  });
}

/** Passwords from the passwd-file or PostgreSQL; bearer tokens from OAuth when configured. */
async function buildAuthenticator(config: ResolvedConfig, logger: Logger): Promise<Authenticator> {
  let passwords: Authenticator;
  if (config.auth.type === 'postgres') {
    if (config.auth.postgres === undefined) throw new ConfigError('invalid configuration: auth.type = "postgres" needs an [auth.postgres] section');
    try {
      passwords = await PostgresAuthenticator.open(config.auth.postgres, { logger: (m) => logger.warn({ backend: 'postgres' }, m) });
    } catch (e) {
      throw new ConfigError(`cannot use the PostgreSQL user database: ${(e as Error).message}`);
    }
  } else {
    passwords = new PasswdFileAuthenticator(config.usersFile, { logger: (m) => logger.warn({ users: config.usersFile }, m) });
  }
  if (config.auth.oauth === undefined) return passwords;
  const oauth = new OAuthAuthenticator(config.auth.oauth, { logger: (m) => logger.info({ backend: 'oauth' }, m) });
  return new ChainAuthenticator([
    { authenticator: passwords, kinds: ['password'], name: config.auth.type },
    { authenticator: oauth, kinds: ['bearer'], name: 'oauth' },
  ]);
}

function hostFor(h: string): string {
  return h.includes(':') ? `[${h}]` : h === '0.0.0.0' ? '127.0.0.1' : h;
}

/** The embedded default's first run: a demo user with a random password and a welcome message. */
async function ensureDemoUser(config: ResolvedConfig, store: MailStore, handover: Handover): Promise<{ password: string } | null> {
  const exists = await fs.access(config.usersFile).then(() => true, () => false);
  const users = exists ? await listUsers(config.usersFile) : [];
  if (users.length > 0) return null;
  const password = randomBytes(12).toString('base64url');
  await handover.mkdir(path.dirname(config.usersFile), 0o700);
  const created = !(await fs.lstat(config.usersFile).then(() => true, () => false));
  await addUser(config.usersFile, { username: 'demo', password: await hashPassword(password) });
  if (created) handover.add(config.usersFile);
  const now = new Date();
  const welcome = [
    `From: Poplar <postmaster@localhost>`,
    `To: demo@localhost`,
    `Subject: Welcome to Poplar`,
    `Date: ${now.toUTCString().replace('GMT', '+0000')}`,
    `Message-ID: <${randomBytes(8).toString('hex')}.welcome@localhost>`,
    `MIME-Version: 1.0`,
    `Content-Type: text/plain; charset=utf-8`,
    ``,
    `Hello,`,
    ``,
    `this message was delivered into the demo maildrop when Poplar first started.`,
    `You just retrieved it over POP3.`,
    ``,
    ...(store instanceof MaildirStore
      ? [`Next steps: add real users with "poplar user add", point your MTA at the`, `Maildir root (${config.maildirRoot}), and read docs/ for the configuration.`]
      : [`Next steps: add real users with "poplar user add" and read docs/ for the configuration.`]),
    ``,
  ].join('\r\n');
  if (!(store instanceof MaildirStore)) {
    await store.deliver('demo', Buffer.from(welcome));
    return { password };
  }
  const maildrop = path.join(config.maildirRoot, 'demo');
  const fresh = await fs.lstat(maildrop).then(() => false, () => true);
  await store.deliver('demo', Buffer.from(welcome));
  if (fresh) await handover.tree(maildrop);
  return { password };
}
