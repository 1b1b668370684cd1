/**
 * Another process changes the Maildir under a logged-in session, as Dovecot,
 * an MDA or an admin may: a message file renamed (flags added), one removed,
 * one added. The session keeps its numbering; the renamed message is still
 * served and deleted; the removed one gets -ERR and the session goes on; the
 * added one waits for the next session; UIDLs of the others do not change.
 */
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

function message(i: number): string {
  return `Subject: changed ${i}\nMessage-ID: <changed-${i}@test>\n\nbody ${i}\n`;
}

async function loggedIn(port: number): Promise<Wire> {
  const w = await Wire.connect(port);
  await w.line();
  await w.cmd('USER alice');
  const r = await w.cmd('PASS secret');
  if (!r.startsWith('+OK')) throw new Error(r);
  return w;
}

describe('a maildrop changed by another process during a session', () => {
  let dir: string;
  let box: string;
  let srv: ServeProcess;

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-changed-'));
    box = path.join(dir, 'mail', 'alice');
    for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });
    for (let i = 1; i <= 4; i++) await fs.writeFile(path.join(box, 'cur', `179600000${i}.M${i}P1.test:2,`), message(i));
    await fs.writeFile(path.join(dir, 'users'), 'alice:{PLAIN}secret\n', { mode: 0o600 });
    srv = await startServe(['--data-dir', dir, '--users', path.join(dir, 'users'), '--maildir-root', path.join(dir, 'mail'), '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0']);
  });

  afterAll(async () => {
    await srv?.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('renamed: served and deleted; removed: -ERR, the session goes on; added: in the next session; other UIDLs unchanged', async () => {
    const w = await loggedIn(srv.plainPort);
    const before = (await w.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]!);
    expect(before).toHaveLength(4);

    // The other process: flags on 2 (a rename), 3 removed, a new delivery.
    await fs.rename(path.join(box, 'cur', '1796000002.M2P1.test:2,'), path.join(box, 'cur', '1796000002.M2P1.test:2,S'));
    await fs.rm(path.join(box, 'cur', '1796000003.M3P1.test:2,'));
    await fs.writeFile(path.join(box, 'new', '1796000005.M5P1.test'), message(5));

    expect(await w.cmd('STAT')).toMatch(/^\+OK 4 /);
    const r2 = await w.cmdMulti('RETR 2');
    expect(r2.status).toMatch(/^\+OK/);
    expect(r2.body.toString('latin1')).toContain('<changed-2@test>');
    expect(await w.cmd('RETR 3')).toMatch(/^-ERR/);
    // The session goes on.
    expect((await w.cmdMulti('RETR 4')).body.toString('latin1')).toContain('<changed-4@test>');
    expect(await w.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await w.cmd('DELE 2')).toMatch(/^\+OK/);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();

    const files = await fs.readdir(path.join(box, 'cur'));
    expect(files.some((f) => f.startsWith('1796000001.'))).toBe(false);
    expect(files.some((f) => f.startsWith('1796000002.'))).toBe(false);

    const next = await loggedIn(srv.plainPort);
    const after = (await next.cmdLines('UIDL')).lines.map((l) => l.split(' ')[1]!);
    // Message 4 keeps its UIDL; the added one comes after it with a new one.
    expect(after).toHaveLength(2);
    expect(after[0]).toBe(before[3]);
    expect(before).not.toContain(after[1]);
    expect((await next.cmdMulti('RETR 2')).body.toString('latin1')).toContain('<changed-5@test>');
    expect(await next.cmd('QUIT')).toMatch(/^\+OK/);
    next.close();
  });

  it('a marked message removed by someone else before QUIT: UPDATE still answers +OK and removes the rest', async () => {
    const w = await loggedIn(srv.plainPort);
    const n = (await w.cmdLines('UIDL')).lines.length;
    expect(n).toBeGreaterThanOrEqual(2);
    expect(await w.cmd('DELE 1')).toMatch(/^\+OK/);
    expect(await w.cmd('DELE 2')).toMatch(/^\+OK/);
    for (const f of await fs.readdir(path.join(box, 'cur'))) if (f.startsWith('1796000004.')) await fs.rm(path.join(box, 'cur', f));
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();
    const next = await loggedIn(srv.plainPort);
    expect(await next.cmd('STAT')).toMatch(/^\+OK 0 0/);
    next.close();
  });
});
