/**
 * Permission errors (EACCES) under a running `poplar serve` that runs as
 * nobody: a maildrop whose cur/ the service user may no longer write (UPDATE
 * cannot unlink) and one whose tmp/ it may not write (a delivery cannot be
 * stored). The client is told the truth ([SYS/TEMP], LMTP 4xx), nothing is
 * removed or half-written, and once the modes are mended everything works
 * without a restart.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lmtpDeliver } from '../../tools/soak/lmtp-client.js';
import type { ServeProcess } from '../helpers/cli.js';
import { lacksRoot } from '../helpers/peers.js';
import { Wire } from '../helpers/wire.js';
import { serveWithLmtp } from './lmtp-serve.js';

const NOBODY = 65534;
const NOGROUP = 65534;

async function loggedIn(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd('USER alice');
  const r = await w.cmd('PASS secret');
  if (!r.startsWith('+OK')) throw new Error(r);
  return w;
}

describe.skipIf(lacksRoot())('permission errors under a server running as nobody', () => {
  let dir: string;
  let drop: string;
  let srv: ServeProcess;
  let lmtpPort = 0;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-eacces-'));
    await fs.chmod(dir, 0o755);
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o640 });
    await fs.chown(path.join(dir, 'users'), 0, NOGROUP);
    const mail = path.join(dir, 'mail');
    drop = path.join(mail, 'alice');
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(drop, sub), { recursive: true, mode: 0o700 });
    for (let i = 1; i <= 3; i++) {
      const f = path.join(drop, 'cur', `170000000${i}.M${i}P1.test:2,`);
      await fs.writeFile(f, `Subject: ${i}\n\nmessage ${i}\n`, { mode: 0o600 });
      await fs.chown(f, NOBODY, NOGROUP);
    }
    for (const d of [mail, drop, ...['cur', 'new', 'tmp'].map((s) => path.join(drop, s))]) await fs.chown(d, NOBODY, NOGROUP);
    await fs.mkdir(path.join(dir, 'data'), { mode: 0o700 });
    await fs.chown(path.join(dir, 'data'), NOBODY, NOGROUP);
    ({ srv, lmtpPort } = await serveWithLmtp({
      dir,
      dataDir: path.join(dir, 'data'),
      server: ['user = "nobody"'],
      rest: ['[auth]', `users = ${JSON.stringify(path.join(dir, 'users'))}`, '[store]', `maildir_root = ${JSON.stringify(mail)}`],
      allowRoot: false,
    }));
  }, 60_000);

  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('UPDATE that may not unlink: -ERR [SYS/TEMP], nothing removed; mended: the next UPDATE works', async () => {
    const first = await loggedIn(srv.plainPort);
    const before = (await first.cmdLines('UIDL')).lines;
    expect(before).toHaveLength(3);
    expect(await first.cmd('QUIT')).toMatch(/^\+OK/);
    first.close();

    await fs.chmod(path.join(drop, 'cur'), 0o500);
    const s = await loggedIn(srv.plainPort);
    expect(await s.cmd('DELE 2')).toMatch(/^\+OK/);
    expect(await s.cmd('QUIT')).toMatch(/^-ERR \[SYS\/TEMP\]/);
    s.close();
    expect(srv.child.exitCode).toBeNull();

    await fs.chmod(path.join(drop, 'cur'), 0o700);
    const again = await loggedIn(srv.plainPort);
    expect((await again.cmdLines('UIDL')).lines).toEqual(before);
    expect(await again.cmd('DELE 2')).toMatch(/^\+OK/);
    expect(await again.cmd('QUIT')).toMatch(/^\+OK/);
    again.close();
    const last = await loggedIn(srv.plainPort);
    expect((await last.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1])).toEqual([before[0], before[2]].map((l) => l!.split(' ')[1]));
    last.close();
  });

  it('a delivery that may not be written: LMTP 4xx, nothing stored; mended: delivered', async () => {
    await fs.chmod(path.join(drop, 'tmp'), 0o500);
    expect(await lmtpDeliver(lmtpPort, ['alice'], 'Subject: denied\r\n\r\nbody\r\n')).toEqual(['refused']);
    expect(await fs.readdir(path.join(drop, 'new'))).toEqual([]);
    await fs.chmod(path.join(drop, 'tmp'), 0o700);
    expect(await lmtpDeliver(lmtpPort, ['alice'], 'Subject: allowed\r\n\r\nbody\r\n')).toEqual(['delivered']);
    expect(await fs.readdir(path.join(drop, 'new'))).toHaveLength(1);
  });
});
