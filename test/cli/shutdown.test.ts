import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { putMessage } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

/**
 * SIGTERM with sessions open, as docs/operations.md describes it: no new
 * connections; running sessions get `shutdown_grace` seconds (a QUIT in that
 * time is a normal QUIT, with UPDATE); then a session waiting for a command is
 * told `-ERR [SYS/TEMP] Server shutting down.` and closed without UPDATE
 * (RFC 1939 §6: only QUIT enters UPDATE), so its DELEs are not committed.
 */
const GRACE = 2;

const files = async (dir: string): Promise<string[]> => [...(await fs.readdir(path.join(dir, 'cur'))), ...(await fs.readdir(path.join(dir, 'new')))].sort();

const refused = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(false)));
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });

describe('SIGTERM with sessions open', () => {
  let dir: string;
  let srv: ServeProcess | undefined;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-shutdown-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\nbob:{PLAIN}secret\ncarol:{PLAIN}secret\n', { mode: 0o600 });
    for (const u of ['alice', 'carol']) {
      for (const i of [1, 2]) await putMessage(path.join(dir, 'mail'), u, `17000000${i}0.M${i}P1.test`, `Subject: ${u} ${i}\r\n\r\nbody ${i}\r\n`);
    }
    await fs.writeFile(path.join(dir, 'poplar.toml'), `[server]\nshutdown_grace = ${GRACE}\nauth_failure_delay = 0\n`);
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('refuses new connections, lets a QUIT in the grace time commit, tells idle sessions and commits nothing for them', async () => {
    srv = await startServe(['--config', path.join(dir, 'poplar.toml'), '--data-dir', dir, '--users', path.join(dir, 'users'), '--maildir-root', path.join(dir, 'mail'), '--listen', '127.0.0.1:0'], {
      expectListeners: 1,
    });
    const port = srv.plainPort;

    // alice: logged in, DELE pending, then idle.
    const alice = await Wire.connect(port);
    await alice.line();
    await alice.login('alice', 'secret');
    expect(await alice.cmd('DELE 1')).toMatch(/^\+OK/);
    const aliceBefore = await files(path.join(dir, 'mail/alice'));
    expect(aliceBefore).toHaveLength(2);
    // bob: half-way through USER/PASS.
    const bob = await Wire.connect(port);
    await bob.line();
    expect(await bob.cmd('USER bob')).toMatch(/^\+OK/);
    // carol: logged in, DELE pending; she sends QUIT during the grace time.
    const carol = await Wire.connect(port);
    await carol.line();
    await carol.login('carol', 'secret');
    expect(await carol.cmd('DELE 1')).toMatch(/^\+OK/);

    const exited = new Promise<number | null>((resolve) => srv!.child.once('exit', (code) => resolve(code)));
    const t0 = Date.now();
    srv.child.kill('SIGTERM');

    // No new connection is accepted.
    let isRefused = false;
    for (let i = 0; i < 20 && !isRefused; i++) {
      isRefused = await refused(port);
      if (!isRefused) await new Promise((r) => setTimeout(r, 50));
    }
    expect(isRefused).toBe(true);

    // A session that ends with QUIT in the grace time ends normally: UPDATE removes its message.
    expect(await carol.cmd('QUIT')).toBe('+OK Logging out, 1 message deleted.');
    await carol.closed();

    // The others hear why, once the grace time is over, and are closed.
    const [aliceLine, bobLine] = await Promise.allSettled([alice.line(GRACE * 1000 + 5000), bob.line(GRACE * 1000 + 5000)]);
    if (aliceLine.status === "rejected") console.log(srv.stderr());
    expect(aliceLine).toEqual({ status: 'fulfilled', value: '-ERR [SYS/TEMP] Server shutting down.' });
    expect(bobLine).toEqual({ status: 'fulfilled', value: '-ERR [SYS/TEMP] Server shutting down.' });
    const told = Date.now() - t0;
    expect(told).toBeGreaterThanOrEqual(GRACE * 1000 - 100);
    await alice.closed();
    await bob.closed();

    // The process is gone within the grace time (plus start-up slack of the signal handler), exit 0.
    expect(await exited).toBe(0);
    expect(Date.now() - t0).toBeLessThan(GRACE * 1000 + 1500);

    // alice never sent QUIT: nothing of hers was removed. carol's QUIT removed hers.
    expect(await files(path.join(dir, 'mail/alice'))).toEqual(aliceBefore);
    expect(await files(path.join(dir, 'mail/carol'))).toHaveLength(1);
    const logout = srv.stderr().split('\n').filter((l) => l.includes('"logout"')).map((l) => JSON.parse(l) as { user?: string; reason: string; expunged?: number });
    expect(logout.find((l) => l.user === 'alice')).toMatchObject({ reason: 'server shutdown' });
    expect(logout.find((l) => l.user === 'carol')).toMatchObject({ reason: 'QUIT' });
  }, 30_000);
});
