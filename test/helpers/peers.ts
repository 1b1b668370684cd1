/**
 * Peers: the programs and services outside Poplar that some tests run against
 * (Dovecot, real POP3 clients, fail2ban-regex, openssl, PostgreSQL, ...).
 * A test that needs one says so through this module, never on its own:
 *
 *     describe.skipIf(lacks('curl'))('curl', () => { ... });
 *     it.skipIf(lacks('openssl'))('...', async () => { ... });
 *     const PG_DOWN = await lacksPostgres();
 *
 * When the peer is there, `lacks` is false and the tests run. When it is
 * missing, `lacks` is true and the tests that need it are skipped, and:
 * - without CI=true, a skipped entry and a warning name the peer and how to
 *   install it (a developer's machine may lack some of them);
 * - with CI=true, a failing test named after the peer is registered instead,
 *   so the run fails and says which peer is missing (.ci/run installs all
 *   of them and sets CI=true).
 * Call it while tests are collected (in a skipIf, or at module level); what
 * can only be found out inside a running test goes through `missingAtRun`.
 */
import { existsSync } from 'node:fs';
import pg from 'pg';
import { it, type TestContext } from 'vitest';
import { which } from '../interop/run.js';
import { DOVECOT_BIN } from './dovecot.js';

export interface Peer {
  /** How the peer is named in messages and test titles. */
  name: string;
  /** How to get it (on Debian, what .ci/run does). */
  install: string;
}

/** Programs looked up on PATH (Dovecot itself by its fixed path), with the Debian package that has them. */
const BINARIES = {
  dovecot: { path: DOVECOT_BIN, install: 'apt-get install dovecot-core dovecot-pop3d' },
  doveadm: { install: 'apt-get install dovecot-core' },
  curl: { install: 'apt-get install curl' },
  mpop: { install: 'apt-get install mpop' },
  fetchmail: { install: 'apt-get install fetchmail' },
  getmail: { install: 'apt-get install getmail6' },
  'fail2ban-regex': { install: 'apt-get install fail2ban' },
  python3: { install: 'apt-get install python3' },
  openssl: { install: 'apt-get install openssl' },
  ip: { install: 'apt-get install iproute2' },
  haproxy: { install: 'apt-get install haproxy' },
  swaks: { install: 'apt-get install swaks' },
  postfix: { path: '/usr/sbin/postfix', install: 'apt-get install postfix' },
  'dovecot-lmtpd': { path: '/usr/lib/dovecot/lmtp', install: 'apt-get install dovecot-lmtpd' },
  'systemd-analyze': { install: 'apt-get install systemd' },
  chromium: { path: '/usr/bin/chromium', install: 'apt-get install chromium' },
  'dovecot-imapd': { path: '/usr/lib/dovecot/imap', install: 'apt-get install dovecot-imapd' },
  promtool: { install: 'apt-get install prometheus' },
} satisfies Record<string, { path?: string; install: string }>;

export type BinaryPeer = keyof typeof BINARIES;

/** The PostgreSQL the tests use: 127.0.0.1:5432, user postgres, database test, trust authentication. */
export const POSTGRES_CONNECTION = { host: '127.0.0.1', port: 5432, user: 'postgres', database: 'test' };
export const POSTGRES: Peer = {
  name: 'PostgreSQL on 127.0.0.1:5432 (user postgres, database test)',
  install: 'apt-get install postgresql, start it, create the database test (.ci/run does all three)',
};

const ciRun = process.env['CI'] === 'true' || process.env['CI'] === '1';
/** Peers already reported in this test file (each file is collected in its own module instance). */
const reported = new Set<string>();

/**
 * Whether the tests needing this peer must not run: false when `found`.
 * Otherwise reports it once per test file (a failing test with CI=true, a
 * skipped entry and a warning without) and returns true.
 */
export function lacksPeer(peer: Peer, found: boolean, detail?: string): boolean {
  if (found) return false;
  if (!reported.has(peer.name)) {
    reported.add(peer.name);
    const why = `${peer.name} is missing (${detail ?? 'not found'}); to get it: ${peer.install}.`;
    if (ciRun) {
      it(`peer ${peer.name} is there (CI=true)`, () => {
        throw new Error(`${why} With CI=true a missing peer fails the run instead of skipping the tests that need it.`);
      });
    } else {
      console.warn(`${why} The tests that need it are skipped (with CI=true they would fail).`);
      it.skip(`needs ${peer.name}, which is missing`, () => undefined);
    }
  }
  return true;
}

/**
 * From inside a running test, for a peer that can only be found missing by
 * trying (a privilege such as bind-mounting): skips the test with the reason,
 * or with CI=true fails it with that reason.
 */
export function missingAtRun(ctx: TestContext, peer: Peer, detail: string): never {
  const why = `${peer.name} is missing (${detail}); to get it: ${peer.install}.`;
  if (ciRun) throw new Error(`${why} With CI=true a missing peer fails the run instead of skipping the tests that need it.`);
  return ctx.skip(why);
}

/** Root, for what only root may do (bind ports below 1024, switch users, mount, make network namespaces). */
export const ROOT_USER: Peer = { name: 'root', install: 'run the tests as root (.ci/run does)' };

/** lacksPeer for root: `describe.skipIf(lacksRoot())`. */
export function lacksRoot(): boolean {
  return lacksPeer(ROOT_USER, process.getuid?.() === 0, `running as uid ${process.getuid?.() ?? '?'}`);
}

/** The full path of a binary peer, or undefined when it is not installed. */
export function peerPath(name: BinaryPeer): string | undefined {
  const b: { path?: string; install: string } = BINARIES[name];
  if (b.path !== undefined) return existsSync(b.path) ? b.path : undefined;
  return which(name);
}

/** lacksPeer for a program: `lacks('curl')`. */
export function lacks(name: BinaryPeer): boolean {
  const b: { path?: string; install: string } = BINARIES[name];
  return lacksPeer({ name, install: b.install }, peerPath(name) !== undefined, b.path !== undefined ? `no ${b.path}` : `not on PATH=${process.env['PATH'] ?? ''}`);
}

/** lacksPeer for the tests' PostgreSQL: it must answer a query within 2 s. */
export async function lacksPostgres(): Promise<boolean> {
  const c = new pg.Client({ ...POSTGRES_CONNECTION, connectionTimeoutMillis: 2000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return lacksPeer(POSTGRES, true);
  } catch (e) {
    return lacksPeer(POSTGRES, false, (e as Error).message);
  } finally {
    await c.end().catch(() => undefined);
  }
}
