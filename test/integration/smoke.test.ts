import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

let srv: TestServer;
beforeAll(async () => {
  srv = await startTestServer();
  await srv.deliver('alice', 'Subject: one\r\n\r\nbody one\r\n');
  await srv.deliver('alice', 'Subject: two\n\n.dot\nend');
});
afterAll(() => srv.stop());

describe('smoke', () => {
  it('logs in, lists and retrieves', async () => {
    const w = await Wire.connect(srv.port);
    expect(await w.line()).toMatch(/^\+OK /);
    await w.login('alice', 'secret');
    expect(await w.cmd('STAT')).toBe('+OK 2 51');
    const list = await w.cmdLines('LIST');
    expect(list.lines).toEqual(['1 26', '2 25']);
    const r = await w.cmdMulti('RETR 2');
    expect(r.status).toBe('+OK 25 octets');
    expect(r.body.toString()).toBe('Subject: two\r\n\r\n..dot\r\nend\r\n.\r\n');
    expect(await w.cmd('QUIT')).toMatch(/^\+OK/);
    await w.closed();
  });
});
