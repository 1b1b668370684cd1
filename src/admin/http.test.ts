import { promises as fs } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../config/errors.js';
import { silentLogger } from '../observability/log.js';
import { AdminConfigSchema } from './config.js';
import { AdminServer, type AdminBackend } from './http.js';

const TOKEN = 'a-secret-of-sufficient-length';

/** A backend whose answers the test sets; it records what it was asked to kick. */
function backend(ready: Record<string, string | undefined> = { store: undefined }): AdminBackend & { kicked: string[] } {
  const kicked: string[] = [];
  return {
    kicked,
    metrics: async () => '# HELP x y\n# TYPE x counter\nx 1\n',
    readiness: async () => ready,
    sessions: async () => [],
    kick: async (user) => {
      kicked.push(user);
      return 2;
    },
  };
}

function request(opts: http.RequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(opts, (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('AdminServer', () => {
  const open: AdminServer[] = [];
  let dir: string | undefined;
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
    if (dir !== undefined) await fs.rm(dir, { recursive: true, force: true });
    dir = undefined;
  });

  async function start(settings: Record<string, unknown>, b: AdminBackend, token?: string): Promise<{ port: number; socket?: string }> {
    const s = new AdminServer(AdminConfigSchema.parse(settings), b, silentLogger(), token);
    open.push(s);
    const bound = await s.listen(undefined);
    return { port: bound.tcp?.port ?? 0, ...(bound.socket !== undefined ? { socket: bound.socket } : {}) };
  }

  it('refuses a listen address other than loopback unless allow_remote', async () => {
    const s = new AdminServer(AdminConfigSchema.parse({ listen: '0.0.0.0:0' }), backend(), silentLogger(), undefined);
    await expect(s.listen(undefined)).rejects.toThrow(ConfigError);
    await expect(s.listen(undefined)).rejects.toThrow(/not a loopback address/);
  });

  it('serves who and kick on TCP only with the token; monitoring to anyone', async () => {
    const b = backend();
    const { port } = await start({ listen: '127.0.0.1:0' }, b, TOKEN);
    const at = { host: '127.0.0.1', port };
    expect(await request({ ...at, path: '/metrics' })).toMatchObject({ status: 200, body: expect.stringContaining('x 1') });
    expect(await request({ ...at, path: '/sessions' })).toMatchObject({ status: 403 });
    expect(await request({ ...at, path: '/sessions', headers: { authorization: `Bearer ${TOKEN}x` } })).toMatchObject({ status: 403 });
    expect(await request({ ...at, path: '/sessions', headers: { authorization: `Basic ${TOKEN}` } })).toMatchObject({ status: 403 });
    expect(await request({ ...at, path: '/sessions', headers: { authorization: `Bearer ${TOKEN}` } })).toEqual({ status: 200, body: '[]\n' });
    expect(await request({ ...at, method: 'POST', path: '/kick?user=alice' })).toMatchObject({ status: 403 });
    expect(b.kicked).toEqual([]);
    const auth = { authorization: `Bearer ${TOKEN}` };
    expect(await request({ ...at, method: 'POST', path: '/kick?user=al%20ice', headers: auth })).toEqual({ status: 200, body: '{"user":"al ice","kicked":2}\n' });
    expect(b.kicked).toEqual(['al ice']);
    expect(await request({ ...at, method: 'POST', path: '/kick', headers: auth })).toMatchObject({ status: 400 });
    expect(await request({ ...at, method: 'GET', path: '/kick?user=alice', headers: auth })).toMatchObject({ status: 405 });
    expect(await request({ ...at, method: 'POST', path: '/metrics' })).toMatchObject({ status: 405 });
    expect(await request({ ...at, path: '/nothing' })).toMatchObject({ status: 404 });
  });

  it('serves who and kick on the socket (mode 0660), and refuses a path another server listens on or a file holds', async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-admin-http-'));
    const socketPath = path.join(dir, 'admin.sock');
    const b = backend({ store: 'unreachable: connect ECONNREFUSED', users: undefined });
    await start({ socket: socketPath }, b);
    expect((await fs.stat(socketPath)).mode & 0o777).toBe(0o660);
    expect(await request({ socketPath, path: '/sessions' })).toEqual({ status: 200, body: '[]\n' });
    expect(await request({ socketPath, path: '/readyz' })).toEqual({ status: 503, body: 'store: unreachable: connect ECONNREFUSED\nusers: ok\n' });
    // A second server on the same path while the first listens: refused.
    const twin = new AdminServer(AdminConfigSchema.parse({ socket: socketPath }), b, silentLogger(), undefined);
    await expect(twin.listen(undefined)).rejects.toThrow(/another process is listening/);
    await fs.writeFile(path.join(dir, 'file'), 'x');
    const onFile = new AdminServer(AdminConfigSchema.parse({ socket: path.join(dir, 'file') }), b, silentLogger(), undefined);
    await expect(onFile.listen(undefined)).rejects.toThrow(/not a socket/);
  });
});
