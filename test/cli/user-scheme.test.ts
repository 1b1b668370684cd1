import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Pop3Client } from '../../src/client/index.js';
import { runPoplar } from '../helpers/cli.js';
import { startTestServer, type TestServer } from '../helpers/server.js';

/** `poplar user add --scheme` writes secrets that the challenge-response mechanisms can use. */
describe('poplar user add --scheme, end to end', () => {
  let dir: string;
  let srv: TestServer;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-scheme-'));
    srv = await startTestServer({
      dir,
      users: [],
      settings: { sasl_mechanisms: ['SCRAM-SHA-256', 'SCRAM-SHA-1', 'CRAM-MD5', 'PLAIN'] },
    });
    const users = srv.usersFile;
    for (const [name, scheme] of [['scram', 'SCRAM-SHA-256'], ['cram', 'CRAM-MD5'], ['argon', 'ARGON2ID']] as const) {
      const r = await runPoplar(['user', 'add', name, '--users', users, '--scheme', scheme, '--password-stdin'], { input: 'pencil pencil\n' });
      expect(r.code, r.stderr).toBe(0);
    }
  });
  afterAll(async () => {
    await srv.stop();
    await fs.rm(dir, { recursive: true, force: true });
  });

  async function tryLogin(user: string, mechanism: string): Promise<string> {
    const c = await Pop3Client.connect({ host: '127.0.0.1', port: srv.port, tls: 'none' });
    try {
      await c.login(user, 'pencil pencil', { mechanism });
      await c.quit();
      return 'ok';
    } catch (e) {
      c.close();
      return (e as { code?: string }).code ?? String(e);
    }
  }

  it('each stored scheme serves the mechanisms it can, and fails the others cleanly with [AUTH]', async () => {
    const written = await fs.readFile(srv.usersFile, 'utf8');
    expect(written).toMatch(/^scram:\{SCRAM-SHA-256\}4096,/m);
    expect(written).toMatch(/^cram:\{CRAM-MD5\}[0-9a-f]{64}/m);
    expect(await tryLogin('scram', 'SCRAM-SHA-256')).toBe('ok');
    expect(await tryLogin('scram', 'PLAIN')).toBe('ok');
    expect(await tryLogin('cram', 'CRAM-MD5')).toBe('ok');
    expect(await tryLogin('cram', 'SCRAM-SHA-256')).toBe('AUTH');
    expect(await tryLogin('argon', 'CRAM-MD5')).toBe('AUTH');
    expect(await tryLogin('argon', 'SCRAM-SHA-1')).toBe('AUTH');
    expect(await tryLogin('argon', 'PLAIN')).toBe('ok');
  });
});
