import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type ServeProcess } from '../helpers/cli.js';
import { Wire } from '../helpers/wire.js';

describe('poplar serve --workers', () => {
  let dir: string;
  let srv: ServeProcess;
  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'poplar-workers-'));
    srv = await startServe(['--workers', '2', '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0'], { cwd: dir, expectListeners: 4 });
  });
  afterAll(async () => {
    await srv?.stop('SIGKILL');
    await fs.rm(dir, { recursive: true, force: true });
  });

  it('serves from several processes on one port, creates one demo user, and stops with SIGTERM', async () => {
    expect(srv.plainPort).toBeGreaterThan(0);
    const listening = srv.stderr().split('\n').filter((l) => l.includes('"listening"')).map((l) => JSON.parse(l) as { pid: number; port: number });
    expect(new Set(listening.map((l) => l.pid)).size).toBe(2);
    expect(new Set(listening.map((l) => l.port)).size).toBe(2); // the same two ports in both workers
    expect(srv.stdout().match(/password: /g)).toHaveLength(1);
    const users = await fs.readFile(path.join(dir, 'poplar-data/users'), 'utf8');
    expect(users.trim().split('\n')).toHaveLength(1);

    // Sessions land on both workers. The workers accept from the shared socket themselves, so
    // which one takes a burst of connections is up to the kernel: try a few bursts.
    const pids = (): Set<number> => new Set(srv.stderr().split('\n').filter((l) => l.includes('"logout"')).map((l) => (JSON.parse(l) as { pid: number }).pid));
    for (let round = 0; round < 20 && pids().size < 2; round++) {
      const sessions = await Promise.all(Array.from({ length: 16 }, () => Wire.connect(srv.plainPort)));
      for (const w of sessions) await w.line();
      for (const w of sessions) w.close();
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(pids().size).toBe(2);

    expect(await srv.stop('SIGTERM')).toBe(0);
  });
});
