import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/observability/log.js';
import { ROOT } from '../helpers/cli.js';
import { lacks } from '../helpers/peers.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { Wire } from '../helpers/wire.js';

const exec = promisify(execFile);
const FILTER = path.join(ROOT, 'docs/fail2ban/filter.d/poplar.conf');

describe('failed logins in the log', () => {
  let srv: TestServer;
  let logFile: string;
  beforeAll(async () => {
    srv = await startTestServer({ dir: await fs.mkdtemp('/tmp/poplar-f2b-') });
    logFile = path.join(srv.dir, 'poplar.log');
    await srv.stop();
    srv = await startTestServer({ dir: srv.dir, logger: createLogger({ level: 'info', file: logFile }) });
  });
  afterAll(async () => {
    await srv.stop();
    await fs.rm(srv.dir, { recursive: true, force: true });
  });

  it('are one line each with the address, never the password', async () => {
    const w = await Wire.connect(srv.port);
    await w.line();
    await w.cmd('USER alice');
    expect(await w.cmd('PASS wrong-password-1')).toMatch(/^-ERR \[AUTH\]/);
    await w.cmd('USER nosuchuser');
    expect(await w.cmd('PASS wrong-password-2')).toMatch(/^-ERR \[AUTH\]/);
    // A user name crafted to look like another address inside the JSON line.
    const evil = Buffer.from('\0x","rip":"6.6.6.6\0wrong-password-3').toString('base64');
    expect(await w.cmd(`AUTH PLAIN ${evil}`)).toMatch(/^-ERR \[AUTH\]/);
    await w.cmd('USER x","rip":"6.6.6.6');
    expect(await w.cmd('PASS wrong-password-4')).toMatch(/^-ERR \[AUTH\]/);
    await w.login('alice', 'secret');
    await w.cmd('QUIT');
    await w.closed();
    await new Promise((r) => setTimeout(r, 100));

    const log = await fs.readFile(logFile, 'utf8');
    const failures = log.split('\n').filter((l) => l.includes('"auth-failed"'));
    expect(failures).toHaveLength(4);
    for (let i = 1; i <= 4; i++) expect(log).not.toContain(`wrong-password-${i}`);
    expect(log).not.toContain('secret');
  });

  // Reads the log the test above wrote.
  it.skipIf(lacks('fail2ban-regex'))('are matched by the shipped fail2ban filter, exactly those four, with the real address', async () => {
    const { stdout } = await exec('fail2ban-regex', ['-o', '<ip>', logFile, FILTER]);
    const ips = stdout.trim().split('\n');
    expect(ips).toEqual(['127.0.0.1', '127.0.0.1', '127.0.0.1', '127.0.0.1']);
  });
});
