import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Authenticator } from '../../src/auth/types.js';
import { PasswdFileAuthenticator } from '../../src/auth/passwd-file/authenticator.js';
import { ConfigSchema } from '../../src/config/schema.js';
import { ensureSelfSignedCertificate, readTlsFiles } from '../../src/config/tls-material.js';
import { silentLogger, type Logger } from '../../src/observability/log.js';
import type { ServerSettings } from '../../src/server/context.js';
import type { ServerObserver } from '../../src/server/observer.js';
import { Pop3Server } from '../../src/server/server.js';
import { MaildirStore } from '../../src/store/maildir/maildir-store.js';
import type { MailStore } from '../../src/store/types.js';

export interface TestUser {
  name: string;
  password: string;
}

/** A test server; S is the store it serves from (a Maildir under maildirRoot unless startTestServer was given one). */
export interface TestServer<S extends MailStore = MaildirStore> {
  dir: string;
  /** The Maildir root under dir (created even when another store is served). */
  maildirRoot: string;
  usersFile: string;
  certFile: string;
  cert: Buffer;
  port: number;
  tlsPort: number;
  server: Pop3Server;
  store: S;
  /** Deliver a message to a user's maildrop through the store, as an MTA would (Maildir: into new/). */
  deliver(user: string, raw: Buffer | string): Promise<void>;
  stop(): Promise<void>;
}

let certCache: { dir: string } | undefined;

/** A shared self-signed certificate for all tests of one process (generation is slow-ish). */
export async function testCertificate(): Promise<{ certFile: string; keyFile: string }> {
  if (!certCache) {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-cert-'));
    await ensureSelfSignedCertificate(path.join(dir, 'cert.pem'), path.join(dir, 'key.pem'));
    certCache = { dir };
  }
  return { certFile: path.join(certCache.dir, 'cert.pem'), keyFile: path.join(certCache.dir, 'key.pem') };
}

export function testSettings(overrides: Partial<ServerSettings> = {}): ServerSettings {
  const base = ConfigSchema.parse({}).server;
  return { ...base, auth_failure_delay: 0.05, auth_failure_max_delay: 0.2, ...overrides };
}

export interface TestServerOptions {
  users?: TestUser[];
  settings?: Partial<ServerSettings>;
  logger?: Logger;
  dir?: string;
  authenticator?: Authenticator;
  oauth?: boolean;
  now?: () => number;
  observers?: ServerObserver[];
  /** Serve from this store instead of a Maildir under maildirRoot (the caller opens and closes it; `now` does not apply). */
  store?: MailStore;
}

/**
 * An in-process Poplar on 127.0.0.1 port 0 (plain+STLS) and port 0 (implicit
 * TLS), over a temp Maildir root, or over `opts.store` when given.
 */
export async function startTestServer<S extends MailStore>(opts: TestServerOptions & { store: S }): Promise<TestServer<S>>;
export async function startTestServer(opts?: TestServerOptions & { store?: undefined }): Promise<TestServer>;
export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer<MailStore>> {
  const dir = opts.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-test-')));
  const maildirRoot = path.join(dir, 'mail');
  await fs.mkdir(maildirRoot, { recursive: true });
  const usersFile = path.join(dir, 'users');
  const users = opts.users ?? [{ name: 'alice', password: 'secret' }];
  await fs.writeFile(usersFile, users.map((u) => `${u.name}:{PLAIN}${u.password}::::::\n`).join(''), { mode: 0o600 });
  const { certFile, keyFile } = await testCertificate();
  const material = await readTlsFiles(certFile, keyFile);
  const logger = opts.logger ?? silentLogger();
  const store: MailStore = opts.store ?? new MaildirStore({ root: maildirRoot, logger, fsync: false, ...(opts.now ? { now: opts.now } : {}) });
  const server = new Pop3Server({
    settings: testSettings(opts.settings),
    authenticator: opts.authenticator ?? new PasswdFileAuthenticator(usersFile, { checkIntervalMs: 0 }),
    oauth: opts.oauth ?? false,
    store,
    logger,
    tls: material,
    ...(opts.observers ? { observers: opts.observers } : {}),
  });
  const bound = await server.listen([
    { host: '127.0.0.1', port: 0, tls: false },
    { host: '127.0.0.1', port: 0, tls: true },
  ]);
  return {
    dir,
    maildirRoot,
    usersFile,
    certFile,
    cert: material.cert,
    port: bound[0]!.port,
    tlsPort: bound[1]!.port,
    server,
    store,
    deliver: (user, raw) => store.deliver(user, Buffer.isBuffer(raw) ? raw : Buffer.from(raw)),
    stop: async () => {
      await server.close(0);
      if (!opts.dir) await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

/** Write a message file straight into new/ under a chosen name (no ,W= unless given). */
export async function putMessage(maildirRoot: string, user: string, name: string, raw: Buffer | string): Promise<string> {
  const d = path.join(maildirRoot, user);
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(d, sub), { recursive: true });
  const file = path.join(d, 'new', name);
  await fs.writeFile(file, raw);
  return file;
}
