/**
 * A full file system under a running `poplar serve` (Maildir on a small
 * tmpfs): a delivery that does not fit gets a temporary LMTP failure and
 * leaves nothing half-written; UPDATE on a full disk still removes exactly
 * the marked messages and keeps the other UIDLs; once there is room again
 * everything works without a restart.
 */
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lmtpDeliver } from '../../tools/soak/lmtp-client.js';
import type { ServeProcess } from '../helpers/cli.js';
import { lacksRoot } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';
import { serveWithLmtp } from './lmtp-serve.js';

function message(i: number, size = 200): string {
  return `Subject: full ${i}\r\nMessage-ID: <full-${i}@test>\r\n\r\n${'y'.repeat(size)}\r\n`;
}

/** Fills the file system at `root` until a write fails with ENOSPC. */
async function fill(root: string): Promise<string> {
  const f = path.join(root, 'filler');
  const h = await fs.open(f, 'a');
  try {
    for (;;) await h.write(Buffer.alloc(64 * 1024));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    await h.close();
  }
  return f;
}

async function loggedIn(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd('USER alice');
  const r = await w.cmd('PASS secret');
  if (!r.startsWith('+OK')) throw new Error(r);
  return w;
}

async function files(dir: string): Promise<string[]> {
  return (await fs.readdir(dir).catch(() => [] as string[])).sort();
}

describe.skipIf(lacksRoot())('a full file system under a running server', () => {
  let dir: string;
  let root: string;
  let srv: ServeProcess;
  let lmtpPort = 0;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-full-'));
    root = path.join(dir, 'mail');
    await fs.mkdir(root);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1024k,mode=0755', 'tmpfs', root], { stdio: 'pipe' });
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    ({ srv, lmtpPort } = await serveWithLmtp({
      dir,
      rest: ['[auth]', `users = ${JSON.stringify(path.join(dir, 'users'))}`, '[store]', `maildir_root = ${JSON.stringify(root)}`],
    }));
  }, 60_000);

  afterAll(async () => {
    await srv?.stop();
    try {
      execFileSync('umount', [root], { stdio: 'pipe' });
    } catch {
      // not mounted
    }
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('a delivery that does not fit: 4xx, nothing half-written; UPDATE on the full disk removes exactly the marks; room again: all works', async () => {
    for (let i = 1; i <= 3; i++) expect(await lmtpDeliver(lmtpPort, ['alice'], message(i))).toEqual(['delivered']);
    const box = path.join(root, 'alice');
    // A session makes the maildrop current (new/ → cur/, UIDLs saved) and shows the UIDLs.
    const first = await loggedIn(srv.plainPort);
    const uidlsBefore = (await first.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(uidlsBefore).toHaveLength(3);
    expect(await first.cmd('QUIT')).toMatch(/^\+OK/);
    first.close();

    const filler = await fill(root);
    const curBefore = await files(path.join(box, 'cur'));

    // The delivery cannot be stored: a temporary failure, and no trace of it.
    expect(await lmtpDeliver(lmtpPort, ['alice'], message(4, 200_000))).toEqual(['refused']);
    expect(await files(path.join(box, 'tmp'))).toEqual([]);
    expect(await files(path.join(box, 'new'))).toEqual([]);
    expect(await files(path.join(box, 'cur'))).toEqual(curBefore);

    // UPDATE on the full file system: DELE 2 + QUIT.
    const s = await loggedIn(srv.plainPort);
    expect(await s.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect(await s.cmd('DELE 2')).toMatch(/^\+OK/);
    const quit = await s.cmd('QUIT');
    s.close();
    expect(srv.child.exitCode).toBeNull();

    await fs.rm(filler);
    const after = await loggedIn(srv.plainPort);
    const uidlsAfter = (await after.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]);
    // Unlinking needs no room: the marked message is gone and the others keep their UIDLs.
    expect(quit).toMatch(/^\+OK/);
    expect(uidlsAfter).toEqual([uidlsBefore[0], uidlsBefore[2]]);
    expect(await after.cmd('QUIT')).toMatch(/^\+OK/);
    after.close();

    // Room again: deliveries work without a restart, and the new message is listed after the others.
    expect(await lmtpDeliver(lmtpPort, ['alice'], message(5))).toEqual(['delivered']);
    const last = await loggedIn(srv.plainPort);
    const final = (await last.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]);
    expect(final.slice(0, -1)).toEqual(uidlsAfter);
    expect(final).toHaveLength(uidlsAfter.length + 1);
    const body = await last.cmdMulti(`RETR ${final.length}`);
    expect(body.body.toString('latin1')).toContain('<full-5@test>');
    last.close();
  }, 60_000);
});
