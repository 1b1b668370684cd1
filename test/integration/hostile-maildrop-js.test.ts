/**
 * FIFOs in cur/ with the native module switched off (POPLAR_NO_NATIVE=1, set
 * before anything is loaded): the JavaScript size measurement and the RETR
 * stream path. An open(2) of a FIFO for reading waits for a writer, and it
 * waits on a thread of the pool: enough such maildrops used to block every
 * thread, so that every later login hung (and its maildrop stayed locked)
 * until the server was restarted. Real FIFOs, a real server, real sockets.
 */
import { execFileSync } from 'node:child_process';
import { closeSync, constants as C, openSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

vi.hoisted(() => {
  process.env['POPLAR_NO_NATIVE'] = '1';
});

import { native } from '../../src/protocol/native.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer | undefined;
const fifos: string[] = [];

afterEach(async () => {
  // Should a reader still wait in open(2), a writer lets it go (a non-blocking open fails with ENXIO when none waits).
  for (const f of fifos.splice(0)) {
    try {
      closeSync(openSync(f, C.O_WRONLY | C.O_NONBLOCK));
    } catch {
      // nobody waiting: as it should be
    }
  }
  await srv?.stop();
  srv = undefined;
});

const GOOD = 'Subject: real\n\nthe real message\n';
const GOOD_WIRE = 'Subject: real\r\n\r\nthe real message\r\n.\r\n';
/** More maildrops with a FIFO than the thread pool has threads (4 unless UV_THREADPOOL_SIZE says otherwise). */
const FIFO_USERS = Math.max(6, Number(process.env['UV_THREADPOOL_SIZE'] ?? 4) + 2);

async function session(port: number, user: string): Promise<{ stat: string; retr: string; retr2: string }> {
  const w = await Wire.connect(port);
  try {
    await w.line();
    expect(await w.cmd(`USER ${user}`)).toMatch(/^\+OK/);
    expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
    const stat = await w.cmd('STAT');
    const retr = (await w.cmdMulti('RETR 1')).body.toString('latin1');
    const retr2 = await w.cmd('RETR 2');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    return { stat, retr, retr2 };
  } finally {
    w.close();
  }
}

describe('FIFOs in cur/ on the JavaScript paths', () => {
  it('the native module is off in this file', () => {
    expect(native).toBeUndefined();
  });

  it('maildrops with a FIFO block nobody: other users log in, and the FIFO users see their real messages', async () => {
    const users = Array.from({ length: FIFO_USERS }, (_, i) => `fifo${i}`);
    srv = await startTestServer({ users: [{ name: 'alice', password: 'secret' }, ...users.map((name) => ({ name, password: 'secret' }))] });
    for (const u of users) {
      const box = path.join(srv.maildirRoot, u);
      for (const sub of ['cur', 'new', 'tmp']) await fs.mkdir(path.join(box, sub), { recursive: true });
      await fs.writeFile(path.join(box, 'new', '1796000000.M1P1.h'), GOOD);
      // No size in the name: a scan has to measure it, and must see it is no file first.
      const fifo = path.join(box, 'cur', '1796000001.M1P1.fifo:2,');
      execFileSync('mkfifo', [fifo]);
      fifos.push(fifo);
    }
    await fs.mkdir(path.join(srv.maildirRoot, 'alice', 'new'), { recursive: true });
    await srv.deliver('alice', GOOD);

    const port = srv.port;
    const fifoSessions = users.map((u) => session(port, u));
    // Meanwhile another user logs in and reads mail.
    const alice = await session(port, 'alice');
    expect(alice.stat).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
    expect(alice.retr).toBe(GOOD_WIRE);
    for (const r of await Promise.all(fifoSessions)) {
      expect(r.stat).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
      expect(r.retr).toBe(GOOD_WIRE);
      expect(r.retr2).toMatch(/^-ERR/);
    }
    // Nobody was left locked: each FIFO user logs in again at once.
    for (const u of users) expect((await session(port, u)).stat).toBe(`+OK 1 ${GOOD_WIRE.length - 3}`);
  });

  it('a FIFO put in place of a message after login: RETR and TOP answer -ERR at once, the session goes on', async () => {
    srv = await startTestServer();
    await srv.deliver('alice', GOOD);
    await srv.deliver('alice', GOOD);
    const w = await Wire.connect(srv.port);
    await w.line();
    await w.cmd('USER alice');
    expect(await w.cmd('PASS secret')).toMatch(/^\+OK/);
    const cur = path.join(srv.maildirRoot, 'alice', 'cur');
    const [first] = (await fs.readdir(cur)).sort();
    await fs.rm(path.join(cur, first!));
    execFileSync('mkfifo', [path.join(cur, first!)]);
    fifos.push(path.join(cur, first!));
    expect(await w.cmd('RETR 1')).toMatch(/^-ERR/);
    expect(await w.cmd('TOP 1 0')).toMatch(/^-ERR/);
    expect((await w.cmdMulti('RETR 2')).body.toString('latin1')).toBe(GOOD_WIRE);
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    w.close();
  });
});
