import { promises as fs } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer | undefined;
afterEach(async () => {
  await srv?.stop();
  srv = undefined;
});

async function start(expire: number | 'NEVER' | undefined, now?: () => number): Promise<TestServer> {
  srv = await startTestServer({ settings: expire === undefined ? {} : { expire }, ...(now ? { now } : {}) });
  for (let i = 1; i <= 3; i++) await srv.deliver('alice', `Subject: m${i}\r\n\r\nbody ${i}\r\n`);
  return srv;
}

async function session(s: TestServer): Promise<Wire> {
  const w = await Wire.connect(s.port);
  await w.line();
  await w.login('alice', 'secret');
  return w;
}

async function curFiles(s: TestServer): Promise<string[]> {
  return (await fs.readdir(path.join(s.maildirRoot, 'alice', 'cur'))).sort();
}

describe('RFC 2449 EXPIRE', () => {
  it('EXPIRE 0: messages retrieved with RETR are removed at a clean QUIT; TOP does not count', async () => {
    const s = await start(0);
    const w = await session(s);
    expect((await w.cmdLines('CAPA')).lines).toContain('EXPIRE 0');
    await w.cmdMulti('RETR 1');
    await w.cmdMulti('TOP 2 0');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    const w2 = await session(s);
    expect(await w2.cmd('STAT')).toMatch(/^\+OK 2 /);
    expect((await w2.cmdMulti('RETR 1')).body.toString()).toContain('Subject: m2');
    // A dropped connection is not a clean QUIT: the retrieved message stays.
    w2.close();
    await new Promise((r) => setTimeout(r, 100));
    const w3 = await session(s);
    expect(await w3.cmd('STAT')).toMatch(/^\+OK 2 /);
    await w3.cmd('QUIT');
  });

  it('without EXPIRE, retrieved messages stay and are flagged seen (:2,S) like Dovecot does', async () => {
    const s = await start(undefined);
    const w = await session(s);
    expect((await w.cmdLines('CAPA')).lines.some((l) => l.startsWith('EXPIRE'))).toBe(false);
    await w.cmdMulti('RETR 2');
    await w.cmd('QUIT');
    const files = await curFiles(s);
    expect(files).toHaveLength(3);
    expect(files.filter((f) => f.endsWith(':2,S'))).toHaveLength(1);
    const w2 = await session(s);
    expect(await w2.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect((await w2.cmdMulti('RETR 2')).body.toString()).toContain('Subject: m2');
    await w2.cmd('QUIT');
  });

  it('EXPIRE n: a message first retrieved more than n days ago is removed at UPDATE; unretrieved mail never', async () => {
    let offset = 0;
    const s = await start(2, () => Date.now() + offset);
    const w = await session(s);
    expect((await w.cmdLines('CAPA')).lines).toContain('EXPIRE 2');
    await w.cmdMulti('RETR 1');
    await w.cmd('QUIT');
    // One day later: still kept.
    offset = 86_400_000;
    let w2 = await session(s);
    expect(await w2.cmd('STAT')).toMatch(/^\+OK 3 /);
    await w2.cmd('QUIT');
    // Three days later: message 1 goes at this session's UPDATE, not before (numbers stay fixed in the session).
    offset = 3 * 86_400_000;
    w2 = await session(s);
    expect(await w2.cmd('STAT')).toMatch(/^\+OK 3 /);
    expect(await w2.cmd('QUIT')).toMatch(/^\+OK/);
    const w3 = await session(s);
    expect(await w3.cmd('STAT')).toMatch(/^\+OK 2 /);
    expect((await w3.cmdMulti('RETR 1')).body.toString()).toContain('Subject: m2');
    await w3.cmd('QUIT');
  });
});
