/**
 * Test helper: runs a private, throw-away Dovecot 2.3 POP3 server.
 *
 * Everything (config, base_dir, state_dir, log, passwd-file, TLS cert) lives in
 * a fresh temp directory. The master runs in the foreground (`dovecot -F -c`)
 * as a child process and is stopped by stop().
 *
 * Running as root: Dovecot refuses both to run pop3-login as root ("This
 * process must not be run as root") and to let a pop3 process access mail as
 * uid 0 ("Mail access not allowed for root"; only doveadm/LDA may). So:
 *   - master, auth, config, log, ... run as root (default_internal_user = root);
 *   - pop3-login runs as `dovenull` (installed by the package) or `nobody`;
 *   - pop3 (mail) processes run as `nobody` (mail_uid/mail_gid, numeric).
 * startDovecot() therefore chowns `maildirRoot` recursively to that uid/gid and
 * adds the search bits (g+x, o+x) to its ancestor directories. Files a test drops
 * into an existing maildir later only need to be world-readable (the default
 * 0644 is fine: renames/unlinks need write access to the directory, which
 * Dovecot owns). A maildir created after start must be passed through
 * chownForDovecot() before Dovecot touches it.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, mkdir, writeFile, rm, readFile, chmod, chown, lstat, readdir, stat } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import net from 'node:net';
import path from 'node:path';

export interface DovecotUser {
  name: string;
  password: string;
}

export interface DovecotHandle {
  port: number;
  tlsPort: number;
  /** With `imap`: IMAP with STARTTLS offered, and IMAP over implicit TLS; 0 otherwise. */
  imapPort: number;
  imapsPort: number;
  /** The server's self-signed certificate (CN and subjectAltName localhost, IP 127.0.0.1), PEM. */
  certFile: string;
  dir: string;
  /** uid/gid Dovecot's pop3 processes use to access the maildirs (see file header). */
  mailUid: number;
  mailGid: number;
  stop(): Promise<void>;
}

export interface StartDovecotOptions {
  /** Mailboxes live at `<maildirRoot>/<user>` (Maildir++ layout). */
  maildirRoot: string;
  users: DovecotUser[];
  /** Appended verbatim to the generated dovecot.conf (later settings win). */
  extraConf?: string;
  /** Use Dovecot's documented high-performance login/service mode (for benchmarks). */
  highPerformance?: boolean;
  /** Also serve IMAP (needs dovecot-imapd): `imapPort` (STARTTLS offered) and `imapsPort` (implicit TLS). */
  imap?: boolean;
  /**
   * Also accept OAuth 2.0 bearer tokens (XOAUTH2, OAUTHBEARER) through Dovecot's
   * oauth2 passdb, which POSTs each token to this introspection URL and expects
   * `{"active": true, "username": "<user>"}` back.
   */
  oauth2IntrospectionUrl?: string;
}

export const DOVECOT_BIN = '/usr/sbin/dovecot';

/** Whether Dovecot is installed (the bench asks; tests use lacks('dovecot') from peers.ts). */
export function dovecotAvailable(): boolean {
  return existsSync(DOVECOT_BIN);
}

/** Finds a currently free TCP port on 127.0.0.1 by binding port 0. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('could not determine free port'));
        return;
      }
      const { port } = addr;
      srv.close(() => resolve(port));
    });
  });
}

/** Connects once; resolves with the first line if it starts with "+OK", else rejects. */
function probeGreeting(port: number, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    let buf = '';
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error('greeting timeout'));
    }, timeoutMs);
    const finish = (err: Error | null, line?: string): void => {
      clearTimeout(timer);
      sock.destroy();
      if (err !== null) reject(err);
      else resolve(line ?? '');
    };
    sock.setEncoding('latin1');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      const i = buf.indexOf('\r\n');
      if (i < 0) return;
      const line = buf.slice(0, i);
      if (line.startsWith('+OK')) {
        sock.write('QUIT\r\n');
        finish(null, line);
      } else finish(new Error(`unexpected greeting: ${line}`));
    });
    sock.on('error', (e) => finish(e));
    sock.on('close', () => finish(new Error('closed before greeting')));
  });
}

interface Account {
  name: string;
  uid: number;
  gid: number;
}

async function readAccounts(): Promise<Map<string, Account>> {
  const out = new Map<string, Account>();
  let passwd = '';
  try {
    passwd = await readFile('/etc/passwd', 'utf8');
  } catch {
    return out;
  }
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || f[0] === undefined || f[0] === '') continue;
    out.set(f[0], { name: f[0], uid: Number(f[2]), gid: Number(f[3]) });
  }
  return out;
}

/** The unprivileged account Dovecot's pop3 processes access mail as. */
async function mailAccount(): Promise<Account> {
  const acc = (await readAccounts()).get('nobody');
  return acc ?? { name: 'nobody', uid: 65534, gid: 65534 };
}

/** Recursively chowns a maildir (or maildir root) so the test Dovecot can write it. */
export async function chownForDovecot(p: string): Promise<void> {
  const { uid, gid } = await mailAccount();
  const walk = async (q: string): Promise<void> => {
    const st = await lstat(q);
    await chown(q, uid, gid);
    if (st.isDirectory()) {
      for (const e of await readdir(q)) await walk(path.join(q, e));
    }
  };
  await walk(p);
}

/**
 * Makes every ancestor of `p` searchable (g+x, o+x) so the unprivileged mail uid can
 * reach it. o+x alone was observed not to be enough for a 0700 mkdtemp dir owned by
 * 0:0 (the mail process apparently still matches group 0), so g+x is added too.
 */
async function makeAncestorsSearchable(p: string): Promise<void> {
  let cur = path.dirname(p);
  for (;;) {
    const st = await stat(cur);
    if ((st.mode & 0o011) !== 0o011) await chmod(cur, (st.mode & 0o7777) | 0o011);
    const parent = path.dirname(cur);
    if (parent === cur) break;
    cur = parent;
  }
}

/** Unprivileged account for pop3-login: the packaged `dovenull`, else `nobody`. */
async function pickLoginUser(): Promise<string> {
  const names = await readAccounts();
  if (names.has('dovenull')) return 'dovenull';
  if (names.has('nobody')) return 'nobody';
  throw new Error('no unprivileged user (dovenull/nobody) for pop3-login');
}

function escapeConfValue(v: string): string {
  if (/["\\\n\r]/.test(v)) throw new Error(`unsupported character in config value: ${JSON.stringify(v)}`);
  return `"${v}"`;
}

function buildConfig(o: {
  dir: string;
  maildirRoot: string;
  port: number;
  tlsPort: number;
  highPerformance: boolean;
  extraConf: string;
  loginUser: string;
  mailUid: number;
  mailGid: number;
  imapPort: number;
  imapsPort: number;
  oauth2: boolean;
}): string {
  const q = escapeConfValue;
  const cores = Math.max(1, availableParallelism());
  const lines = [
    '# Generated by test/helpers/dovecot.ts - private test instance',
    `base_dir = ${q(path.join(o.dir, 'run'))}`,
    `state_dir = ${q(path.join(o.dir, 'state'))}`,
    `instance_name = ${q(`poplar-test-${path.basename(o.dir)}`)}`,
    `log_path = ${q(path.join(o.dir, 'dovecot.log'))}`,
    `info_log_path = ${q(path.join(o.dir, 'dovecot.log'))}`,
    `debug_log_path = ${q(path.join(o.dir, 'dovecot.log'))}`,
    `protocols = pop3${o.imapPort !== 0 ? ' imap' : ''}`,
    'listen = 127.0.0.1',
    '# No stats service connections needed; a process still doing the stats',
    '# handshake when the instance stops would otherwise wait 5 s for it.',
    'stats_writer_socket_path =',
    '',
    '# Internal processes run as root; pop3-login and mail access may not.',
    'default_internal_user = root',
    'default_internal_group = root',
    `default_login_user = ${o.loginUser}`,
    'first_valid_uid = 1',
    'first_valid_gid = 1',
    `mail_uid = ${o.mailUid}`,
    `mail_gid = ${o.mailGid}`,
    '',
    `mail_location = maildir:${o.maildirRoot}/%u`,
    'disable_plaintext_auth = no',
    `auth_mechanisms = plain login${o.oauth2 ? ' xoauth2 oauthbearer' : ''}`,
    'auth_verbose = yes',
    '',
    'ssl = yes',
    `ssl_cert = <${path.join(o.dir, 'cert.pem')}`,
    `ssl_key = <${path.join(o.dir, 'key.pem')}`,
    '',
    'passdb {',
    '  driver = passwd-file',
    ...(o.oauth2 ? ['  mechanisms = plain login'] : []),
    `  args = scheme=PLAIN username_format=%u ${path.join(o.dir, 'users.passwd')}`,
    '}',
    ...(o.oauth2 ? ['passdb {', '  driver = oauth2', '  mechanisms = xoauth2 oauthbearer', `  args = ${path.join(o.dir, 'oauth2.conf.ext')}`, '}'] : []),
    'userdb {',
    '  driver = passwd-file',
    `  args = username_format=%u ${path.join(o.dir, 'users.passwd')}`,
    '}',
    '',
    'service pop3-login {',
    '  inet_listener pop3 {',
    '    address = 127.0.0.1',
    `    port = ${o.port}`,
    '  }',
    '  inet_listener pop3s {',
    '    address = 127.0.0.1',
    `    port = ${o.tlsPort}`,
    '    ssl = yes',
    '  }',
  ];
  if (o.highPerformance) {
    lines.push(
      '  # high-performance mode: long-lived login processes, one per CPU',
      '  service_count = 0',
      `  process_min_avail = ${cores}`,
      '  vsz_limit = 1G',
      '  client_limit = 1000',
    );
  }
  lines.push('}');
  if (o.imapPort !== 0) {
    lines.push(
      'service imap-login {',
      '  inet_listener imap {',
      '    address = 127.0.0.1',
      `    port = ${o.imapPort}`,
      '  }',
      '  inet_listener imaps {',
      '    address = 127.0.0.1',
      `    port = ${o.imapsPort}`,
      '    ssl = yes',
      '  }',
      '}',
    );
  }
  if (o.highPerformance) {
    lines.push(
      'service pop3 {',
      '  # reuse mail processes for many sessions instead of one fork per login',
      '  service_count = 0',
      '  client_limit = 1',
      '  process_limit = 1024',
      `  process_min_avail = ${cores}`,
      '}',
      'service auth {',
      '  client_limit = 5000',
      '}',
      'auth_cache_size = 10M',
      'auth_cache_ttl = 1 hour',
      'auth_cache_negative_ttl = 1 hour',
      'default_process_limit = 1024',
      'default_client_limit = 5000',
      // mail_fsync etc. stay at their defaults so durability matches normal mode.
    );
  }
  lines.push('', o.extraConf, '');
  return lines.join('\n');
}

export async function startDovecot(opts: StartDovecotOptions): Promise<DovecotHandle> {
  if (!dovecotAvailable()) throw new Error(`${DOVECOT_BIN} not installed`);
  for (const u of opts.users) {
    if (!/^[A-Za-z0-9._@+-]+$/.test(u.name)) throw new Error(`bad user name ${u.name}`);
    if (/[:\r\n]/.test(u.password)) throw new Error(`unsupported password for ${u.name}`);
  }
  const maildirRoot = path.resolve(opts.maildirRoot);
  const dir = await mkdtemp(path.join(tmpdir(), 'dc-'));
  await mkdir(path.join(dir, 'run'), { recursive: true });
  await mkdir(path.join(dir, 'state'), { recursive: true });
  await mkdir(maildirRoot, { recursive: true });
  // Sockets in base_dir are used by the unprivileged pop3/pop3-login processes.
  await chmod(dir, 0o755);
  const mail = await mailAccount();
  await chownForDovecot(maildirRoot);
  await makeAncestorsSearchable(maildirRoot);

  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
      '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
      '-keyout', path.join(dir, 'key.pem'),
      '-out', path.join(dir, 'cert.pem'),
    ],
    { stdio: 'ignore' },
  );

  // passwd-file: user:{PLAIN}password:uid:gid:gecos:home:shell:extra. uid/gid stay
  // empty (passwd-file rejects uid 0 anyway); the global mail_uid/mail_gid apply.
  const passwd = opts.users
    .map((u) => `${u.name}:{PLAIN}${u.password}::::${path.join(maildirRoot, u.name)}::`)
    .join('\n');
  await writeFile(path.join(dir, 'users.passwd'), passwd + '\n', { mode: 0o600 });

  const taken = new Set<number>();
  const another = async (): Promise<number> => {
    let p = await freePort();
    while (taken.has(p)) p = await freePort();
    taken.add(p);
    return p;
  };
  const port = await another();
  const tlsPort = await another();
  const imapPort = opts.imap === true ? await another() : 0;
  const imapsPort = opts.imap === true ? await another() : 0;
  if (opts.oauth2IntrospectionUrl !== undefined) {
    await writeFile(
      path.join(dir, 'oauth2.conf.ext'),
      [
        `introspection_url = ${opts.oauth2IntrospectionUrl}`,
        'introspection_mode = post',
        'force_introspection = yes',
        'username_attribute = username',
        'active_attribute = active',
        'active_value = true',
        '',
      ].join('\n'),
      { mode: 0o600 },
    );
  }

  const confPath = path.join(dir, 'dovecot.conf');
  await writeFile(
    confPath,
    buildConfig({
      dir,
      maildirRoot,
      port,
      tlsPort,
      highPerformance: opts.highPerformance ?? false,
      extraConf: opts.extraConf ?? '',
      loginUser: await pickLoginUser(),
      mailUid: mail.uid,
      mailGid: mail.gid,
      imapPort,
      imapsPort,
      oauth2: opts.oauth2IntrospectionUrl !== undefined,
    }),
  );

  // detached: the master leads its own process group, so stop() can clean up
  // stragglers with a group kill that touches only this instance.
  const child: ChildProcess = spawn(DOVECOT_BIN, ['-F', '-c', confPath], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const pgid = child.pid;
  const killGroup = (sig: NodeJS.Signals): void => {
    if (pgid === undefined) return;
    try {
      process.kill(-pgid, sig);
    } catch {
      // group already gone
    }
  };
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => {
    child.once('exit', () => {
      exited = true;
      resolve();
    });
  });

  const readLog = async (): Promise<string> => {
    try {
      return await readFile(path.join(dir, 'dovecot.log'), 'utf8');
    } catch {
      return '';
    }
  };

  const stop = async (): Promise<void> => {
    if (!exited) {
      // The master normally exits ~1 s after SIGTERM. A child that is still
      // starting up can keep it waiting ~5 s, so after 2 s kill the group.
      child.kill('SIGTERM');
      const t = setTimeout(() => killGroup('SIGKILL'), 2000);
      await exitPromise;
      clearTimeout(t);
    }
    killGroup('SIGKILL');
    // Set POPLAR_KEEP_DOVECOT_DIR=1 to keep config and dovecot.log for debugging.
    if (process.env['POPLAR_KEEP_DOVECOT_DIR'] === undefined) await rm(dir, { recursive: true, force: true });
  };

  const deadline = Date.now() + 15_000;
  let lastErr: unknown = null;
  for (;;) {
    if (exited) {
      killGroup('SIGKILL');
      const log = await readLog();
      await rm(dir, { recursive: true, force: true });
      throw new Error(`dovecot exited during startup:\n${output}\n${log}`);
    }
    try {
      await probeGreeting(port, 2000);
      break;
    } catch (e) {
      lastErr = e;
    }
    if (Date.now() > deadline) {
      const log = await readLog();
      await stop();
      throw new Error(`dovecot did not come up on port ${port}: ${String(lastErr)}\n${output}\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  return { port, tlsPort, imapPort, imapsPort, certFile: path.join(dir, 'cert.pem'), dir, mailUid: mail.uid, mailGid: mail.gid, stop };
}
