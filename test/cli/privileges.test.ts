import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureSelfSignedCertificate } from '../../src/config/tls-material.js';
import { ROOT, runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksRoot } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';

/**
 * `poplar serve` started as root with `user = nobody`: it binds privileged
 * ports, then every process (single, primary, workers) runs as nobody/nogroup
 * for good, and maildrop files are opened as nobody.
 */
const NOBODY = 65534;
const NOGROUP = 65534;
const NOT_ROOT = lacksRoot();

/** Two free ports under 1024 on 127.0.0.1 (the test runs as root, so it may bind them). */
async function privilegedPorts(n: number): Promise<number[]> {
  const found: number[] = [];
  for (let port = 1023; port > 600 && found.length < n; port--) {
    const s = net.createServer();
    const ok = await new Promise<boolean>((resolve) => {
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (ok) {
      await new Promise((r) => s.close(r));
      found.push(port);
    }
  }
  if (found.length < n) throw new Error('no free privileged port');
  return found;
}

interface Ids {
  uid: number[];
  gid: number[];
  groups: number[];
}

async function idsOf(pid: number): Promise<Ids> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number[] =>
    (status.split('\n').find((l) => l.startsWith(`${name}:`)) ?? `${name}:`)
      .slice(name.length + 1)
      .trim()
      .split(/\s+/)
      .filter((x) => x !== '')
      .map(Number);
  return { uid: field('Uid'), gid: field('Gid'), groups: field('Groups') };
}

const asNobody: Ids = { uid: [NOBODY, NOBODY, NOBODY, NOBODY], gid: [NOGROUP, NOGROUP, NOGROUP, NOGROUP], groups: [NOGROUP] };

const SECRET = 'root-only secret line';

/** A tree where nobody owns the maildrops and reads the users file through its group; the key is root's alone. */
async function prepare(dir: string): Promise<{ args: (plain: number, secure: number) => string[] }> {
  await fs.chmod(dir, 0o755);
  await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o640 });
  await fs.chown(path.join(dir, 'users'), 0, NOGROUP);
  await ensureSelfSignedCertificate(path.join(dir, 'cert.pem'), path.join(dir, 'key.pem'));
  await fs.chmod(path.join(dir, 'key.pem'), 0o600); // root:root 0600: read before the switch
  const mail = path.join(dir, 'mail');
  const drop = path.join(mail, 'alice');
  for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(drop, sub), { recursive: true, mode: 0o700 });
  const ok = 'Subject: for alice\r\n\r\nreadable by the service user\r\n';
  const hidden = `Subject: hidden\r\n\r\n${SECRET}\r\n`;
  await fs.writeFile(path.join(drop, 'cur', `1700000001.M1P1.test,S=${ok.length},W=${ok.length}:2,`), ok, { mode: 0o600 });
  for (const d of [mail, drop, ...['cur', 'new', 'tmp'].map((s) => path.join(drop, s))]) await fs.chown(d, NOBODY, NOGROUP);
  await fs.chown(path.join(drop, 'cur', `1700000001.M1P1.test,S=${ok.length},W=${ok.length}:2,`), NOBODY, NOGROUP);
  // A file in the maildrop that only root can read: the service user cannot open it.
  await fs.writeFile(path.join(drop, 'cur', `1700000002.M2P1.test,S=${hidden.length},W=${hidden.length}:2,`), hidden, { mode: 0o600 });
  await fs.mkdir(path.join(dir, 'data'), { mode: 0o700 });
  await fs.chown(path.join(dir, 'data'), NOBODY, NOGROUP);
  return {
    args: (plain, secure) => [
      '--data-dir', path.join(dir, 'data'), '--users', path.join(dir, 'users'), '--maildir-root', mail,
      '--tls-cert', path.join(dir, 'cert.pem'), '--tls-key', path.join(dir, 'key.pem'),
      '--listen', `127.0.0.1:${plain}`, '--listen-tls', `127.0.0.1:${secure}`,
      '--user', 'nobody', '--group', 'nogroup',
    ],
  };
}

/** alice's session as a user sees it: the readable message comes back, the root-only one never does. */
async function aliceSession(port: number, tls: boolean): Promise<void> {
  const w = await Wire.connect(port, { tls });
  expect(await w.line()).toMatch(/^\+OK/);
  await w.login('alice', 'secret');
  const list = await w.cmdLines('UIDL');
  expect(list.status).toMatch(/^\+OK/);
  const replies: string[] = [];
  for (let i = 1; i <= Math.max(2, list.lines.length); i++) {
    const { status, body } = await w.cmdMulti(`RETR ${i}`);
    replies.push(status, body.toString());
  }
  const all = replies.join('\n');
  expect(all).toContain('readable by the service user');
  expect(all).not.toContain(SECRET);
  expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
  w.close();
}

async function waitForLog(srv: ServeProcess, re: RegExp): Promise<void> {
  for (let i = 0; i < 100 && !re.test(srv.stderr()); i++) await new Promise((r) => setTimeout(r, 100));
  expect(srv.stderr()).toMatch(re);
}

const listeningPids = (srv: ServeProcess): number[] => [
  ...new Set(srv.stderr().split('\n').filter((l) => l.includes('"listening"')).map((l) => (JSON.parse(l) as { pid: number }).pid)),
];

describe.skipIf(NOT_ROOT)('poplar serve --user nobody (started as root)', () => {
  let dir: string;
  let args: (plain: number, secure: number) => string[];
  const running: ServeProcess[] = [];
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-priv-'));
    ({ args } = await prepare(dir));
  });
  afterAll(async () => {
    for (const s of running) await s.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('single process: binds ports under 1024, then runs as nobody/nogroup for good and serves only what nobody can read', async () => {
    const [plain, secure] = await privilegedPorts(2);
    const srv = await startServe(args(plain!, secure!), { allowRoot: false });
    running.push(srv);
    expect([srv.plainPort, srv.tlsPort]).toEqual([plain, secure]);
    expect(await idsOf(srv.child.pid!)).toEqual(asNobody);
    await aliceSession(plain!, false);
    await aliceSession(secure!, true);
    expect(await idsOf(srv.child.pid!)).toEqual(asNobody);
    // The key is root's alone: said at start, and a SIGHUP keeps the certificate in use, saying why.
    expect(srv.stderr()).toMatch(/the service user cannot read the TLS key/);
    srv.child.kill('SIGHUP');
    await waitForLog(srv, /TLS reload failed: user nobody cannot read the certificate or key; keeping the previous certificate/);
    await aliceSession(secure!, true);
    expect(await srv.stop('SIGTERM')).toBe(0);
  });

  it('--workers 2: the primary switches once the workers listen, the workers before they serve, a replacement is never root', async () => {
    // A replacement worker reads the key as nobody: give the key to the group, as docs/operations.md says.
    await fs.chown(path.join(dir, 'key.pem'), 0, NOGROUP);
    await fs.chmod(path.join(dir, 'key.pem'), 0o640);
    const [plain, secure] = await privilegedPorts(2);
    const srv = await startServe([...args(plain!, secure!), '--workers', '2'], { allowRoot: false, expectListeners: 4 });
    running.push(srv);
    await waitForLog(srv, /all workers ready/);
    const workers = listeningPids(srv);
    expect(workers).toHaveLength(2);
    for (const pid of [srv.child.pid!, ...workers]) expect(await idsOf(pid)).toEqual(asNobody);
    for (let i = 0; i < 4; i++) await aliceSession(plain!, false);
    await aliceSession(secure!, true);

    // A worker that dies is replaced by the switched primary: the new one never was root and serves.
    process.kill(workers[0]!, 'SIGKILL');
    let replacement: number | undefined;
    for (let i = 0; i < 100 && replacement === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      replacement = listeningPids(srv).find((p) => !workers.includes(p));
    }
    expect(replacement).toBeDefined();
    expect(await idsOf(replacement!)).toEqual(asNobody);
    const switched = srv.stderr().split('\n').filter((l) => l.includes('switched to the service user')).map((l) => (JSON.parse(l) as { pid: number }).pid);
    expect(switched.sort()).toEqual([srv.child.pid!, ...workers].sort()); // the replacement had nothing to switch from
    await aliceSession(plain!, false);
    expect(await srv.stop('SIGTERM')).toBe(0);
  }, 60_000);
});

describe.skipIf(NOT_ROOT)('poplar serve --user nobody: the embedded default', () => {
  let dir: string;
  let srv: ServeProcess | undefined;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-priv-default-'));
    await fs.chmod(dir, 0o755);
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('creates its first-run files as root and hands them to nobody, private ones unreadable by others', async () => {
    srv = await startServe(['--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0', '--user', 'nobody'], { cwd: dir, allowRoot: false });
    expect(await idsOf(srv.child.pid!)).toEqual(asNobody);
    const data = path.join(dir, 'poplar-data');
    const demo = path.join(data, 'mail', 'demo');
    const tree = async (d: string): Promise<string[]> => [d, ...(await Promise.all((await fs.readdir(d, { withFileTypes: true })).map((e) => (e.isDirectory() ? tree(path.join(d, e.name)) : [path.join(d, e.name)])))).flat()];
    for (const p of [data, path.join(data, 'mail'), path.join(data, 'tls'), path.join(data, 'users'), path.join(data, 'tls', 'key.pem'), ...(await tree(demo))]) {
      const st = await fs.lstat(p);
      expect({ p, uid: st.uid, gid: st.gid }).toEqual({ p, uid: NOBODY, gid: NOGROUP });
    }
    for (const p of [data, path.join(data, 'mail'), path.join(data, 'tls'), demo]) expect((await fs.stat(p)).mode & 0o077).toBe(0);
    for (const p of [path.join(data, 'users'), path.join(data, 'tls', 'key.pem')]) expect((await fs.stat(p)).mode & 0o077).toBe(0);

    // The printed demo password works, and the welcome message comes back as nobody.
    const pw = /password: (\S+)/.exec(srv.stdout())![1]!;
    const w = await Wire.connect(srv.plainPort);
    await w.line();
    await w.login('demo', pw);
    const { status, body } = await w.cmdMulti('RETR 1');
    expect(status).toMatch(/^\+OK/);
    expect(body.toString()).toContain('Subject: Welcome to Poplar');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();

    // The key it made is nobody's: SIGHUP reloads it after the switch.
    srv.child.kill('SIGHUP');
    await waitForLog(srv, /"tls":1,"msg":"configuration reloaded"/);
    expect(await srv.stop('SIGTERM')).toBe(0);
  });
});

describe('poplar serve: who it may run as', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-priv-refuse-'));
    await fs.chmod(dir, 0o755);
  });
  afterAll(() => fs.rm(dir, { recursive: true, force: true }));

  const serve = (extra: string[]): string[] => ['serve', '--data-dir', path.join(dir, 'data'), '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0', ...extra];

  it.skipIf(NOT_ROOT)('as root without user: one line, exit 78, nothing created; --allow-root and allow_root = true let it start', async () => {
    const r = await runPoplar(serve([]), { cwd: dir, allowRoot: false });
    expect(r.code).toBe(78);
    expect(r.stderr.trim().split('\n')).toEqual([
      'poplar: refusing to run as root: set server.user (--user), e.g. --user nobody, or allow it with server.allow_root = true (--allow-root)',
    ]);
    await expect(fs.access(path.join(dir, 'data'))).rejects.toThrow();
    await fs.writeFile(path.join(dir, 'root.toml'), '[server]\nallow_root = true\n');
    for (const extra of [['--allow-root'], ['--config', path.join(dir, 'root.toml')]]) {
      const srv = await startServe(serve(extra).slice(1), { cwd: dir, allowRoot: false });
      expect((await idsOf(srv.child.pid!)).uid).toEqual([0, 0, 0, 0]);
      expect(srv.stderr()).toMatch(/running as root \(allow_root\)/);
      expect(await srv.stop()).toBe(0);
    }
  });

  it('a user or group that does not exist: one line, exit 78', async () => {
    for (const [extra, line] of [
      [['--user', 'no-such-user-x9'], 'poplar: server.user: no such user: no-such-user-x9'],
      [['--user', 'nobody', '--group', 'no-such-group-x9'], 'poplar: server.group: no such group: no-such-group-x9'],
      [['--user', '-x'], 'poplar: invalid configuration: server.user: expected a user or group name'],
    ] as const) {
      const r = await runPoplar(serve([...extra]), { cwd: dir, allowRoot: false });
      expect(r.code).toBe(78);
      expect(r.stderr.trim().split('\n')).toEqual([line]);
    }
  });

  it.skipIf(NOT_ROOT)('not root, with user set to someone else: one line, exit 78 (only root can switch)', async () => {
    const r = await runPoplar(serve(['--user', 'daemon']), { cwd: dir, uid: NOBODY, gid: NOGROUP, env: { HOME: dir }, allowRoot: false });
    expect(r.code).toBe(78);
    expect(r.stderr.trim().split('\n')).toEqual([`poplar: cannot switch to user daemon (group daemon): only root can, and poplar runs as uid ${NOBODY} gid ${NOGROUP}`]);
  });
});

describe.skipIf(NOT_ROOT)('npm start as root (a newcomer on a fresh machine)', () => {
  it("runs what package.json's start script says and serves the demo user", async () => {
    const pkg = JSON.parse(await fs.readFile(path.join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } };
    const [cmd, sub, ...flags] = pkg.scripts.start.split(' ');
    expect([cmd, sub]).toEqual(['bin/poplar', 'serve']);
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-npm-start-'));
    try {
      // The same flags, on free ports: the listeners are the only thing the test changes.
      const srv = await startServe([...flags, '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir, allowRoot: false });
      try {
        const pw = /password: (\S+)/.exec(srv.stdout())![1]!;
        const w = await Wire.connect(srv.plainPort);
        await w.line();
        await w.login('demo', pw);
        expect((await w.cmdMulti('RETR 1')).body.toString()).toContain('Subject: Welcome to Poplar');
        w.close();
      } finally {
        await srv.stop();
      }
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
