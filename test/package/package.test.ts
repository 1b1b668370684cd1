/**
 * Poplar as a package: `npm pack` (which runs the build through `prepare`),
 * the tarball installed into an empty project, and that project using both
 * entry points of the exports map the way an application would: `poplar`
 * (server, Maildir store, authenticators, contracts, errors) and
 * `poplar/client` (the POP3 client alone), at run time with node and at
 * compile time with tsc.
 *
 * The package is packed from a copy of the checkout (without node_modules,
 * dist/ and build/), so the build the test checks is a fresh one and the
 * checkout's own dist/ is never touched. The empty project gets a lockfile
 * made from Poplar's own package-lock.json (the production packages only), so
 * `npm ci --prefer-offline` installs exactly the dependency versions the
 * suite runs with from npm's cache, and runs every install script: Poplar's
 * native module and fs-ext are built as on a user's machine.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/cli.js';

const run = promisify(execFile);

/** Top-level entries of the checkout that are not sources of the package. */
const NOT_COPIED = new Set(['node_modules', '.git', 'dist', 'dist-check', 'build', 'poplar-data', 'bench', 'test', '.tmp']);

let tmp: string;
let app: string;
let tarball: string;
let packed: string[];

async function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string }> {
  try {
    return await run(cmd, args, { cwd, env: { ...process.env, ...env }, maxBuffer: 64 * 1024 * 1024 });
  } catch (e) {
    const x = e as Error & { stdout?: string; stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}: ${x.message}\n${x.stdout ?? ''}\n${x.stderr ?? ''}`);
  }
}

interface LockEntry {
  dev?: boolean;
  link?: boolean;
  [key: string]: unknown;
}

/** A lockfile for a project that depends only on the tarball: Poplar's production packages at their locked versions. */
async function appLockfile(tarballName: string, integrity: string): Promise<object> {
  const lock = JSON.parse(await fs.readFile(path.join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, LockEntry> };
  const root = lock.packages['']!;
  const packages: Record<string, unknown> = {
    '': { name: 'app', dependencies: { poplar: `file:${tarballName}` } },
    'node_modules/poplar': {
      version: root['version'],
      resolved: `file:${tarballName}`,
      integrity,
      hasInstallScript: true,
      license: root['license'],
      dependencies: root['dependencies'],
      bin: root['bin'],
      engines: root['engines'],
    },
  };
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key.startsWith('node_modules/') && entry.dev !== true && entry.link !== true) packages[key] = entry;
  }
  return { name: 'app', lockfileVersion: 3, requires: true, packages };
}

/** Run in the installed project: a Poplar server from `poplar`, used by the client from `poplar/client`. */
const USE = `
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as poplar from 'poplar';
import { Pop3Server, MaildirStore, PasswdFileAuthenticator, ChainAuthenticator, defaultServerSettings, silentLogger, InUseError, MailError } from 'poplar';
import { Pop3Client, Pop3ServerError } from 'poplar/client';

const dir = process.argv[2];
const users = path.join(dir, 'users');
await fs.writeFile(users, 'alice:{PLAIN}secret::::::\\n', { mode: 0o600 });
const logger = silentLogger();
const store = new MaildirStore({ root: path.join(dir, 'mail'), logger });
await store.deliver('alice', Buffer.from('Subject: from the package\\r\\n\\r\\nHello.\\r\\n'));
const out = { exports: Object.keys(poplar).sort(), observed: [] };
const server = new Pop3Server({
  settings: defaultServerSettings({ auth_failure_delay: 0.05, auth_failure_max_delay: 0.1 }),
  authenticator: new ChainAuthenticator([new PasswdFileAuthenticator(users)]),
  store,
  logger,
  observers: [{ connected: (client) => ({ loginSucceeded: (user, mechanism) => out.observed.push([client.remoteAddress, user, mechanism]) }) }],
});
const [bound] = await server.listen([{ host: '127.0.0.1', port: 0, tls: false }]);
const client = await Pop3Client.connect({ host: '127.0.0.1', port: bound.port, tls: 'none' });
await client.login('alice', 'secret');
out.list = await client.list();
out.retr = (await client.retrBuffer(1)).toString('latin1');
try {
  await store.open({ username: 'alice' });
  out.secondOpen = 'opened';
} catch (e) {
  out.secondOpen = { inUse: e instanceof InUseError, mailError: e instanceof MailError, kind: e.kind };
}
await client.quit();
const second = await Pop3Client.connect({ host: '127.0.0.1', port: bound.port, tls: 'none' });
try {
  await second.login('alice', 'wrong');
  out.wrongPassword = 'accepted';
} catch (e) {
  out.wrongPassword = { serverError: e instanceof Pop3ServerError, code: e.code ?? null };
}
second.close();
for (const deep of ['poplar/dist/server/session.js', 'poplar/src/index.ts']) {
  try {
    await import(deep);
    out[deep] = 'loaded';
  } catch (e) {
    out[deep] = e.code;
  }
}
await server.close(0);
console.log(JSON.stringify(out));
`;

/** Type-checked in the installed project: the contracts implemented, the errors and the client used with their declared types. */
const CHECK = `
import type { Authenticator, ClientInfo, Credentials, Logger, Maildrop, MailStore, Principal, ServerObserver, ServerSettings } from 'poplar';
import { defaultServerSettings, InUseError, NotFoundError, PostgresAuthenticator, type FailureKind } from 'poplar';
import { Pop3Client, Pop3ServerError, type ConnectOptions, type ListEntry } from 'poplar/client';
// @ts-expect-error: only the entry points of the exports map can be imported
import type { Session } from 'poplar/dist/server/session.js';

export class OneUser implements Authenticator {
  async authenticate(c: Credentials): Promise<Principal | null> {
    return c.kind === 'password' && c.username === 'alice' && c.password === 'secret' ? { username: 'alice' } : null;
  }
}

export class EmptyStore implements MailStore {
  readonly #held = new Set<string>();
  async open(user: Principal): Promise<Maildrop> {
    if (this.#held.has(user.username)) throw new InUseError('maildrop in use');
    this.#held.add(user.username);
    return {
      messages: [],
      read: async () => { throw new NotFoundError('no such message'); },
      commit: async (deleted: readonly number[]) => { if (deleted.length > 0) throw new NotFoundError('no such message'); },
      release: async () => { this.#held.delete(user.username); },
    };
  }
  async deliver(): Promise<void> {}
}

// A second observer, as metrics would be: counts logins per client address.
export const logins = new Map<string, number>();
export const counting: ServerObserver = {
  connected: (client: ClientInfo) => ({
    loginSucceeded: () => void logins.set(client.remoteAddress, (logins.get(client.remoteAddress) ?? 0) + 1),
  }),
};

const kind: FailureKind = new InUseError('x').kind;
const settings: ServerSettings = defaultServerSettings({ login_delay: 60 });
const options: ConnectOptions = { host: '127.0.0.1', port: 110, tls: 'starttls' };
export async function sizes(): Promise<number[]> {
  const client = await Pop3Client.connect(options);
  const list: ListEntry[] = await client.list();
  return list.map((e) => e.octets);
}
export const facts = [kind, settings.login_delay, Pop3ServerError.name];

// Types that come from Poplar's dependencies are there for an application too, not \`any\`
// (the check skips declaration files, as most projects do, so a missing package would pass silently).
// @ts-expect-error: a number is no pg Pool
export const notAPool: ConstructorParameters<typeof PostgresAuthenticator>[0] = 42;
// @ts-expect-error: a number is no pino Logger
export const notALogger: Logger = 42;
// @ts-expect-error: a Maildrop must be able to commit and release
export const broken: Maildrop = { messages: [], read: async () => { throw new Error('x'); } };
`;

describe('the npm package', () => {
  beforeAll(async () => {
    tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-package-'));
    const src = path.join(tmp, 'src');
    app = path.join(tmp, 'app');
    for (const name of await fs.readdir(ROOT)) {
      if (!NOT_COPIED.has(name)) await fs.cp(path.join(ROOT, name), path.join(src, name), { recursive: true });
    }
    // The build's tools only: the package's own dependencies come from the tarball's install below.
    await fs.symlink(path.join(ROOT, 'node_modules'), path.join(src, 'node_modules'));
    const pack = await sh('npm', ['pack', '--json', '--pack-destination', tmp], src);
    const info = JSON.parse(pack.stdout.slice(pack.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
    tarball = path.join(tmp, info[0]!.filename);
    packed = info[0]!.files.map((f) => f.path);

    await fs.mkdir(app);
    const bytes = await fs.readFile(tarball);
    const integrity = `sha512-${createHash('sha512').update(bytes).digest('base64')}`;
    await fs.writeFile(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module', dependencies: { poplar: `file:../${path.basename(tarball)}` } }));
    await fs.writeFile(path.join(app, 'package-lock.json'), JSON.stringify(await appLockfile(`../${path.basename(tarball)}`, integrity), null, 1));
    await sh('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], app);
  }, 180_000);

  afterAll(async () => {
    if (tmp) await fs.rm(tmp, { recursive: true, force: true });
  });

  it('ships the built entry points, the launcher and the native sources, and no tests or source maps', () => {
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/cli/main.js', 'bin/poplar', 'binding.gyp', 'native/dotstuff.c', 'package.json']) {
      expect(packed).toContain(f);
    }
    expect(packed.filter((f) => f.endsWith('.map') || f.includes('.test.') || f.startsWith('src/') || f.startsWith('test/'))).toEqual([]);
  });

  it('runs a server from `poplar` that the client from `poplar/client` logs in to, lists and retrieves from', async () => {
    const dir = await fs.mkdtemp(path.join(tmp, 'run-'));
    await fs.writeFile(path.join(app, 'use.mjs'), USE);
    const { stdout } = await sh(process.execPath, ['use.mjs', dir], app);
    const out = JSON.parse(stdout) as Record<string, unknown>;
    expect(out['exports']).toEqual(
      expect.arrayContaining([
        'Pop3Server',
        'MaildirStore',
        'PostgresStore',
        'PasswdFileAuthenticator',
        'PostgresAuthenticator',
        'OAuthAuthenticator',
        'ChainAuthenticator',
        'MailError',
        'InUseError',
        'TemporaryFailure',
        'PermanentFailure',
        'AuthenticationFailed',
        'NotFoundError',
        'MessageUnavailable',
        'QuotaExceeded',
      ]),
    );
    const message = 'Subject: from the package\r\n\r\nHello.\r\n';
    expect(out['list']).toEqual([{ number: 1, octets: message.length }]);
    expect(out['retr']).toBe(message);
    // The session holds the maildrop: the store says so with the package's own error class.
    expect(out['secondOpen']).toEqual({ inUse: true, mailError: true, kind: 'in-use' });
    expect(out['wrongPassword']).toEqual({ serverError: true, code: 'AUTH' });
    // An observer given to the server sees the login, with the client's address from the listener.
    expect(out['observed']).toEqual([['127.0.0.1', 'alice', expect.any(String)]]);
    // Only the exports map's entry points can be imported.
    expect(out['poplar/dist/server/session.js']).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
    expect(out['poplar/src/index.ts']).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });

  it('gives TypeScript the declarations of both entry points', async () => {
    await fs.writeFile(path.join(app, 'check.ts'), CHECK);
    const tsconfig = {
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
        typeRoots: [path.join(ROOT, 'node_modules/@types')],
      },
      files: ['check.ts'],
    };
    await fs.writeFile(path.join(app, 'tsconfig.json'), JSON.stringify(tsconfig));
    await sh(process.execPath, [path.join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], app);
  });

  it('installs the poplar command', async () => {
    const { stdout } = await sh(path.join(app, 'node_modules/.bin/poplar'), ['--help'], app);
    expect(stdout).toMatch(/serve/);
    expect(stdout).toMatch(/fetch/);
  });
});
