/**
 * The admin socket of `poplar serve --user nobody` started as root: made by
 * root for root and the service group (root:nogroup, 0660), so `poplar who`
 * works for root and for the service account, and not for another account;
 * an UPDATE the service user may not carry out is counted.
 */
import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPoplar, startServe, type ServeProcess } from '../helpers/cli.js';
import { lacksRoot } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';
import { metricValue, parsePrometheus } from './prometheus.js';

const NOBODY = 65534;
const NOGROUP = 65534;
/** Debian's `daemon` account: neither root nor in the service group. */
const DAEMON = 1;

describe.skipIf(lacksRoot())('[admin] socket of a server running as nobody', () => {
  let dir: string;
  let cfg: string;
  let srv: ServeProcess;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-admin-priv-'));
    await fs.chmod(dir, 0o755);
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o640 });
    await fs.chown(path.join(dir, 'users'), 0, NOGROUP);
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(dir, 'mail', 'alice', sub), { recursive: true, mode: 0o700 });
    const msg = 'Subject: kept\r\n\r\nbody\r\n';
    const file = path.join(dir, 'mail', 'alice', 'cur', `1700000001.M1P1.test,S=${msg.length},W=${msg.length}:2,`);
    await fs.writeFile(file, msg, { mode: 0o600 });
    for (const d of ['mail', 'mail/alice', 'mail/alice/cur', 'mail/alice/new', 'mail/alice/tmp']) await fs.chown(path.join(dir, d), NOBODY, NOGROUP);
    await fs.chown(file, NOBODY, NOGROUP);
    cfg = path.join(dir, 'poplar.toml');
    await fs.writeFile(
      cfg,
      [
        `data_dir = ${JSON.stringify(path.join(dir, 'data'))}`,
        '[server]',
        'listen = ["127.0.0.1:0"]',
        'listen_tls = []',
        'user = "nobody"',
        'group = "nogroup"',
        '[auth]',
        `users = ${JSON.stringify(path.join(dir, 'users'))}`,
        '[store]',
        `maildir_root = ${JSON.stringify(path.join(dir, 'mail'))}`,
        '[admin]',
        `socket = ${JSON.stringify(path.join(dir, 'admin.sock'))}`,
        '',
      ].join('\n'),
      { mode: 0o644 },
    );
    srv = await startServe(['--config', cfg], { cwd: dir, expectListeners: 1, allowRoot: false });
  });

  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('is root:nogroup 0660: root and nobody may list sessions, daemon may not', async () => {
    const st = await fs.stat(path.join(dir, 'admin.sock'));
    expect({ uid: st.uid, gid: st.gid, mode: st.mode & 0o777 }).toEqual({ uid: 0, gid: NOGROUP, mode: 0o660 });
    const w = await Wire.connect(srv.plainPort);
    await w.line();
    await w.login('alice', 'secret');
    const asRoot = await runPoplar(['who', '--config', cfg, '--json'], { cwd: dir });
    expect(asRoot.code, asRoot.stderr).toBe(0);
    expect(JSON.parse(asRoot.stdout)).toEqual([expect.objectContaining({ user: 'alice', state: 'TRANSACTION' })]);
    const asService = await runPoplar(['who', '--config', cfg, '--json'], { cwd: dir, uid: NOBODY, gid: NOGROUP, env: { HOME: dir } });
    expect(asService.code, asService.stderr).toBe(0);
    expect(JSON.parse(asService.stdout)).toEqual([expect.objectContaining({ user: 'alice' })]);
    const asOther = await runPoplar(['kick', 'alice', '--config', cfg], { cwd: dir, uid: DAEMON, gid: DAEMON, env: { HOME: dir } });
    expect(asOther.code).toBe(77);
    expect(asOther.stderr).toMatch(/permission denied on .*admin\.sock: only root and the service group may use it/);
    expect(w.ended).toBe(false);
    expect(await w.cmd('NOOP')).toMatch(/^\+OK/);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();
  });

  it('counts an UPDATE the service user cannot carry out (cur/ not writable)', async () => {
    await fs.chmod(path.join(dir, 'mail', 'alice', 'cur'), 0o500);
    const s = await Wire.connect(srv.plainPort);
    await s.line();
    await s.login('alice', 'secret');
    expect(await s.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await s.cmd('QUIT')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    s.close();
    const text = await new Promise<string>((resolve, reject) => {
      http
        .get({ socketPath: path.join(dir, 'admin.sock'), path: '/metrics' }, (res) => {
          let body = '';
          res.on('data', (c: Buffer) => (body += c.toString()));
          res.on('end', () => resolve(body));
        })
        .on('error', reject);
    });
    const m = parsePrometheus(text);
    expect(metricValue(m, 'poplar_update_failures_total')).toBe(1);
    expect(metricValue(m, 'poplar_messages_deleted_total')).toBe(0);
    expect(metricValue(m, 'poplar_backend_errors_total', { backend: 'store', operation: 'commit' })).toBe(1);
  });
});
