import { once } from 'node:events';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { putMessage } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

/**
 * SIGTERM with a large RETR in flight and a session with DELE marks that
 * never sends QUIT, with one process and with --workers 2: the RETR is
 * delivered whole and its QUIT, still within shutdown_grace, is a normal one;
 * the other session is closed without UPDATE once the grace time is over, so
 * every message it marked is still there.
 */
const GRACE = 8;
/** Far more than the socket buffers hold, so the server is still writing when the signal comes. */
const BIG = 16 * 1024 * 1024;

/** The messages of a maildrop by unique name (login moves them from new/ to cur/ and adds flags). */
const files = async (dir: string): Promise<string[]> =>
  [...(await fs.readdir(path.join(dir, 'cur'))), ...(await fs.readdir(path.join(dir, 'new')))].map((f) => f.replace(/:2,.*$/, '')).sort();

function bigMessage(): Buffer {
  const line = 'x'.repeat(78) + '\r\n';
  const head = 'Subject: big\r\n\r\n';
  return Buffer.from(head + line.repeat(Math.ceil(BIG / line.length)));
}

describe.each([
  { mode: 'one process', args: [] as string[], listeners: 1 },
  { mode: '--workers 2', args: ['--workers', '2'], listeners: 2 },
])('SIGTERM during a large RETR ($mode)', ({ args, listeners }) => {
  let dir: string;
  let srv: ServeProcess | undefined;
  const big = bigMessage();
  beforeEach(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-shutdown-retr-'));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\nbob:{PLAIN}secret\n', { mode: 0o600 });
    await putMessage(path.join(dir, 'mail'), 'alice', '1700000010.M1P1.test', big);
    for (const i of [1, 2, 3]) await putMessage(path.join(dir, 'mail'), 'bob', `17000000${i}0.M${i}P1.test`, `Subject: bob ${i}\r\n\r\nbody ${i}\r\n`);
    await fs.writeFile(path.join(dir, 'poplar.toml'), `[server]\nshutdown_grace = ${GRACE}\nauth_failure_delay = 0\n`);
  });
  afterEach(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('the RETR finishes whole and its QUIT commits; DELE marks without QUIT are kept', async () => {
    srv = await startServe(
      ['--config', path.join(dir, 'poplar.toml'), '--data-dir', dir, '--users', path.join(dir, 'users'), '--maildir-root', path.join(dir, 'mail'), '--listen', '127.0.0.1:0', ...args],
      { expectListeners: listeners },
    );
    const port = srv.plainPort;
    const bobBefore = await files(path.join(dir, 'mail/bob'));

    // bob: two messages marked, then nothing more (he never sends QUIT).
    const bob = await Wire.connect(port);
    await bob.line();
    await bob.login('bob', 'secret');
    expect(await bob.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await bob.cmd('DELE 2')).toMatch(/^\+OK/);

    // alice (a plain socket: 16 MiB through a line reader would take longer than the test):
    // RETR of the big message, read so slowly that the server is still writing at SIGTERM.
    const alice = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    alice.on('data', (d: Buffer) => chunks.push(d));
    const aliceClosed = new Promise<void>((resolve) => alice.once('close', () => resolve()));
    await once(alice, 'connect');
    alice.write('USER alice\r\nPASS secret\r\n');
    for (let i = 0; i < 500 && !Buffer.concat(chunks).toString().includes('Logged in.'); i++) await new Promise((r) => setTimeout(r, 20));
    expect(Buffer.concat(chunks).toString()).toContain('+OK Logged in.');
    alice.pause();
    alice.write('RETR 1\r\n');
    await new Promise((r) => setTimeout(r, 300));

    const exited = new Promise<number | null>((resolve) => srv!.child.once('exit', (code) => resolve(code)));
    srv.child.kill('SIGTERM');
    // Every process running sessions has heard it (the workers, or the one process).
    for (let i = 0; i < 200; i++) {
      if (srv.stderr().split('\n').filter((l) => l.includes('"msg":"shutting down"')).length >= listeners) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    // The rest of the message, then (still within the grace time) a DELE and a normal QUIT, with UPDATE.
    alice.write('DELE 1\r\nQUIT\r\n');
    alice.resume();
    await aliceClosed;
    const all = Buffer.concat(chunks);
    const at = all.indexOf('Subject: big\r\n');
    expect(all.subarray(0, at).toString()).toMatch(/\+OK [^\r]*\r\n$/);
    expect({ received: all.length - at, whole: all.subarray(at, at + big.length).equals(big) }).toEqual({ received: big.length + 3 + all.subarray(at + big.length + 3).length, whole: true });
    expect(all.subarray(at + big.length).toString()).toMatch(/^\.\r\n\+OK[^\r]*\r\n\+OK Logging out, 1 message deleted\.\r\n$/);

    // bob hears why once the grace time is over, and nothing of his is removed.
    expect(await bob.line(GRACE * 1000 + 10_000)).toBe('-ERR [SYS/TEMP] Server shutting down.');
    await bob.closed();
    expect(await exited).toBe(0);
    expect(await files(path.join(dir, 'mail/bob'))).toEqual(bobBefore);
    expect(await files(path.join(dir, 'mail/alice'))).toEqual([]);
  }, 90_000);
});
